"""`gencompress quantize`: static int8 QDQ, weight-only int8/int4, or fp16, checked against float.

The Python API behind the CLI verb::

    report = gencompress.quantize("g.onnx", "g.int8.onnx")                       # static int8
    report = gencompress.quantize("g.onnx", "g.w4.onnx", mode="weight-only", bits=4)
    report = gencompress.quantize("g.onnx", "g.int8.onnx", target_psnr=40.0)     # keep layers in float as needed

Flow: load → prepare (fold constant weight reshuffles so every weight is an initializer, drop
the exporter's per-node debug metadata) → int8 rewrites (static mode, when the model has a
ConvTranspose they apply to; ``rewrite``) → calibrate (static) → pass
(``insert_qdq`` / ``weight_only_quantize`` / ``fp16_convert``) → [--target-psnr search] → save,
then PSNR against the float model on a held-back seeded latent set.

Seeds: calibration draws use ``seed``; the held-back evaluation set uses ``seed + EVAL_SEED_OFFSET``,
so the two never coincide.

Parameters of ``quantize``:

``mode``: "static" (int8 QDQ, calibrated), "weight-only" (``bits`` 8 or 4), or "fp16".
``calib_size``: seeded latent draws for calibration (default 256; a model above 15.6 GMAC a draw
gets fewer, ``calibration.default_calib_size``, said in one note), or the first N rows of
``calib_data`` (an .npz keyed by input name; all rows by default).
``int8_kernels``: "portable" (default): int8 weights no x86 kernel without VNNI (AVX2,
AVX-512BW: int16 sums of u8×s8 pairs) can saturate on, changed per output channel where needed;
"vnni": full 8-bit weights, for targets that all have VNNI or ARM dot-product kernels.
``exclude``: node names, op types or weight names to keep in float.
``target_psnr``: keep the most damaging layers in float until the PSNR against float reaches
it; when it cannot be reached the closest model is written (or, with ``strict``, an error).
``rewrite``: the int8 graph rewrites (``passes/int8_rewrites.py``) before quantizing. None (default):
on in static mode when they turn a ConvTranspose into an int8-capable Conv or Gemm, off for
weight-only and fp16 (float compute: nothing to gain); True / False: always / never. The
report's ``rewrite`` says whether they ran, why, and what they changed.
``check``: measure PSNR against float afterwards (False: ``--no-check``, ``psnr_db`` None).
The evaluation set is the held-back one every verb uses (``fidelity.held_back_inputs``), or,
with ``calib_data``, the rows of the file calibration did not use (``split_calibration_data``);
``eval_size`` of them (None: ``fidelity.default_samples``, 256 draws unless the model is large).
``external_data``: write the weights to ``OUT.onnx.data`` beside the output (None: only
when the model would exceed the 2 GB protobuf limit).
``log``: receives progress and warning lines (the CLI sends them to stderr).
``objective`` (see ``int8_plan``): "balanced" (default) times each layer in int8 and in float
on ``provider`` at ``batches`` with ``threads`` threads and keeps int8 compute where it is not
slower, never slower than float overall; "speed": fastest; "size": every layer int8, untimed.
Layers computing in float keep int8 weights in a form onnxruntime folds at load.
``timer``: replaces the interleaved timer (tests): ``timer(models, reference=True) -> [{batch: p50 / float p50}]``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from gencompress.errors import GencompressError
from gencompress.onnx_io import collect_cycles, save_model, tensor_bytes, with_scratch_folder
from gencompress.passes.insert_qdq import DEFAULT_PERCENTILE, StaticOptions
from gencompress.result_warnings import compression_warnings
from gencompress.verbs import int8_plan, output_cache

from gencompress.runtime_check.fidelity import Evaluator
from gencompress.verbs.quantizers import (
    Quantizer,
    check_float_model,
    apply_rewrites,
    db,
    eval_inputs,
    finalize,
    fold_into_layers,
    own_tensors,
    prepare,
    split_calibration_data,
    static_quantizer,
    validate_options,
    weight_only_quantizer,
)

DEFAULT_BLOCK_SIZE = 64


# above this, quantize says how much memory the speed plan takes (benchmarks/scale.py measures it)
PLAN_NOTE_BYTES = 100e6


@with_scratch_folder  # streamed weights live there for the run
def quantize(
    in_path,
    out_path,
    *,
    mode: str = "static",
    bits: int = 8,
    calib: str = "minmax",
    calib_size: int | None = None,
    calib_data=None,
    per_tensor: bool = False,
    activations: str = "uint8",
    int8_kernels: str = "portable",
    exclude=(),
    target_psnr: float | None = None,
    strict: bool = False,
    seed: int = 0,
    percentile: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    keep_io_types: bool = True,
    eval_size: int | None = None,
    rewrite: bool | None = None,
    keep_debug_metadata: bool = False,
    check: bool = True,
    external_data: bool | None = None,
    log: Callable[[str], None] | None = None,
    objective: str = "balanced",
    batches=(1, 64),
    threads: int = 2,
    provider: str = "CPUExecutionProvider",
    timer=None,
) -> dict:
    """Quantize the float ONNX model at ``in_path`` into ``out_path``; return a report (the
    parameters: the module docstring)."""
    options = dict(locals())  # the output cache's key: every argument (verbs/output_cache.py)
    log = log or (lambda message: None)
    started = time.perf_counter()
    percentile_given = percentile is not None
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    exclude = _split_patterns(exclude)
    validate_options(
        mode=mode, bits=bits, calib=calib, calib_size=calib_size, activations=activations,
        percentile=percentile, block_size=block_size, target_psnr=target_psnr,
        eval_size=eval_size, seed=seed,
        calib_data=calib_data, per_tensor=per_tensor, percentile_given=percentile_given, int8_kernels=int8_kernels,
    )
    static = StaticOptions(calib=calib, calib_size=calib_size, calib_data=calib_data, percentile=percentile,
                           per_tensor=per_tensor, activations=activations, seed=seed, int8_kernels=int8_kernels)
    sources = _check_run(in_path, out_path, mode=mode, objective=objective, threads=threads, batches=batches, keep_io_types=keep_io_types,
                         calib_data=calib_data, external_data=external_data, check=check, target_psnr=target_psnr)
    cache = output_cache.OutputCache.of(in_path, options)  # a rerun of the same quantize: the output copied
    reused = cache.reuse(out_path, sources, log) if cache else None
    if reused is not None:
        return output_cache.finish(reused, in_path, out_path, evaluator=(lambda: _evaluator(in_path, options)) if check else None, started=started, log=log)
    planned = mode == "static" and objective != "size"
    # a large model is first planned from its layers timed alone, streamed like --objective size (memory: see _Run.predicted)
    predict = planned and target_psnr is None and int8_plan.predicts_first(in_path)
    too_large = int8_plan.plan_memory_note(in_path) if planned and target_psnr is None and not predict else None
    if too_large:  # the streamed one build instead of a timed plan that would not fit in memory
        planned = False
        log(too_large)
    run = _Run.load(in_path, planned=planned and not predict, stream=(predict or not planned) and target_psnr is None, objective=objective, log=log)
    run.notes[:0] = [too_large] if too_large else []
    if planned:  # the plan times batches of this size: their samples within the sampling budget, before any work
        from gencompress.inputs import check_batch_budget, specs_of_model

        check_batch_budget(specs_of_model(run.header), max(int(b) for b in batches), "samples in one timed batch (--batch)")
    if check or target_psnr is not None:  # a PSNR needs numeric outputs: refused before any timing or calibration
        from gencompress.runtime_check.fidelity import refuse_uncomparable_outputs

        refuse_uncomparable_outputs(run.header, str(in_path))
    calib_feeds, eval_feeds, eval_source, eval_note = _evaluation_set(run.header, mode, calib_data, calib_size, eval_size, seed)
    if eval_note and (check or target_psnr is not None):  # a large model's smaller default set, said once
        run.notes.append(eval_note)
        log(eval_note)
    if mode == "static" and calib_size is None and calib_data is None:  # likewise its calibration set
        from gencompress.runtime_check.calibration import calib_size_note

        # counted once, from the header: every calibration of the run draws this many (not a count of the prepared model's)
        count, calib_note = calib_size_note(run.header)
        static = dataclasses.replace(static, calib_size=count)
        if calib_note:
            run.notes.append(calib_note)
            log(calib_note)
    run.prepare_and_rewrite(mode=mode, rewrite=rewrite, exclude=exclude, keep_debug_metadata=keep_debug_metadata)

    report: dict = {"input": str(in_path), "output": str(out_path), "mode": mode, "objective": objective}
    proto, pass_report, target, psnr, evaluator = _quantized(
        run, report, mode=mode, static=static, exclude=exclude, bits=bits, block_size=block_size, keep_io_types=keep_io_types,
        planned=planned, predict=predict, objective=objective, calib_feeds=calib_feeds, target_psnr=target_psnr, strict=strict,
        timer=timer, timing=dict(provider=provider, threads=threads, batches=batches, seed=seed), evaluation=(eval_feeds, eval_source))
    run.model = None
    if check and psnr is None:
        evaluator = Evaluator(run.eval_reference, eval_feeds, source=eval_source, header=run.header)
        psnr = evaluator.psnr(proto)
    after = sum(path.stat().st_size for path in save_model(proto, out_path, inputs=sources, external_data=external_data))
    report.update(bytes_before=run.before, bytes_after=after, ratio=round(after / run.before, 4), psnr_db=db(psnr) if check else None,
                  evaluation=evaluator.describe() if check else {"skipped": "--no-check"},
                  opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None))
    _layer_tables(report, mode, pass_report, target)
    report["notes"] = run.notes
    report["warnings"] = compression_warnings(proto, report["ratio"], float_layers=report.get("float_layers") or [])
    for warning in report["warnings"]:
        log(f"warning: {warning}")
    report["rewrite"] = run.rewrite_report
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["cached"] = None
    if cache:
        cache.store(out_path, report)
    return report


def _evaluator(in_path, options: dict) -> Evaluator:
    """The PSNR check of a run whose output the output cache wrote: the reference and set a build's check uses."""
    run = _Run.load(in_path, planned=False, stream=True, objective=options["objective"], log=lambda m: None)
    _, feeds, source, _ = _evaluation_set(run.header, options["mode"], options["calib_data"], options["calib_size"], options["eval_size"],
                                       options["seed"])
    return Evaluator(run.eval_reference, feeds, source=source, header=run.header)


