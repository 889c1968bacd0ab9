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
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from gencompress.errors import GencompressError
from gencompress.passes.cleanup import DEBUG_METADATA_PREFIXES, strip_debug_metadata  # noqa: F401  (one place; re-exported)

MODES = ("static", "weight-only", "fp16")
EVAL_SEED_OFFSET = 1_000_003
DEFAULT_EVAL_SIZE = 64
DEFAULT_BLOCK_SIZE = 64
# graph rewrites that make int8 fast, run before static quantizing (by registry name; see ``apply_rewrites``)
REWRITE_PIPELINE = "rewrite_for_int8"
REWRITE_PASSES = ("fold_batchnorm", "convtranspose_to_gemm", "convtranspose_to_conv")


# ---- preparing the float model ----------------------------------------------------------------


def prepare(model, *, keep_debug_metadata: bool = False):
    """Make every weight an initializer, in place: the ``cleanup`` pass (lift Constant nodes, fold
    constant subgraphs that compute weights by the one folding policy, drop what became unused,
    merge identical initializers, sort, strip the exporter's per-node debug metadata unless
    ``keep_debug_metadata``), then unique names. Numerics unchanged; model-level metadata kept.
    ``compress`` runs the same ``cleanup`` pass first, so both verbs see the same weights."""
    import onnx_ir.passes.common as common

    from gencompress.passes.cleanup import CleanupPass

    CleanupPass(CleanupPass.Options(strip_debug_metadata=not keep_debug_metadata))(model)
    common.NameFixPass()(model)
    return model


def rewrite_for_int8(model):
    """The hook for the int8 graph rewrites (BatchNorm folding, ConvTranspose → Gemm / Conv +
    DepthToSpace), looked up by registry name: the ``rewrite_for_int8`` pipeline pass if
    registered, else its steps one by one. Returns (model, per-step report)."""
    from gencompress.passes.registry import available

    passes = available()
    names = [REWRITE_PIPELINE] if REWRITE_PIPELINE in passes else list(REWRITE_PASSES)
    missing = [name for name in names if name not in passes]
    if missing:
        raise GencompressError(f"--rewrite needs the pass(es) {', '.join(missing)}, which this installation does not have")
    report = {}
    for name in names:
        p = passes[name](passes[name].Options())
        model = p(model).model
        report[name] = getattr(p, "report", None)
    if list(report) == [REWRITE_PIPELINE] and isinstance(report[REWRITE_PIPELINE], dict):
        report = report[REWRITE_PIPELINE]  # the pipeline's report is the per-step one
    return model, report


FORM_TEXT = {  # the rewrite passes' "form" parts, as op names
    "flatten": "Flatten", "gemm": "Gemm", "reshape": "Reshape", "conv": "Conv", "depth_to_space": "DepthToSpace",
    "slice": "Slice", "reshape_transpose": "Reshape/Transpose", "phase_convs": "Conv per phase", "concat": "Concat",
}


def describe_rewrites(steps: dict) -> tuple[list[str], list[str], int]:
    """(changes, left alone, ConvTranspose layers rewritten) from the per-step rewrite report, as text."""
    changes, left, converted = [], [], 0
    for item in (steps.get("fold_batchnorm") or {}).get("folded", []):
        changes.append(f"{item['node']}: BatchNormalization folded into {item['into']} ({item['op']})")
    for step in ("convtranspose_to_gemm", "convtranspose_to_conv"):
        for item in (steps.get(step) or {}).get("rewritten", []):
            converted += 1
            form = " + ".join(FORM_TEXT.get(part, part) for part in item["form"].split("+"))
            if "gemm" in item:
                form = form.replace("Gemm", "Gemm {}x{}".format(*item["gemm"]))
            hoisted = f", {item['hoisted']} moved next to it" if item.get("hoisted") else ""
            changes.append(f"{item['node']}: ConvTranspose -> {form}{hoisted}")
    for step, items in steps.items():
        for item in items.get("left_alone", []) if isinstance(items, dict) else []:
            left.append(f"{item['node']}: {step} left it alone ({item['reason']})")
    return changes, left, converted


