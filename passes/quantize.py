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

import gc
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from gencompress.errors import GencompressError
from gencompress.onnx_io import with_scratch_folder
from gencompress.passes.cleanup import DEBUG_METADATA_PREFIXES, strip_debug_metadata  # noqa: F401  (one place; re-exported)

from gencompress.runtime_check.fidelity import DEFAULT_SAMPLES as DEFAULT_EVAL_SIZE, EVAL_SEED_OFFSET  # noqa: E402, F401  (one protocol)

MODES = ("static", "weight-only", "fp16")
EVAL_BATCH = 64  # samples per onnxruntime call in evaluation: as ``gencompress check --batch``
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
        changes.append(f"{item['node']}: {item.get('op_type', 'BatchNormalization')} folded into {item['into']} ({item['op']})")
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


def fold_into_layers(model) -> list[dict]:
    """BatchNormalization and Mul by a per-channel constant folded into the layer before them
    (``fold_batchnorm``), in place, whether or not a ConvTranspose is rewritten: an int8 Conv fuses
    the activation after it, not a BatchNormalization or a Mul, which would run as extra int8 (or
    dequantize/quantize) ops. Returns what was folded."""
    from gencompress.passes.fold_batchnorm import FoldBatchNormPass

    p = FoldBatchNormPass()
    p(model)
    return p.report["folded"]


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
    layers = find_layers(model.graph)
    convt = [layer for layer in layers if layer.op_type == "ConvTranspose"]
    kept = [p for p in exclude if any(layer.matches(p) for layer in convt)]
    if kept:
        if setting:
            raise GencompressError(f"--exclude {kept[0]!r} keeps a ConvTranspose in float, but --rewrite replaces it; add --no-rewrite to keep it")
        return model, {**info, "reason": f"--exclude {kept[0]} keeps a ConvTranspose in float (the rewrites would replace it)"}
    if setting is None and not convt:
        layout = _layout_rewrites(model, exclude)
        if layout["changes"]:
            reasons = [text for key, text in LAYOUT_REASONS.items() if layout[key]]
            return model, {**info, "applied": True, "reason": "; ".join(reasons), **layout}
        return model, {**info, "reason": "no ConvTranspose to rewrite"}
    if setting is None:
        from gencompress.passes.registry import available

        passes = available()
        if REWRITE_PIPELINE not in passes and not all(name in passes for name in REWRITE_PASSES):
            return model, {**info, "reason": "this installation lacks the rewrite passes"}
    snapshot = model.clone() if setting is None else None  # shares the weights: the passes make new tensors
    model, steps = rewrite_for_int8(model)
    changes, left, converted = describe_rewrites(steps)
    if setting is None and not converted:
        return snapshot, {**info, "reason": "no ConvTranspose the rewrites apply to", "left_alone": left}
    reason = "--rewrite" if setting else "onnxruntime has no int8 ConvTranspose kernel; rewritten as Conv/Gemm they run in int8"
    layout = _layout_rewrites(model, exclude)
    return model, {
        **info, "applied": True, "reason": reason, "convtranspose_rewritten": converted, "passes": steps, **layout,
        "changes": changes + layout["changes"], "left_alone": left,
    }


LAYOUT_REASONS = {
    "resize_nhwc": "nearest upsampling before int8 Convs spelled channels-last (onnxruntime's channels-last uint8 Resize is slow)",
    "conv_space_to_depth": "Convs with few output channels computed on 2x2 or 4x4 pixel blocks (onnxruntime's int8 GEMM tiles are 16 channels wide)",
}


def _layout_rewrites(model, exclude) -> dict:
    """The rewrites that change how int8 Convs lay out their data, in place, except around the Convs
    ``exclude`` keeps in float: ``resize_nhwc`` (nearest upsampling before Convs) and
    ``conv_space_to_depth`` (Convs with few output channels). Returns their rewritten lists under
    their names and the report's change lines under ``changes``."""
    from gencompress.passes.conv_space_to_depth import ConvSpaceToDepthPass
    from gencompress.passes.resize_nhwc import ResizeNHWCPass

    resize = ResizeNHWCPass(ResizeNHWCPass.Options(exclude=tuple(exclude)))
    resize(model)
    blocks = ConvSpaceToDepthPass(ConvSpaceToDepthPass.Options(exclude=tuple(exclude)))
    blocks(model)
    changes = [f"Resize {name} -> Transpose/Reshape/Expand/Reshape/Transpose" for name in resize.report["rewritten"]]
    changes += [f"{item['node']}: Conv {item['kernel'][0]}x{item['kernel'][1]} -> {item['out_channels'][0]} channels -> SpaceToDepth + Conv"
                f" {item['conv_kernel'][0]}x{item['conv_kernel'][1]} -> {item['out_channels'][1]} channels + DepthToSpace ({item['block']}x{item['block']} blocks)"
                for item in blocks.report["rewritten"]]
    return {"resize_nhwc": resize.report["rewritten"], "conv_space_to_depth": [item["node"] for item in blocks.report["rewritten"]], "changes": changes}


def finalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop value_info entries that merely repeat an initializer's type (the initializer has it)."""
    initializers = {i.name for i in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto


# ---- fidelity ---------------------------------------------------------------------------------


class Evaluator:
    """PSNR of candidate models against the float reference on one fixed input set, by the one
    fidelity protocol (``runtime_check.fidelity``): the same sessions, batches, peak and PSNR
    that ``gencompress check`` uses, so both print the same number for the same pair and set.

    ``reference``: a path (onnxruntime reads it, nothing else is kept), proto or onnx_ir model.
    ``source`` says what the inputs are (for the report).
    """

    def __init__(self, reference, feeds: dict[str, np.ndarray], *, source: str = "held-back seeded latents"):
        from gencompress.onnx_io import load_header
        from gencompress.passes.calibrate import fixed_batch, num_samples
        from gencompress.runtime_check import fidelity as F
        from gencompress.runtime_check.sessions import make_session, run_all

        header = load_header(reference) if isinstance(reference, (str, os.PathLike)) else reference
        from gencompress.onnx_io import skeleton

        header = header if isinstance(header, onnx.ModelProto) else skeleton(header)
        self.fixed = fixed_batch(header)
        self.feeds, self.samples, self.source = feeds, num_samples(feeds), source
        self.reference = run_all(make_session(reference, label="reference"), feeds, self.samples, EVAL_BATCH, fixed=self.fixed, label="reference")
        peaks = [F.output_peak(header, r) for r in self.reference]
        self.peaks = [p for p, _ in peaks]
        self.peak_source = peaks[0][1] if peaks else "nominal"

    def psnr(self, candidate, optimization: str = "all") -> float:
        """The lowest PSNR over the outputs (``-inf`` for non-finite outputs)."""
        from gencompress.runtime_check import fidelity as F
        from gencompress.runtime_check.sessions import make_session, run_all

        session = make_session(candidate, optimization=optimization, label="candidate")
        outputs = run_all(session, self.feeds, self.samples, EVAL_BATCH, fixed=self.fixed, label="candidate")
        values = [F.psnr(F.mse(ref, out), peak) for ref, out, peak in zip(self.reference, outputs, self.peaks)]
        return min(-math.inf if math.isnan(v) else v for v in values)

    def describe(self) -> dict:
        return {"samples": self.samples, "source": self.source, "peak": self.peaks[0] if len(self.peaks) == 1 else self.peaks, "peak_source": self.peak_source}


def eval_inputs(model, seed: int, size: int = DEFAULT_EVAL_SIZE) -> dict[str, np.ndarray]:
    """The held-back evaluation set (``fidelity.held_back_inputs``)."""
    from gencompress.runtime_check.fidelity import held_back_inputs

    return held_back_inputs(model, seed, size)


def split_calibration_data(feeds: dict[str, np.ndarray], calib_size: int | None, eval_size: int) -> tuple[dict, dict | None, str]:
    """Real calibration rows → (calibration rows, held-back rows or None, which rows were held back).

    With ``calib_size`` the first ``calib_size`` rows calibrate and up to ``eval_size`` of the rows
    after them are held back; without it the last ``min(eval_size, N // 4)`` rows are held back
    and the rest calibrate. No rows left over → None (the evaluation falls back to prior draws)."""
    n = len(next(iter(feeds.values())))
    if calib_size is not None:
        start = min(calib_size, n)
        stop = min(n, start + eval_size)
    else:
        held = min(eval_size, n // 4)
        start, stop = n - held, n
    calibration = {k: v[:start] for k, v in feeds.items()}
    if stop <= start:
        return calibration, None, ""
    return calibration, {k: v[start:stop] for k, v in feeds.items()}, f"rows {start}..{stop - 1}"


def db(value: float) -> float | None:
    """A PSNR for reports: rounded, ``None`` for identical outputs (infinite PSNR)."""
    return None if math.isinf(value) else round(float(value), 2)


# ---- the quantizers: build a model with a given set of layers kept in float ------------------------


@dataclass
class Quantizer:
    """Builds quantized variants of one prepared float model (``build(exclude)`` → ModelProto).

    Each build runs on a clone of ``prepared`` that shares its weight tensors (the passes make
    new tensors, never write into old ones), so a build costs the quantized weights only."""

    prepared: object  # onnx_ir.Model
    make_pass: Callable[[tuple[str, ...], tuple[str, ...] | None], object]
    layers: list[dict]  # every quantizable layer: node, op_type, weights
    calibration: dict | None = None

    def build(self, exclude=(), include=None) -> tuple[onnx.ModelProto, dict]:
        import onnx_ir as ir

        p = self.make_pass(tuple(exclude), include)
        model = p(self.prepared.clone()).model
        return finalize(ir.serde.serialize_model(model)), p.report


def calibrated_ranges(model, *, calib, calib_size, calib_data, seed, percentile, activations, log, feeds=None) -> tuple[dict, dict]:
    """Run ``model`` (onnx_ir or proto) over the calibration set: (the range of each of its float
    tensors by name, the calibration's description for the report). ``feeds``: the calibration
    rows, if already chosen (``split_calibration_data``), else drawn or read here."""
    from gencompress.passes.calibrate import calibration_inputs, collect_stats, float_tensors

    if feeds is None:
        feeds = calibration_inputs(model, size=calib_size, seed=seed, data=calib_data)
    n = len(next(iter(feeds.values())))
    log(f"calibrating on {n} {'samples from ' + str(calib_data) if calib_data else 'seeded latent draws'} ({calib})")
    names = float_tensors(model)
    stats = collect_stats(model, names, feeds, histogram=calib != "minmax")
    symmetric = activations == "int8"
    ranges = {name: stats[name].range(calib, symmetric=symmetric, percentile=percentile) for name in names}
    calibration = {"method": calib, "samples": n, "source": str(calib_data) if calib_data else "latent prior (seeded)", "seed": None if calib_data else seed}
    if calib == "percentile":
        calibration["percentile"] = percentile
    return ranges, calibration


def static_quantizer(
    prepared, *, calib, calib_size, calib_data, seed, percentile, per_tensor, activations, log, exclude=(), feeds=None,
    before_rewrites=None, calibrated=None,
) -> Quantizer:
    """``prepared``: the onnx_ir model (or proto); ``feeds``: as in ``calibrated_ranges``.
    ``before_rewrites``: the onnx_ir model ``prepared`` was rewritten from by the int8 rewrites,
    calibrated in its place (the rewrites' tensors get their ranges by ``carry_ranges``): onnxruntime
    runs a ConvTranspose, pre-packed, faster than the sub-pixel Conv replacing it (47M-parameter
    generator: 5.9-7.3 s against 8.8-9.8 s for 256 draws), and a speed plan calibrates once for
    all its configurations. ``calibrated``: ``calibrated_ranges`` of that model, if already run."""
    import onnx_ir as ir

    from gencompress.passes.calibrate import carry_ranges
    from gencompress.passes.insert_qdq import InsertQDQPass, find_layers, select_layers

    if isinstance(prepared, onnx.ModelProto):
        prepared = ir.serde.deserialize_model(prepared)
    layers = find_layers(prepared.graph)
    if not layers:
        raise GencompressError("nothing to quantize: the model has no Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM or embedding weights")
    select_layers(layers, exclude)  # unknown names fail before the calibration run
    if calibrated is None:
        calibrated = calibrated_ranges(
            before_rewrites or prepared, calib=calib, calib_size=calib_size, calib_data=calib_data, seed=seed,
            percentile=percentile, activations=activations, log=log, feeds=feeds,
        )
    found, calibration = calibrated
    if before_rewrites is not None:
        found = {**found, **carry_ranges(prepared.graph, before_rewrites.graph, found)}
    ranges = tuple((name, lo, hi) for name, (lo, hi) in found.items())

    def make_pass(exclude, include):
        # the calibration settings too: a range the run above lacks (a tensor shape inference
        # could not type) is then calibrated the way the user asked, not with the pass defaults
        options = InsertQDQPass.Options(
            per_tensor=per_tensor, activations=activations, exclude=exclude, include=include, ranges=ranges,
            calib=calib, calib_size=calib_size, calib_data=str(calib_data) if calib_data else None, percentile=percentile, seed=seed,
        )
        return InsertQDQPass(options)

    return Quantizer(prepared, make_pass, [_layer_info(layer) for layer in layers], calibration)


def weight_only_quantizer(prepared, *, bits: int, block_size: int) -> Quantizer:
    import onnx_ir as ir

    from gencompress.passes.weight_only_quantize import WeightOnlyQuantizePass, weight_layers

    if isinstance(prepared, onnx.ModelProto):
        prepared = ir.serde.deserialize_model(prepared)
    layers = weight_layers(prepared.graph)
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


# above this, quantize says how much memory the speed plan takes (measured: benchmarks/scale.py's
# 47M generator, default objective: 3.5-4.3 GB, 94-136 s)
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
    check: bool = True,
    external_data: bool | None = None,
    log: Callable[[str], None] | None = None,
    objective: str = "balanced",
    batches=(1, 64),
    threads: int = 2,
    provider: str = "CPUExecutionProvider",
    timer=None,
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
    ``check``: measure PSNR against float afterwards (False: ``--no-check``, ``psnr_db`` None).
    The evaluation set is the held-back one every verb uses (``fidelity.held_back_inputs``), or,
    with ``calib_data``, the rows of the file calibration did not use (``split_calibration_data``).
    ``external_data``: write the weights to ``OUT.onnx.data`` beside the output (None: only
    when the model would exceed the 2 GB protobuf limit).
    ``log``: receives progress and warning lines (the CLI sends them to stderr).
    ``objective`` (see ``speed_plan``): "balanced" (default) times each layer in int8 and in float
    on ``provider`` at ``batches`` with ``threads`` threads and keeps int8 compute where it is not
    slower, never slower than float overall; "speed": fastest; "size": every layer int8, untimed.
    Layers computing in float keep int8 weights in a form onnxruntime folds at load.
    ``timer``: replaces the interleaved timer (tests): ``timer(models, reference=True) -> [{batch: p50 / float p50}]``.
    """
    import onnx_ir as ir

    from gencompress.onnx_io import (
        external_data_entries, external_tensors, load_external_data, load_mapped, mapped_ir, materialize, refuse_nonfinite_weights,
        refuse_overwrite, release, save_model, skeleton, spill, stored_bytes,
    )
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
    from gencompress.passes import speed_plan

    speed_plan.check_objective(objective)
    if threads <= 0 or any(b <= 0 for b in batches) or not batches:
        raise GencompressError(f"--threads and --batch must be positive (got threads {threads}, batch {', '.join(map(str, batches)) or 'none'})")
    if not keep_io_types and mode != "fp16":
        raise GencompressError(f"--fp16-io: only for --mode fp16 (--mode {mode} keeps float32 inputs and outputs)")
    sources = [in_path, *([calib_data] if calib_data else [])]
    refuse_overwrite(out_path, sources)
    if external_data:
        from gencompress.onnx_io import external_data_path

        refuse_overwrite(external_data_path(out_path), sources)  # before any work, not when saving
    if Path(out_path).suffix != ".onnx":
        raise GencompressError(f"{out_path}: output should be an .onnx file")
    if not check and target_psnr is not None:
        raise GencompressError("--target-psnr measures PSNR against float; it cannot be combined with --no-check")
    from gencompress.exporter.upgrade import upgrade_opset

    planned = mode == "static" and objective != "size"
    stream = not planned and target_psnr is None  # one build, no plan: see ``streamed`` below
    reference = load_mapped(in_path)  # the graph; its weights left in their files
    entries = external_data_entries(reference, Path(in_path))
    on_disk = stored_bytes(in_path, entries)
    mapped = stream and bool(entries) and _needs_no_upgrade(reference)  # weights read where they are, memory-mapped, never whole
    if not mapped:
        load_external_data(reference, in_path)
    refuse_nonfinite_weights(in_path if mapped else reference, in_path)
    _check_float_model(reference, in_path)

    notes: list[str] = []
    if planned and on_disk > PLAN_NOTE_BYTES:
        note = (f"note: --objective {objective} times several builds of this {on_disk / 1e6:.0f} MB model side by side (peak memory "
                "18-23x the file on a 190 MB generator); --objective size reads it a weight at a time (under 3x)")
        notes.append(note)
        log(note)
    upgraded = upgrade_opset(reference, in_path, lambda message: (notes.append(message), log(message)))
    # the evaluation's reference: the input file itself (onnxruntime reads it), or the upgraded
    # model when the opset was converted
    eval_reference = in_path if upgraded is reference else upgraded
    before = on_disk if upgraded is reference else upgraded.ByteSize()
    reference = upgraded
    del upgraded  # only ``reference`` (deleted below) and ``eval_reference`` may keep the proto alive
    header = skeleton(reference)  # inputs, outputs and metadata, no weights: all the evaluation needs
    from gencompress.inputs import output_range_of_model, specs_of_model

    specs_of_model(header), output_range_of_model(header)  # malformed metadata fails now, not after calibrating
    calib_feeds, eval_feeds, eval_source = _evaluation_set(header, mode, calib_data, calib_size, eval_size, seed)
    # one copy of the weights in memory: the onnx_ir model wraps the proto's tensors, and the
    # reference's sessions read the input file itself
    model = mapped_ir(reference, in_path) if mapped else ir.serde.deserialize_model(reference)
    del reference
    prepare(model, keep_debug_metadata=keep_debug_metadata)
    # one build, no plan: the weights are streamed (moved to the scratch folder, read back one
    # at a time, memory-mapped), so that the loaded proto, the weights the rewrites replace and
    # onnxruntime's calibration session do not each hold a copy of the model in memory
    streamed = stream and (mapped or spill(model, "prepared.onnx") is not None)
    _own_tensors(model)
    gc.collect()  # onnx_ir graphs hold reference cycles: the loaded proto goes only with them
    folded = fold_into_layers(model) if mode == "static" and rewrite is not False else []
    unrewritten = ir.serde.serialize_model(model) if planned else None
    before_rewrites = None
    if mode == "static" and not planned:  # calibrated in place of the rewritten model (see static_quantizer)
        if streamed and (folded or mapped):
            # the folded weights out of memory too, all weights in the scratch folder: onnxruntime
            # maps them from there (weights in a user's folder would be copied for its session)
            spill(model, "folded.onnx")
            gc.collect()
        before_rewrites = model.clone()  # shares the weights: the rewrites make new tensors
    model, rewrite_report = apply_rewrites(model, setting=rewrite, mode=mode, exclude=exclude)
    if folded:
        rewrite_report["folded_into_layers"] = folded
    if not rewrite_report["applied"]:
        before_rewrites = None
    if streamed and rewrite_report["applied"]:  # the rewrites' new weights out of memory (the others are already)
        spill(model, "rewritten.onnx")
        gc.collect()
    for tensor in external_tensors(before_rewrites) if before_rewrites is not None else ():
        release(tensor)  # unmap the pages the rewrites read: the calibration session maps the file itself
    _own_tensors(model)

    report: dict = {"input": str(in_path), "output": str(out_path), "mode": mode, "objective": objective}
    target = psnr = evaluator = None
    if mode == "fp16":
        from gencompress.passes.fp16_convert import FP16ConvertPass

        p = FP16ConvertPass(FP16ConvertPass.Options(keep_io_types=keep_io_types, exclude=exclude))
        proto = finalize(ir.serde.serialize_model(materialize(p(model).model)))  # weights kept float read back from the scratch folder
        pass_report = p.report
        report["bits"] = 16
    else:
        if mode == "static":
            report.update(bits=8, activations=activations, weights="per-tensor" if per_tensor else "per-channel")
            if unrewritten is None:  # the plan calibrates the configurations it builds: not here too
                quantizer = static_quantizer(
                    model, calib=calib, calib_size=calib_size, calib_data=calib_data, seed=seed, percentile=percentile,
                    per_tensor=per_tensor, activations=activations, log=log, exclude=exclude, feeds=calib_feeds, before_rewrites=before_rewrites,
                )
                del before_rewrites
                report["calibration"] = quantizer.calibration
        else:
            quantizer = weight_only_quantizer(model, bits=bits, block_size=block_size)
            report.update(bits=bits, block_size=block_size if bits == 4 else None)
        if unrewritten is not None:  # measure, then decide which layers compute in int8
            model = None  # the plan builds from ``unrewritten``: the loaded weights and their rewrites go
            gc.collect()
            quantizer, proto, pass_report, report["speed_plan"] = _planned_quantizer(
                unrewritten, rewrite_report, exclude, objective, timer or speed_plan.interleaved_timer(
                    eval_reference, header=header, provider=provider, threads=threads, batches=batches, seed=seed),
                dict(calib=calib, calib_size=calib_size, calib_data=calib_data, seed=seed, percentile=percentile,
                     per_tensor=per_tensor, activations=activations, log=log), log)
            report["calibration"] = quantizer.builder.calibration()
        else:
            if target_psnr is None:
                quantizer.prepared = None  # one build: it may consume the model (no clone kept alive)
                proto, pass_report = _build_once(quantizer, model, exclude)
            else:
                proto, pass_report = quantizer.build(exclude)
            if mode == "weight-only" and objective != "size":  # float compute: int8 weights folded at load
                proto, pass_report = _fold_weights(proto), {**pass_report, "weights_folded_at_load": True}
        if target_psnr is not None:
            evaluator = Evaluator(eval_reference, eval_feeds, source=eval_source)
            proto, pass_report, target, psnr = _meet_target(quantizer, evaluator, exclude, target_psnr, proto, pass_report, log)
            if not target["met"] and strict:
                raise GencompressError(target["message"])
    del model
    if check and psnr is None:
        evaluator = Evaluator(eval_reference, eval_feeds, source=eval_source)
        psnr = evaluator.psnr(proto)
    after = sum(path.stat().st_size for path in save_model(proto, out_path, inputs=sources, external_data=external_data))
    report.update(
        bytes_before=before,
        bytes_after=after,
        ratio=round(after / before, 4),
        psnr_db=db(psnr) if check else None,
        evaluation=evaluator.describe() if check else {"skipped": "--no-check"},
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


def _fold_weights(proto):
    import onnx_ir as ir

    from gencompress.passes.speed_plan import cast_mul_weights

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


def _planned_quantizer(unrewritten, rewrite_report, exclude, objective, timer, static_options, log):
    """Plan which layers compute in int8 (``speed_plan``); return (quantizer, model, pass report, plan report)."""
    from gencompress.passes import speed_plan

    builder = speed_plan.ConfigBuilder.create(
        unrewritten, rewrite=bool(rewrite_report.get("applied")), static_options=static_options, exclude=exclude,
    )
    proto, pass_report, result = speed_plan.plan(builder, objective, timer, log)
    quantizer = _PlannedQuantizer(builder, result.int8, [l for l in builder.layers if l["node"] in result.int8])
    info = {"objective": objective, "layers": result.layers, "chosen_speed": {str(b): round(1 / r, 3) for b, r in result.ratios.items()},
            "message": result.message, "configs_measured": len(result.configs), "noise": speed_plan.NOISE,
            "weights_folded_at_load": pass_report.get("folded_weights", 0)}
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


def _own_tensors(model) -> None:
    """Give the weights still read from the loaded proto arrays of their own. Any one of them
    keeps the whole proto alive, and with it the old copy of every weight the rewrites replaced."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.serde.TensorProtoTensor):
            value.const_value = ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)


def _build_once(quantizer: Quantizer, model, exclude) -> tuple[onnx.ModelProto, dict]:
    """The single build of a run without --target-psnr: on the model itself, no clone."""
    import onnx_ir as ir

    from gencompress.onnx_io import materialize

    p = quantizer.make_pass(tuple(exclude), None)
    out = materialize(p(model).model)  # the weights left float, read back from the scratch folder
    return finalize(ir.serde.serialize_model(out)), p.report


def _evaluation_set(header, mode, calib_data, calib_size, eval_size, seed):
    """(calibration rows or None, evaluation inputs, their description) for a quantize run."""
    from gencompress.passes.calibrate import calibration_inputs
    from gencompress.runtime_check.fidelity import held_back_seed

    drawn = f"{eval_size} held-back seeded latents (seed {held_back_seed(seed)})"
    if mode != "static" or calib_data is None:
        return None, eval_inputs(header, seed, eval_size), drawn
    rows = calibration_inputs(header, data=calib_data)
    calibration, held, which = split_calibration_data(rows, calib_size, eval_size)
    if held is None:
        return calibration, eval_inputs(header, seed, eval_size), f"{drawn}: {calib_data} has no rows left after calibration"
    return calibration, held, f"{len(next(iter(held.values())))} held-back rows of {calib_data} ({which}, not used in calibration)"


def _split_patterns(patterns) -> tuple[str, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns or ():
        out += [x.strip() for x in str(p).split(",") if x.strip()]
    return tuple(dict.fromkeys(out))


def _check_float_model(proto, path) -> None:
    nodes = list(proto.graph.node if isinstance(proto, onnx.ModelProto) else proto.graph)
    ops = {n.op_type for n in nodes}
    if isinstance(proto, onnx.ModelProto):
        int_inits = {i.name for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
        if any(n.op_type == "Cast" and n.input and n.input[0] in int_inits for n in nodes):
            ops.add("DequantizeLinear")  # int8 weights behind Cast * scale (speed_plan.cast_mul_weights)
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