def _quantized(run: "_Run", report: dict, *, mode, static, exclude, bits, block_size, keep_io_types, planned, predict, objective, calib_feeds,
               target_psnr, strict, timer, timing: dict, evaluation: tuple):
    """The quantized proto of the prepared model, by mode: fp16, the one build, or the timed plan;
    then the target search. Returns (proto, pass report, target report, PSNR, evaluator): the
    last three None unless ``target_psnr`` measured them."""
    target = psnr = evaluator = None
    if mode == "fp16":
        proto, pass_report = run.fp16(keep_io_types=keep_io_types, exclude=exclude)
        report["bits"] = 16
    else:
        if mode == "static":
            report.update(bits=8, activations=static.activations, weights="per-tensor" if static.per_tensor else "per-channel")
        else:
            report.update(bits=bits, block_size=block_size if bits == 4 else None)
        if planned:
            timer = timer or int8_plan.interleaved_timer(run.eval_reference, header=run.header, **timing)
        predicted = run.predicted(exclude, objective, timer, static, calib_feeds) if predict else None  # a large model: one streamed build?
        if predicted is not None:
            quantizer, proto, pass_report, plan_report = predicted
            report["calibration"] = quantizer.calibration
            if plan_report is not None:  # None: not planned (memory), every layer int8
                report["speed_plan"] = plan_report
        elif planned:  # measure, then decide which layers compute in int8
            quantizer, proto, pass_report, report["speed_plan"] = run.plan(exclude, objective, timer, static)
            report["calibration"] = quantizer.builder.calibration()
        else:
            quantizer, proto, pass_report = run.built(mode, static, exclude=exclude, bits=bits, block_size=block_size, feeds=calib_feeds,
                                                      objective=objective, keep_model=target_psnr is not None)
            if mode == "static":
                report["calibration"] = quantizer.calibration
        if target_psnr is not None:
            evaluator = Evaluator(run.eval_reference, evaluation[0], source=evaluation[1], header=run.header)
            proto, pass_report, target, psnr = _meet_target(quantizer, evaluator, exclude, target_psnr, proto, pass_report, run.log)
            if not target["met"] and strict:
                raise GencompressError(target["message"])
    return proto, pass_report, target, psnr, evaluator