def apply_rewrites(model, *, setting: bool | None, mode: str, exclude: tuple[str, ...]):
    """Run the int8 rewrites as ``setting`` says: True always, False never, None (auto) for static
    mode when they turn at least one ConvTranspose into a Conv or Gemm (onnxruntime has int8
    kernels for those, none for ConvTranspose) and ``exclude`` keeps no ConvTranspose in float.
    Returns (model, report): ``applied``, ``setting``, ``reason``, ``changes``, ``left_alone``,
    ``convtranspose_rewritten`` and the passes' own reports under ``passes``."""
    import onnx_ir as ir

    from gencompress.passes.insert_qdq import find_layers

    info = {"applied": False, "setting": {None: "auto", True: "on", False: "off"}[setting]}
    if setting is False:
        return model, {**info, "reason": "turned off (--no-rewrite)"}
    if setting is None and mode != "static":
        return model, {**info, "reason": f"--mode {mode} computes in float: the rewrites only speed up int8 kernels"}
    convt = [layer for layer in find_layers(model.graph) if layer.op_type == "ConvTranspose"]
    kept = [p for p in exclude if any(layer.matches(p) for layer in convt)]
    if kept:
        if setting:
            raise GencompressError(f"--exclude {kept[0]!r} keeps a ConvTranspose in float, but --rewrite replaces it; add --no-rewrite to keep it")
        return model, {**info, "reason": f"--exclude {kept[0]} keeps a ConvTranspose in float (the rewrites would replace it)"}
    if setting is None and not convt:
        return model, {**info, "reason": "no ConvTranspose to rewrite"}
    if setting is None:
        from gencompress.passes.registry import available

        passes = available()
        if REWRITE_PIPELINE not in passes and not all(name in passes for name in REWRITE_PASSES):
            return model, {**info, "reason": "this installation lacks the rewrite passes"}
    snapshot = ir.serde.serialize_model(model) if setting is None else None
    model, steps = rewrite_for_int8(model)
    changes, left, converted = describe_rewrites(steps)
    if setting is None and not converted:
        return ir.serde.deserialize_model(snapshot), {**info, "reason": "no ConvTranspose the rewrites apply to", "left_alone": left}
    reason = "--rewrite" if setting else "onnxruntime has no int8 ConvTranspose kernel; rewritten as Conv/Gemm they run in int8"
    return model, {
        **info, "applied": True, "reason": reason, "convtranspose_rewritten": converted, "changes": changes, "left_alone": left, "passes": steps,
    }


def finalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop value_info entries that merely repeat an initializer's type (the initializer has it)."""
    initializers = {i.name for i in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto


# ---- fidelity ---------------------------------------------------------------------------------


class Evaluator:
    """PSNR of candidate models against the float reference on one fixed seeded input set."""

    def __init__(self, reference: onnx.ModelProto, feeds: dict[str, np.ndarray]):
        from gencompress.inputs import output_range_of_model
        from gencompress.passes.calibrate import BATCH_SIZE, fixed_batch, make_session, run_model

        fixed = fixed_batch(reference)
        self.batch, self.exact = fixed or BATCH_SIZE, fixed is not None
        self.feeds = feeds
        self.reference = run_model(make_session(reference), feeds, self.batch, exact=self.exact)
        self.samples = len(self.reference[0])
        nominal = output_range_of_model(reference)
        self.peak_source = "nominal output range" if nominal else "reference peak-to-peak"
        self.peaks = [float(nominal) if nominal else float(np.ptp(r)) or 1.0 for r in self.reference]

    def psnr(self, candidate, optimization: str = "all") -> float:
        from gencompress.passes.calibrate import make_session, run_model

        session = make_session(candidate, optimization=optimization)
        feeds = dict(self.feeds)
        for i in session.get_inputs():  # a float16-I/O model takes the same latents as float16
            if i.type == "tensor(float16)" and feeds[i.name].dtype == np.float32:
                feeds[i.name] = feeds[i.name].astype(np.float16)
        outputs = run_model(session, feeds, self.batch, exact=self.exact)
        values = []
        for ref, out, peak in zip(self.reference, outputs, self.peaks):
            mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
            if not np.isfinite(mse):
                return -math.inf
            values.append(math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse))
        return min(values)

    def describe(self) -> dict:
        return {"samples": self.samples, "peak": self.peaks[0] if len(self.peaks) == 1 else self.peaks, "peak_source": self.peak_source}


