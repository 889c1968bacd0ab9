"""The quantizers' building blocks, shared by quantize, the int8 plan, the target search and
sensitivity: the float model prepared, the int8 rewrites applied and described, the calibration,
and ``Quantizer``s that build a model with a given set of layers kept in float."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from gencompress.arguments import target_psnr_value
from gencompress.errors import GencompressError

MODES = ("static", "weight-only", "fp16")


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
    from gencompress.passes.insert_qdq import find_layers
    from gencompress.passes.int8_rewrites import RewriteForInt8Pass

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
        only_layout = RewriteForInt8Pass(RewriteForInt8Pass.Options(
            fold_batchnorm=False, gemm=False, conv=False, cleanup=False, exclude=tuple(exclude), layout_rewrites=True))
        only_layout(model)
        layout = _layout_changes(only_layout.report)
        if layout["changes"]:
            reasons = [text for key, text in LAYOUT_REASONS.items() if layout[key]]
            return model, {**info, "applied": True, "reason": "; ".join(reasons), "convtranspose_rewritten": 0, **layout}
        return model, {**info, "reason": "no ConvTranspose to rewrite"}
    snapshot = model.clone() if setting is None else None  # shares the weights: the passes make new tensors
    rewrites = RewriteForInt8Pass(RewriteForInt8Pass.Options(exclude=tuple(exclude), layout_rewrites=True))
    model = rewrites(model).model
    steps = rewrites.report
    changes, left, converted = describe_rewrites(steps)
    if setting is None and not converted:
        return snapshot, {**info, "reason": "no ConvTranspose the rewrites apply to", "left_alone": left}
    reason = "--rewrite" if setting else "onnxruntime has no int8 ConvTranspose kernel; rewritten as Conv/Gemm they run in int8"
    layout = _layout_changes(steps)
    return model, {
        **info, "applied": True, "reason": reason, "convtranspose_rewritten": converted, "passes": steps, **layout,
        "changes": changes + layout["changes"], "left_alone": left,
    }


LAYOUT_REASONS = {
    "resize_nhwc": "nearest upsampling before int8 Convs spelled channels-last (onnxruntime's channels-last uint8 Resize is slow)",
    "conv_space_to_depth": "Convs with few output channels computed on 2x2 or 4x4 pixel blocks (onnxruntime's int8 GEMM tiles are 16 channels wide)",
}


def _layout_changes(steps: dict) -> dict:
    """The layout rewrites' part of the rewrite report (``resize_nhwc``: nearest upsampling before
    Convs; ``conv_space_to_depth``: Convs with few output channels): their rewritten lists under
    their names and the report's change lines under ``changes``."""
    resize, blocks = steps["resize_nhwc"], steps["conv_space_to_depth"]
    changes = [f"Resize {name} -> Transpose/Reshape/Expand/Reshape/Transpose" for name in resize["rewritten"]]
    changes += [f"{item['node']}: Conv {item['kernel'][0]}x{item['kernel'][1]} -> {item['out_channels'][0]} channels -> SpaceToDepth + Conv"
                f" {item['conv_kernel'][0]}x{item['conv_kernel'][1]} -> {item['out_channels'][1]} channels + DepthToSpace ({item['block']}x{item['block']} blocks)"
                for item in blocks["rewritten"]]
    return {"resize_nhwc": resize["rewritten"], "conv_space_to_depth": [item["node"] for item in blocks["rewritten"]], "changes": changes}


def finalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop value_info entries that merely repeat an initializer's type (the initializer has it);
    a pixel-block Conv's int8 weight is stored as its kernel (``compact_block_weights``)."""
    if any(n.op_type == "SpaceToDepth" for n in proto.graph.node):
        import onnx_ir as ir

        from gencompress.passes.compact_block_weights import CompactBlockWeightsPass

        model = ir.serde.deserialize_model(proto)
        if CompactBlockWeightsPass()(model).modified:
            proto = ir.serde.serialize_model(model)
    initializers = {i.name for i in proto.graph.initializer}
    keep = [vi for vi in proto.graph.value_info if vi.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto


def eval_inputs(model, seed: int, size: int | None = None) -> dict[str, np.ndarray]:
    """The held-back evaluation set (``fidelity.held_back_inputs``; ``size`` None: ``fidelity.default_samples``)."""
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


def calibrated_ranges(model, static, *, log, feeds=None) -> tuple[dict, dict]:
    """Run ``model`` (onnx_ir or proto) over the calibration set ``static`` (``StaticOptions``)
    describes: (the range of each of its float tensors by name, the calibration's description for
    the report). ``feeds``: the calibration rows, if already chosen (``split_calibration_data``),
    else drawn or read here."""
    from gencompress.runtime_check.calibration import calibration_inputs, collect_stats, float_tensors

    calib, data = static.calib, static.calib_data
    if feeds is None:
        feeds = calibration_inputs(model, size=static.calib_size, seed=static.seed, data=data)
    n = len(next(iter(feeds.values())))
    log(f"calibrating on {n} {'samples from ' + str(data) if data else 'seeded latent draws'} ({calib})")
    names = float_tensors(model)
    stats = collect_stats(model, names, feeds, histogram=calib != "minmax")
    symmetric = static.activations == "int8"
    ranges = {name: stats[name].range(calib, symmetric=symmetric, percentile=static.percentile) for name in names}
    calibration = {"method": calib, "samples": n, "source": str(data) if data else "latent prior (seeded)", "seed": None if data else static.seed}
    if calib == "percentile":
        calibration["percentile"] = static.percentile
    return ranges, calibration


def static_quantizer(prepared, static, *, log, exclude=(), feeds=None, before_rewrites=None, calibrated=None) -> Quantizer:
    """``prepared``: the onnx_ir model (or proto); ``static``: ``StaticOptions``; ``feeds``: as in
    ``calibrated_ranges``. ``before_rewrites``: the onnx_ir model ``prepared`` was rewritten from by
    the int8 rewrites, calibrated in its place (the rewrites' tensors get their ranges by
    ``carry_ranges``): onnxruntime runs a ConvTranspose, pre-packed, faster than the sub-pixel Conv
    replacing it, and a speed plan calibrates once for all its configurations. ``calibrated``:
    ``calibrated_ranges`` of that model, if already run, or a function returning them (called
    only once the model is known to have layers to quantize and ``exclude`` names known ones:
    quantize's cached calibration, ``_Run.ranges``)."""
    import onnx_ir as ir

    from gencompress.passes.carry_ranges import carry_ranges
    from gencompress.passes.insert_qdq import InsertQDQPass, find_layers, select_layers
    from gencompress.runtime_check.calibration import calibrate_ranges
    from gencompress.runtime_check.saturation import input_moments

    if isinstance(prepared, onnx.ModelProto):
        prepared = ir.serde.deserialize_model(prepared)
    layers = find_layers(prepared.graph)
    if not layers:
        from gencompress.passes.weights import no_float_weights_reason

        raise GencompressError(f"nothing to quantize: {no_float_weights_reason(prepared.graph)}")
    select_layers(layers, exclude)  # unknown names fail before the calibration run
    if calibrated is None:
        calibrated = calibrated_ranges(before_rewrites or prepared, static, log=log, feeds=feeds)
    elif callable(calibrated):
        calibrated = calibrated()
    found, calibration = calibrated
    if before_rewrites is not None:
        found = {**found, **carry_ranges(prepared.graph, before_rewrites.graph, found)}
    ranges = tuple((name, lo, hi) for name, (lo, hi) in found.items())
    fields = {**static.static_fields(), "calib_data": str(static.calib_data) if static.calib_data else None}

    def make_pass(exclude, include):
        # the calibration settings too: a range the run above lacks (a tensor shape inference
        # could not type) is then calibrated the way the user asked, not with the pass defaults
        return InsertQDQPass(InsertQDQPass.Options(**fields, exclude=exclude, include=include, ranges=ranges), calibrate=calibrate_ranges, moments=input_moments)

    return Quantizer(prepared, make_pass, [_layer_info(layer) for layer in layers], calibration)


def weight_only_quantizer(prepared, *, bits: int, block_size: int) -> Quantizer:
    import onnx_ir as ir

    from gencompress.passes.weight_only_quantize import WeightOnlyQuantizePass, weight_layers

    if isinstance(prepared, onnx.ModelProto):
        prepared = ir.serde.deserialize_model(prepared)
    layers = weight_layers(prepared.graph)
    if not layers:
        from gencompress.passes.weights import no_float_weights_reason

        raise GencompressError(f"nothing to quantize: {no_float_weights_reason(prepared.graph)}")

    def make_pass(exclude, include):
        return WeightOnlyQuantizePass(WeightOnlyQuantizePass.Options(bits=bits, block_size=block_size, exclude=exclude, include=include))

    return Quantizer(prepared, make_pass, [_layer_info(layer) for layer in layers])


def _layer_info(layer) -> dict:
    return {"node": layer.name, "op_type": layer.op_type, "weights": [w.name for w in layer.weights]}


# ---- the API ----------------------------------------------------------------------------------


def validate_options(
    *, mode, bits, calib, calib_size, activations, percentile, block_size, target_psnr, eval_size, seed=0,
    calib_data=None, per_tensor=False, percentile_given=False, int8_kernels="portable",
) -> None:
    from gencompress.runtime_check.calibration import METHODS
    from gencompress.passes.insert_qdq import ACTIVATION_TYPES, INT8_KERNELS

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
    if int8_kernels not in INT8_KERNELS:
        raise GencompressError(f"--int8-kernels {int8_kernels!r}: choose one of {', '.join(INT8_KERNELS)}")
    if not 50.0 < percentile <= 100.0:
        raise GencompressError(f"--percentile {percentile}: must be in (50, 100]")
    if block_size < 16 or block_size & (block_size - 1):
        raise GencompressError(f"--block-size {block_size}: must be a power of two, 16 or more")
    if target_psnr is not None:
        target_psnr_value(target_psnr)
    if target_psnr is not None and mode == "fp16":
        raise GencompressError("--target-psnr works with --mode static or weight-only")
    if eval_size is not None and eval_size <= 0:  # None: the model's default set (fidelity.default_samples)
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


def check_float_model(proto, path, model=None) -> None:
    """Refuse a model already quantized or converted (float16 weights); ``model``: ``proto``
    deserialized (onnx_ir), when the caller has made it (not deserialized again here)."""
    nodes = list(proto.graph.node if isinstance(proto, onnx.ModelProto) else proto.graph)
    ops = {n.op_type for n in nodes}
    if isinstance(proto, onnx.ModelProto):
        int_inits = {i.name for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
        if any(n.op_type == "Cast" and n.input and n.input[0] in int_inits for n in nodes):
            ops.add("DequantizeLinear")  # int8 weights behind Cast * scale (passes/fold_weights.py)
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}:
        raise GencompressError(f"{path}: the model is already quantized; give the float model")
    _refuse_converted_weights(proto if model is None else model, path)


def _refuse_converted_weights(proto, path) -> None:
    """A model whose layer weights are all float16 (bfloat16, double) is refused with that reason
    before any work: int8 and weight-only quantization read float32 weights (they would find
    "nothing to quantize", and calibration would feed float32 to float16 inputs), and fp16 has
    nothing left to convert."""
    import onnx_ir as ir

    from gencompress.passes.weights import find_weights, no_float_weights_reason

    graph = (ir.serde.deserialize_model(proto) if isinstance(proto, onnx.ModelProto) else proto).graph
    dtypes = {use.value.dtype for use in find_weights(graph)}
    if dtypes and ir.DataType.FLOAT not in dtypes:
        raise GencompressError(f"{path}: {no_float_weights_reason(graph)}")


def own_tensors(model) -> None:
    """Give the weights still read from the loaded proto arrays of their own. Any one of them
    keeps the whole proto alive, and with it the old copy of every weight the rewrites replaced."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.serde.TensorProtoTensor):
            value.const_value = ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)