def _check_run(in_path, out_path, *, mode, objective, threads, batches, keep_io_types, calib_data, external_data, check, target_psnr) -> list:
    """The run's options that ``validate_options`` does not cover, and the output path; returns the input files."""
    from gencompress.onnx_io import external_data_path, refuse_overwrite

    from gencompress.arguments import MAX_BATCH, MAX_THREADS, positive_int, positive_ints

    int8_plan.check_objective(objective)
    positive_int(threads, "--threads", MAX_THREADS)  # the limits bench and compress hold them to
    positive_ints(batches, "--batch", MAX_BATCH, what="batch size")
    if not keep_io_types and mode != "fp16":
        raise GencompressError(f"--fp16-io: only for --mode fp16 (--mode {mode} keeps float32 inputs and outputs)")
    sources = [in_path, *([calib_data] if calib_data else [])]
    refuse_overwrite(out_path, sources)
    if external_data:
        refuse_overwrite(external_data_path(out_path), sources)  # before any work, not when saving
    if Path(out_path).suffix != ".onnx":
        raise GencompressError(f"{out_path}: output should be an .onnx file")
    if not check and target_psnr is not None:
        raise GencompressError("--target-psnr measures PSNR against float; it cannot be combined with --no-check")
    return sources


def _layer_tables(report: dict, mode: str, pass_report: dict, target: dict | None) -> None:
    """The pass's per-layer tables (and the target search's result) into the report."""
    if mode == "fp16":
        report["fp16"] = pass_report
    else:
        report["layers"] = pass_report["layers"]
        report["float_layers"] = pass_report["float_layers"]
        if mode == "static":
            report["quantized_activations"] = pass_report["quantized_activations"]
    if target is not None:
        report["target"] = target