def eval_inputs(model, seed: int, size: int = DEFAULT_EVAL_SIZE) -> dict[str, np.ndarray]:
    from gencompress.inputs import sample_inputs, specs_of_model

    return sample_inputs(specs_of_model(model), size, seed + EVAL_SEED_OFFSET)


def db(value: float) -> float | None:
    """A PSNR for reports: rounded, ``None`` for identical outputs (infinite PSNR)."""
    return None if math.isinf(value) else round(float(value), 2)


# ---- the quantizers: build a model with a given set of layers kept in float ------------------------


@dataclass
class Quantizer:
    """Builds quantized variants of one prepared float model (``build(exclude)`` → ModelProto)."""

    prepared: onnx.ModelProto
    make_pass: Callable[[tuple[str, ...], tuple[str, ...] | None], object]
    layers: list[dict]  # every quantizable layer: node, op_type, weights
    calibration: dict | None = None

    def build(self, exclude=(), include=None) -> tuple[onnx.ModelProto, dict]:
        import onnx_ir as ir

        model = ir.serde.deserialize_model(self.prepared)
        p = self.make_pass(tuple(exclude), include)
        model = p(model).model
        return finalize(ir.serde.serialize_model(model)), p.report


def static_quantizer(prepared: onnx.ModelProto, *, calib, calib_size, calib_data, seed, percentile, per_tensor, activations, log, exclude=()) -> Quantizer:
    import onnx_ir as ir

    from gencompress.passes.calibrate import calibration_inputs, collect_stats, float_tensors
    from gencompress.passes.insert_qdq import InsertQDQPass, find_layers, select_layers

    layers = find_layers(ir.serde.deserialize_model(prepared).graph)
    if not layers:
        raise GencompressError("nothing to quantize: the model has no Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM or embedding weights")
    select_layers(layers, exclude)  # unknown names fail before the calibration run
    feeds = calibration_inputs(prepared, size=calib_size, seed=seed, data=calib_data)
    n = len(next(iter(feeds.values())))
    log(f"calibrating on {n} {'samples from ' + str(calib_data) if calib_data else 'seeded latent draws'} ({calib})")
    names = float_tensors(prepared)
    stats = collect_stats(prepared, names, feeds, histogram=calib != "minmax")
    symmetric = activations == "int8"
    ranges = tuple((name, *stats[name].range(calib, symmetric=symmetric, percentile=percentile)) for name in names)

    def make_pass(exclude, include):
        # the calibration settings too: a range the run above lacks (a tensor shape inference
        # could not type) is then calibrated the way the user asked, not with the pass defaults
        options = InsertQDQPass.Options(
            per_tensor=per_tensor, activations=activations, exclude=exclude, include=include, ranges=ranges,
            calib=calib, calib_size=calib_size, calib_data=str(calib_data) if calib_data else None, percentile=percentile, seed=seed,
        )
        return InsertQDQPass(options)

    calibration = {"method": calib, "samples": n, "source": str(calib_data) if calib_data else "latent prior (seeded)", "seed": None if calib_data else seed}
    if calib == "percentile":
        calibration["percentile"] = percentile
    return Quantizer(prepared, make_pass, [_layer_info(layer) for layer in layers], calibration)


def weight_only_quantizer(prepared: onnx.ModelProto, *, bits: int, block_size: int) -> Quantizer:
    import onnx_ir as ir

    from gencompress.passes.weight_only_quantize import WeightOnlyQuantizePass, weight_layers

    layers = weight_layers(ir.serde.deserialize_model(prepared).graph)
    if not layers:
        raise GencompressError("nothing to quantize: the model has no Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM or embedding weights")

    def make_pass(exclude, include):
        return WeightOnlyQuantizePass(WeightOnlyQuantizePass.Options(bits=bits, block_size=block_size, exclude=exclude, include=include))

    return Quantizer(prepared, make_pass, [_layer_info(layer) for layer in layers])


def _layer_info(layer) -> dict:
    return {"node": layer.name, "op_type": layer.op_type, "weights": [w.name for w in layer.weights]}


# ---- the API ----------------------------------------------------------------------------------