class _Run:
    """One quantize run's model as it goes from the input file to the built proto.

    Memory is the point of its shape: at most one copy of the weights is alive at a time (the
    loaded proto goes once wrapped; one build without a plan streams the weights through the
    scratch folder, memory-mapped), so every step drops what the next no longer needs."""

    def __init__(self, in_path, reference, *, eval_reference, before: int, header, mapped: bool, stream: bool, planned: bool, notes, log):
        self.log = log
        self.in_path, self.reference, self.eval_reference, self.before = in_path, reference, eval_reference, before
        self.header, self.mapped, self.stream, self.planned, self.notes = header, mapped, stream, planned, notes
        self.model = self.unrewritten = self.before_rewrites = self.rewrite_report = None
        self.streamed = False
        self.calibrated = None  # calibrated_ranges, when the prediction ran them before the plan
        self.form = None  # what prepare_and_rewrite made of the input: with its files, the calibration cache's key
        self.weight_bytes = 0  # the prepared model's (prepare_and_rewrite): whether dropping it is worth a gc.collect

    @classmethod
    def load(cls, in_path, *, planned: bool, stream: bool, objective: str, log) -> "_Run":
        """Read the input: its graph, its weights left in their files where one build streams them
        (``stream``), opset upgraded when needed; checked for non-finite weights and float compute."""
        from gencompress.exporter.upgrade import upgrade_opset
        from gencompress.inputs import output_range_of_model, specs_of_model
        from gencompress.onnx_io import external_data_entries, load_external_data, load_mapped, refuse_nonfinite_weights, skeleton, stored_bytes

        reference = load_mapped(in_path)  # the graph; its weights left in their files
        entries = external_data_entries(reference, Path(in_path))
        on_disk = stored_bytes(in_path, entries)
        mapped = stream and bool(entries) and _needs_no_upgrade(reference)  # weights read where they are, memory-mapped, never whole
        if not mapped:
            load_external_data(reference, in_path)
        refuse_nonfinite_weights(in_path if mapped else reference, in_path)
        check_float_model(reference, in_path)
        specs_of_model(reference), output_range_of_model(reference)  # malformed metadata, unbatched inputs: before any note or work
        notes: list[str] = []
        if planned and on_disk > PLAN_NOTE_BYTES:
            note = (f"note: --objective {objective} times this {on_disk / 1e6:.0f} MB model in float beside its int8 plan (peak memory "
                    "16x the file on a 190 MB generator) unless a plan cached by an earlier run with these options is reused; "
                    "--objective size reads it a weight at a time (under 3x)")
            notes.append(note)
            log(note)
        upgraded = upgrade_opset(reference, in_path, lambda message: (notes.append(message), log(message)))
        # the evaluation's reference: the input file itself (onnxruntime reads it), or the upgraded
        # model when the opset was converted
        eval_reference = in_path if upgraded is reference else upgraded
        before = on_disk if upgraded is reference else upgraded.ByteSize()
        del reference
        header = skeleton(upgraded)  # inputs, outputs and metadata, no weights: all the evaluation needs
        return cls(in_path, upgraded, eval_reference=eval_reference, before=before, header=header, mapped=mapped, stream=stream,
                   planned=planned, notes=notes, log=log)

    def prepare_and_rewrite(self, *, mode: str, rewrite, exclude, keep_debug_metadata: bool) -> None:
        """The loaded proto becomes the prepared onnx_ir model (``prepare``), BatchNorms folded and the
        int8 rewrites applied as ``rewrite`` says; the model before the rewrites kept where it is
        calibrated in their place (``static_quantizer``), the unrewritten proto where the plan builds."""
        import onnx_ir as ir

        from gencompress.onnx_io import external_tensors, mapped_ir, release, spill

        # one copy of the weights in memory: the onnx_ir model wraps the proto's tensors, and the
        # reference's sessions read the input file itself
        model = mapped_ir(self.reference, self.in_path) if self.mapped else ir.serde.deserialize_model(self.reference)
        self.reference = None
        self.form = ("quantize", mode, rewrite, tuple(exclude), keep_debug_metadata, self.planned)
        self._note_fills(model)
        prepare(model, keep_debug_metadata=keep_debug_metadata)
        # one build, no plan: the weights are streamed (moved to the scratch folder, read back one
        # at a time, memory-mapped), so that the loaded proto, the weights the rewrites replace and
        # onnxruntime's calibration session do not each hold a copy of the model in memory
        self.streamed = self.stream and (self.mapped or spill(model, "prepared.onnx") is not None)
        own_tensors(model)
        self.weight_bytes = tensor_bytes(model)
        collect_cycles(self.weight_bytes)  # onnx_ir graphs hold reference cycles: the loaded proto goes only with them
        folded = fold_into_layers(model) if mode == "static" and rewrite is not False else []
        self.unrewritten = ir.serde.serialize_model(model) if self.planned else None
        before_rewrites = None
        if mode == "static" and not self.planned:  # calibrated in place of the rewritten model (see static_quantizer)
            if self.streamed and (folded or self.mapped):
                # the folded weights out of memory too, all weights in the scratch folder: onnxruntime
                # maps them from there (weights in a user's folder would be copied for its session)
                spill(model, "folded.onnx")
                collect_cycles(self.weight_bytes)
            before_rewrites = model.clone()  # shares the weights: the rewrites make new tensors
        model, self.rewrite_report = apply_rewrites(model, setting=rewrite, mode=mode, exclude=exclude)
        if folded:
            self.rewrite_report["folded_into_layers"] = folded
        if not self.rewrite_report["applied"]:
            before_rewrites = None
        if self.streamed and self.rewrite_report["applied"]:  # the rewrites' new weights out of memory (the others are already)
            spill(model, "rewritten.onnx")
            collect_cycles(self.weight_bytes)
        for tensor in external_tensors(before_rewrites) if before_rewrites is not None else ():
            release(tensor)  # unmap the pages the rewrites read: the calibration session maps the file itself
        own_tensors(model)
        self.model, self.before_rewrites = model, before_rewrites

    def _note_fills(self, model) -> None:
        """prepare() stores the layer weights the graph fills in with ConstantOfShape: say so."""
        from gencompress.passes.cleanup import fills_note

        note = fills_note(model)
        if note:
            self.notes.append(f"note: {note}")
            self.log(f"note: {note}")

    def fp16(self, *, keep_io_types: bool, exclude) -> tuple[onnx.ModelProto, dict]:
        import onnx_ir as ir

        from gencompress.onnx_io import materialize
        from gencompress.passes.fp16_convert import FP16ConvertPass

        p = FP16ConvertPass(FP16ConvertPass.Options(keep_io_types=keep_io_types, exclude=exclude))
        proto = finalize(ir.serde.serialize_model(materialize(p(self.model).model)))  # weights kept float read back from the scratch folder
        return proto, p.report

    def built(self, mode, static, *, exclude, bits, block_size, feeds, objective, keep_model: bool, calibrated=None):
        """(quantizer, proto, pass report) of the one build without a plan; ``keep_model``: the
        quantizer keeps the prepared model for more builds (the target search); ``calibrated``:
        the calibration already run (``calibrated_ranges``)."""
        if mode == "static":  # calibrated only once the quantizer found layers to quantize, from the cache when it can
            quantizer = static_quantizer(self.model, static, log=self.log, exclude=exclude, feeds=feeds, before_rewrites=self.before_rewrites,
                                         calibrated=calibrated or (lambda: self.ranges(static, feeds)))
            self.before_rewrites = None
        else:
            quantizer = weight_only_quantizer(self.model, bits=bits, block_size=block_size)
        if keep_model:
            proto, pass_report = quantizer.build(exclude)
        else:
            quantizer.prepared = None  # one build: it may consume the model (no clone kept alive)
            proto, pass_report = _build_once(quantizer, self.model, exclude)
        if mode == "weight-only" and objective != "size":  # float compute: int8 weights folded at load
            proto, pass_report = _fold_weights(proto), {**pass_report, "weights_folded_at_load": True}
        return quantizer, proto, pass_report

    def ranges(self, static, feeds):
        """``calibrated_ranges`` of the model as calibrated (before the rewrites), or those a run before
        kept for the same input files, preparation and calibration (``plan_cache.cached_ranges``)."""
        from gencompress.verbs.plan_cache import cached_ranges
        from gencompress.verbs.quantizers import calibrated_ranges

        source = self.before_rewrites or self.model
        return cached_ranges(self.in_path, static, lambda: calibrated_ranges(source, static, log=self.log, feeds=feeds), feeds=feeds,
                             form=self.form, log=self.log)

    def plan(self, exclude, objective, timer, static):
        """Plan which layers compute in int8 (``int8_plan``): (quantizer, proto, pass report, plan report)."""
        self.model = self.before_rewrites = None  # the plan builds from ``unrewritten``: the loaded weights and their rewrites go
        collect_cycles(self.weight_bytes)
        return _planned_quantizer(self.unrewritten, self.rewrite_report, exclude, objective, timer, static, self.log, self.calibrated)

    def predicted(self, exclude, objective, timer, static, feeds):
        """The plan from layers timed alone on the streamed model (``int8_plan.predicted_plan``: no
        float session, no copy of the model): (quantizer, proto, pass report, plan report) of the one
        streamed build, every layer int8, when isolation decides every group (plan report None when
        it does not but a timed plan would not fit in memory: ``plan_memory_note``); else None, and
        ``unrewritten`` holds the prepared model for ``plan`` (calibrated once for both)."""
        import onnx_ir as ir

        from gencompress.onnx_io import materialize

        source = self.before_rewrites or self.model
        ranges = self.ranges(static, feeds)
        iso = int8_plan.isolation_of(source, rewrite=bool(self.rewrite_report.get("applied")), static_options=static, exclude=exclude,
                                     ranges=ranges, log=self.log)
        why = f"a {self.before / 1e6:.0f} MB model: timed whole, it would hold a float session of it beside each configuration"
        result = int8_plan.predicted_plan(iso, timer, objective, why, self.log) if getattr(timer, "isolated", None) else None
        del iso
        too_large = int8_plan.plan_memory_note(self.in_path) if result is None else None
        if too_large:  # not decided alone, and a timed plan would not fit in memory: every layer int8, the same one build
            self.notes.append(too_large)
            self.log(too_large)
        elif result is None:
            note = (f"note: timing the int8 plan of this {self.before / 1e6:.0f} MB model in the whole model (peak memory about"
                    f" {int8_plan.PLAN_PEAK_PER_FILE_BYTE}x the file); --objective size reads it a weight at a time (under 3x)")
            self.notes.append(note)
            self.log(note)
            self.unrewritten, self.calibrated = ir.serde.serialize_model(materialize(source)), ranges
            return None
        quantizer, proto, pass_report = self.built("static", static, exclude=exclude, bits=8, block_size=DEFAULT_BLOCK_SIZE, feeds=feeds,
                                                   objective=objective, keep_model=False, calibrated=ranges)
        return quantizer, proto, pass_report, _plan_info(result, pass_report, objective) if result is not None else None


def _fold_weights(proto):
    import onnx_ir as ir

    from gencompress.passes.fold_weights import cast_mul_weights

    model = ir.serde.deserialize_model(proto)
    cast_mul_weights(model)
    return finalize(ir.serde.serialize_model(model))


@dataclass
class _PlannedQuantizer:
    """A Quantizer over the planned model: ``build(exclude, include)`` keeps those layers out of int8
    compute (for --target-psnr and the sensitivity ranking)."""

    builder: object
    int8: frozenset
    layers: list

    def build(self, exclude=(), include=None):
        keep = {l["node"] for l in self.layers if any(p in (l["node"], l["op_type"], *l["weights"]) for p in exclude)}
        if include is not None:
            keep |= {l["node"] for l in self.layers if not any(p in (l["node"], l["op_type"], *l["weights"]) for p in include)}
        return self.builder.build(self.int8 - keep)


def _plan_info(result, pass_report: dict, objective: str) -> dict:
    """The report's ``speed_plan`` of a plan."""
    return {"objective": objective, "layers": result.layers, "chosen_speed": {str(b): round(1 / r, 3) for b, r in result.ratios.items()},
            "message": result.message, "configs_measured": len(result.configs), "noise": int8_plan.NOISE,
            "weights_folded_at_load": pass_report.get("folded_weights", 0), "timed_on": result.timed_on, "cached": result.cached,
            "route": result.route}