def validate_options(
    *, mode, bits, calib, calib_size, activations, percentile, block_size, target_psnr, eval_size, seed=0,
    calib_data=None, per_tensor=False, percentile_given=False,
) -> None:
    from gencompress.passes.calibrate import METHODS
    from gencompress.passes.insert_qdq import ACTIVATION_TYPES

    if mode not in MODES:
        raise GencompressError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if bits not in (4, 8):
        raise GencompressError(f"--bits {bits}: supported widths are 8 and 4 (4 with --mode weight-only)")
    if bits == 4 and mode != "weight-only":
        raise GencompressError(f"--bits 4 needs --mode weight-only (--mode {mode} is {'int8' if mode == 'static' else 'float16'})")
    if calib not in METHODS:
        raise GencompressError(f"--calib {calib!r}: choose one of {', '.join(METHODS)}")
    if calib_size is not None and calib_size <= 0:
        raise GencompressError(f"--calib-size must be positive, got {calib_size}")
    if activations not in ACTIVATION_TYPES:
        raise GencompressError(f"--activations {activations!r}: choose one of {', '.join(ACTIVATION_TYPES)}")
    if not 50.0 < percentile <= 100.0:
        raise GencompressError(f"--percentile {percentile}: must be in (50, 100]")
    if block_size < 16 or block_size & (block_size - 1):
        raise GencompressError(f"--block-size {block_size}: must be a power of two, 16 or more")
    if target_psnr is not None and (not math.isfinite(target_psnr) or target_psnr <= 0):
        raise GencompressError(f"--target-psnr {target_psnr}: must be a positive number of dB")
    if target_psnr is not None and mode == "fp16":
        raise GencompressError("--target-psnr works with --mode static or weight-only")
    if eval_size <= 0:
        raise GencompressError(f"--eval-size must be positive, got {eval_size}")
    if seed < 0:
        raise GencompressError(f"--seed must be 0 or more, got {seed}")
    if mode != "static":
        # calibration and activation settings: static int8 only; silently ignoring them would
        # let a user believe e.g. their --calib-data was used
        static_only = [
            name for name, given in (
                ("--calib", calib != "minmax"), ("--calib-size", calib_size is not None), ("--calib-data", calib_data is not None),
                ("--percentile", percentile_given), ("--per-tensor", per_tensor), ("--activations", activations != "uint8"),
            ) if given
        ]
        if static_only:
            raise GencompressError(f"{', '.join(static_only)}: only for --mode static (--mode {mode} has no calibrated activations)")


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
    exclude=(),
    target_psnr: float | None = None,
    strict: bool = False,
    seed: int = 0,
    percentile: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    keep_io_types: bool = True,
    eval_size: int = DEFAULT_EVAL_SIZE,
    rewrite: bool | None = None,
    keep_debug_metadata: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Quantize the float ONNX model at ``in_path`` into ``out_path``; return a report.

    ``mode``: "static" (int8 QDQ, calibrated), "weight-only" (``bits`` 8 or 4), or "fp16".
    ``calib_size``: seeded latent draws for calibration (default 256), or the first N rows of
    ``calib_data`` (an .npz keyed by input name; all rows by default).
    ``exclude``: node names, op types or weight names to keep in float.
    ``target_psnr``: keep the most damaging layers in float until the PSNR against float reaches
    it; when it cannot be reached the closest model is written (or, with ``strict``, an error).
    ``rewrite``: the int8 graph rewrites (``REWRITE_PASSES``) before quantizing. None (default):
    on in static mode when they turn a ConvTranspose into an int8-capable Conv or Gemm, off for
    weight-only and fp16 (float compute: nothing to gain); True / False: always / never. The
    report's ``rewrite`` says whether they ran, why, and what they changed.
    ``log``: receives progress and warning lines (the CLI sends them to stderr).
    """
    import onnx_ir as ir

    from gencompress.onnx_io import load_model, refuse_nonfinite_weights, refuse_overwrite, save_model
    from gencompress.passes.calibrate import DEFAULT_PERCENTILE

    log = log or (lambda message: None)
    started = time.perf_counter()
    percentile_given = percentile is not None
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    exclude = _split_patterns(exclude)
    validate_options(
        mode=mode, bits=bits, calib=calib, calib_size=calib_size, activations=activations,
        percentile=percentile, block_size=block_size, target_psnr=target_psnr, eval_size=eval_size, seed=seed,
        calib_data=calib_data, per_tensor=per_tensor, percentile_given=percentile_given,
    )
    if not keep_io_types and mode != "fp16":
        raise GencompressError(f"--fp16-io: only for --mode fp16 (--mode {mode} keeps float32 inputs and outputs)")
    sources = [in_path, *([calib_data] if calib_data else [])]
    refuse_overwrite(out_path, sources)
    if Path(out_path).suffix != ".onnx":
        raise GencompressError(f"{out_path}: output should be an .onnx file")
    reference = load_model(in_path)
    refuse_nonfinite_weights(reference, in_path)
    _check_float_model(reference, in_path)
    from gencompress.exporter.upgrade import upgrade_opset

    notes: list[str] = []
    reference = upgrade_opset(reference, in_path, lambda message: (notes.append(message), log(message)))

    model = ir.serde.deserialize_model(reference)
    prepare(model, keep_debug_metadata=keep_debug_metadata)
    model, rewrite_report = apply_rewrites(model, setting=rewrite, mode=mode, exclude=exclude)
    evaluator = Evaluator(reference, eval_inputs(reference, seed, eval_size))

    report: dict = {"input": str(in_path), "output": str(out_path), "mode": mode}
    target = psnr = None
    if mode == "fp16":
        from gencompress.passes.fp16_convert import FP16ConvertPass

        p = FP16ConvertPass(FP16ConvertPass.Options(keep_io_types=keep_io_types, exclude=exclude))
        proto = finalize(ir.serde.serialize_model(p(model).model))
        pass_report = p.report
        report["bits"] = 16
    else:
        prepared = ir.serde.serialize_model(model)  # each build (and --target-psnr candidate) starts from it
        if mode == "static":
            quantizer = static_quantizer(
                prepared, calib=calib, calib_size=calib_size, calib_data=calib_data, seed=seed,
                percentile=percentile, per_tensor=per_tensor, activations=activations, log=log, exclude=exclude,
            )
            report.update(bits=8, activations=activations, weights="per-tensor" if per_tensor else "per-channel", calibration=quantizer.calibration)
        else:
            quantizer = weight_only_quantizer(prepared, bits=bits, block_size=block_size)
            report.update(bits=bits, block_size=block_size if bits == 4 else None)
        proto, pass_report = quantizer.build(exclude)
        if target_psnr is not None:
            proto, pass_report, target, psnr = _meet_target(quantizer, evaluator, exclude, target_psnr, proto, pass_report, log)
            if not target["met"] and strict:
                raise GencompressError(target["message"])

    if psnr is None:
        psnr = evaluator.psnr(proto)
    save_model(proto, out_path, inputs=sources)
    # the input's weights may sit in an external-data side file: measure the self-contained model
    before, after = reference.ByteSize(), os.path.getsize(out_path)
    report.update(
        bytes_before=before,
        bytes_after=after,
        ratio=round(after / before, 4),
        psnr_db=db(psnr),
        evaluation=evaluator.describe(),
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
    )
    if mode == "fp16":
        report["fp16"] = pass_report
    else:
        report["layers"] = pass_report["layers"]
        report["float_layers"] = pass_report["float_layers"]
        if mode == "static":
            report["quantized_activations"] = pass_report["quantized_activations"]
    if target is not None:
        report["target"] = target
    from gencompress.result_warnings import compression_warnings

    report["notes"] = notes
    report["warnings"] = compression_warnings(proto, report["ratio"], float_layers=report.get("float_layers") or [])
    for warning in report["warnings"]:
        log(f"warning: {warning}")
    report["rewrite"] = rewrite_report
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _split_patterns(patterns) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns or ():
        out += [x.strip() for x in str(p).split(",") if x.strip()]
    return tuple(dict.fromkeys(out))


def _check_float_model(proto: onnx.ModelProto, path) -> None:
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}:
        raise GencompressError(f"{path}: the model is already quantized; give the float model")


def _meet_target(quantizer: Quantizer, evaluator: Evaluator, exclude, target: float, proto, pass_report, log):
    """Keep the most damaging layers in float, one more at a time, until ``target`` dB is met.

    Returns (model, pass report, target report, the model's PSNR)."""
    from gencompress.passes.sensitivity import rank_layers

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