def _planned_quantizer(unrewritten, rewrite_report, exclude, objective, timer, static, log, calibrated=None):
    """Plan which layers compute in int8 (``int8_plan``); return (quantizer, model, pass report, plan report).
    ``calibrated``: ``calibrated_ranges`` of ``unrewritten``, when already run."""
    from gencompress.verbs.plan_cache import PlanCache

    builder = int8_plan.ConfigBuilder.create(
        unrewritten, rewrite=bool(rewrite_report.get("applied")), static_options=static, exclude=exclude, log=log,
    )
    builder._calibrated = calibrated
    proto, pass_report, result = int8_plan.plan(builder, objective, timer, log, cache=PlanCache())
    quantizer = _PlannedQuantizer(builder, result.int8, [l for l in builder.layers if l["node"] in result.int8])
    info = _plan_info(result, pass_report, objective)
    rows = {r["node"]: r for r in result.layers}
    folded = [{"node": l["node"], "op_type": l["op_type"], "kind": "weights", "weights": l["weights"], "folded_at_load": True}
              for l in builder.layers if rows.get(l["node"], {}).get("choice") == "float"]
    user_float = [l for l in pass_report.get("float_layers", []) if any(p in (l["node"], l["op_type"], *l["weights"]) for p in exclude)]
    pass_report = {**pass_report, "layers": [*pass_report.get("layers", []), *folded], "float_layers": user_float}
    return quantizer, proto, pass_report, info


def _needs_no_upgrade(header) -> bool:
    """The model is at an opset quantize needs no upgrade for (its weights can stay in their files)."""
    from gencompress.exporter.upgrade import MIN_OPSET, model_opset

    opset = model_opset(header)
    return opset is None or opset >= MIN_OPSET


def _build_once(quantizer: Quantizer, model, exclude) -> tuple[onnx.ModelProto, dict]:
    """The single build of a run without --target-psnr: on the model itself, no clone."""
    import onnx_ir as ir

    from gencompress.onnx_io import materialize

    p = quantizer.make_pass(tuple(exclude), None)
    out = materialize(p(model).model)  # the weights left float, read back from the scratch folder
    return finalize(ir.serde.serialize_model(out)), p.report


def _evaluation_set(header, mode, calib_data, calib_size, eval_size, seed):
    """(calibration rows or None, evaluation inputs, their description, the line saying why a
    default set is under 256 draws or None) for a quantize run. ``eval_size`` None: the size
    every verb evaluates this model on (``fidelity.budgeted_samples``: 256 unless it is large)."""
    from gencompress.runtime_check.calibration import calibration_inputs
    from gencompress.runtime_check.fidelity import budgeted_samples, held_back_seed

    note = None
    if eval_size is None:
        eval_size, note = budgeted_samples(header)
    drawn = f"{eval_size} held-back seeded latents (seed {held_back_seed(seed)})"
    if mode != "static" or calib_data is None:
        return None, eval_inputs(header, seed, eval_size), drawn, note
    rows = calibration_inputs(header, data=calib_data)
    calibration, held, which = split_calibration_data(rows, calib_size, eval_size)
    if held is None:
        return calibration, eval_inputs(header, seed, eval_size), f"{drawn}: {calib_data} has no rows left after calibration", note
    return calibration, held, f"{len(next(iter(held.values())))} held-back rows of {calib_data} ({which}, not used in calibration)", None


def _split_patterns(patterns) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns or ():
        out += [x.strip() for x in str(p).split(",") if x.strip()]
    return tuple(dict.fromkeys(out))


def _meet_target(quantizer: Quantizer, evaluator: Evaluator, exclude, target: float, proto, pass_report, log):
    """Keep the most damaging layers in float, one more at a time, until ``target`` dB is met.

    Returns (model, pass report, target report, the model's PSNR)."""
    from gencompress.verbs.sensitivity import rank_layers

    full = evaluator.psnr(proto)
    result = {"psnr_db": target, "all_quantized_psnr_db": db(full)}
    if full >= target:
        return proto, pass_report, {**result, "met": True, "kept_float": [], "message": f"target {target:g} dB met with every layer quantized ({full:.2f} dB)"}, full
    ranking = rank_layers(quantizer, evaluator, exclude)
    log(f"target {target:g} dB: all-quantized PSNR is {full:.2f} dB; keeping the most damaging layers in float")
    best = (full, proto, pass_report, [])
    for k in range(1, len(ranking)):
        kept_float = [r["node"] for r in ranking[:k]]
        candidate, rep = quantizer.build((*exclude, *kept_float))
        value = evaluator.psnr(candidate)
        log(f"  {k} layer(s) in float ({', '.join(kept_float)}): {value:.2f} dB")
        if value > best[0]:
            best = (value, candidate, rep, kept_float)
        if value >= target:
            return candidate, rep, {**result, "met": True, "kept_float": kept_float, "message": f"target {target:g} dB met ({value:.2f} dB) with {k} layer(s) kept in float"}, value
    value, candidate, rep, kept_float = best
    quantized = len(ranking) - len(kept_float)
    message = (
        f"target PSNR {target:g} dB cannot be met: the closest is {value:.2f} dB "
        f"({target - value:.2f} dB short) with {quantized} of {len(ranking)} layer(s) quantized"
    )
    return candidate, rep, {**result, "met": False, "kept_float": kept_float, "closest_psnr_db": db(value), "message": message}, value
