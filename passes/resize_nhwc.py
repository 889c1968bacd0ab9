"""Nearest Resize by whole factors before a Conv -> the same upsampling spelled channels-last.

onnxruntime runs an int8 Conv channels-last and moves the Transpose in front of it up through a
Resize, so a nearest upsampling between two int8 Convs runs as a channels-last uint8 Resize —
its slow path: x2 on [64, 16, 16, 128] took 16 ms there against 1.4 ms channels-first, and the
two Resizes of the Upsample GAN family were 37% of its int8 kernel time at batch 64, in
onnxruntime's own quantize_static output as in ours.

This pass writes ``Transpose(0,2,3,1) -> Reshape [N,H,1,W,1,C] -> Expand [1,1,fh,1,fw,1] ->
Reshape [N,H*fh,W*fw,C] -> Transpose(0,3,1,2)``: each output pixel copies a whole C-channel row
(1.6 ms on the same tensor), and the Transposes cancel against onnxruntime's around the int8
Convs. Exact: the same elements in the same places.

Rewritten: Resize in nearest mode, input [N, C, H, W] with static C, H, W, constant scales (or
sizes) of whole factors on H and W only, a coordinate transform whose nearest pixel is
``floor(y / f)`` for every output row and column (checked by computing it: asymmetric + floor,
half_pixel + round_prefer_floor, ...), read only by Convs, reading the output of an op
onnxruntime runs in int8 (``after_int8_op``). In a float graph the Transposes cost
time, so ``speed_plan`` rewrites only the Resizes before Convs that compute in int8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, ShapeLookup, add_initializer, const_array, new_node


def _source_pixels(out_len: int, in_len: int, transform: str, nearest: str) -> list[int] | None:
    """The input index each output index reads (ONNX Resize, nearest mode), or None if unknown."""
    scale = out_len / in_len
    out = []
    for y in range(out_len):
        if transform in ("half_pixel", "pytorch_half_pixel"):
            x = (y + 0.5) / scale - 0.5 if (transform == "half_pixel" or out_len > 1) else 0.0
        elif transform == "asymmetric":
            x = y / scale
        elif transform == "align_corners":
            x = y * (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
        elif transform == "tf_half_pixel_for_nn":
            x = (y + 0.5) / scale
        else:
            return None
        rounding = {"round_prefer_floor": lambda v: math.ceil(v - 0.5), "round_prefer_ceil": lambda v: math.floor(v + 0.5),
                    "floor": math.floor, "ceil": math.ceil}.get(nearest)
        if rounding is None:
            return None
        out.append(min(max(rounding(x), 0), in_len - 1))
    return out


def upsample_factors(node: ir.Node, shapes: ShapeLookup | None = None) -> tuple[int, int, int, int, int] | None:
    """(C, H, W, fh, fw) when ``node`` is a nearest Resize that repeats each pixel fh x fw times.
    ``shapes``: where the input's shape comes from when the graph does not record it (shape
    inference; e.g. the TorchScript exporter's graphs)."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
        return None
    a = node.attributes
    if a.get_string("mode", "nearest") != "nearest" or a.get("axes") is not None:
        return None
    x = node.inputs[0]
    if x is None:
        return None
    dims = list(shapes.dims(x) or ()) if shapes is not None else list(x.shape.dims) if x.shape is not None else []
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):  # N may be symbolic
        return None
    _, c, h, w = dims
    scales = const_array(node.inputs[2]) if node.inputs[2] is not None else None
    sizes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    if scales is not None and scales.size == 4:
        out = [d * float(s) for d, s in zip((1, c, h, w), scales.reshape(-1))]
        if list(scales.reshape(-1)[:2]) != [1, 1]:
            return None
    elif sizes is not None and sizes.size == 4:
        out = [float(v) for v in sizes.reshape(-1)]
        if out[1] != c or out[0] != dims[0]:  # sizes fix the batch too: only a static, equal one is left as it is
            return None
    else:
        return None
    fh, fw = out[2] / h, out[3] / w
    if fh != int(fh) or fw != int(fw) or fh < 1 or fw < 1 or (fh, fw) == (1, 1):
        return None
    fh, fw = int(fh), int(fw)
    transform = a.get_string("coordinate_transformation_mode", "half_pixel")
    nearest = a.get_string("nearest_mode", "round_prefer_floor")
    for n, f in ((h, fh), (w, fw)):
        if _source_pixels(n * f, n, transform, nearest) != [y // f for y in range(n * f)]:
            return None
    return c, h, w, fh, fw


def read_only_by_convs(graph: ir.Graph, value: ir.Value) -> bool:
    uses = list(value.uses())
    return bool(uses) and value not in graph.outputs and all(
        u.node.op_type == "Conv" and u.node.domain in ("", "ai.onnx") and u.idx == 0 for u in uses)


def after_int8_op(value: ir.Value, depth: int = 0) -> bool:
    """``value`` comes from int8 layers onnxruntime runs channels-last: a Conv/Gemm/MatMul, through
    data-movement ops and LeakyRelu, or an Add/Mul/Concat all of whose inputs do. After a float op
    (an InstanceNormalization, also through a residual Add) onnxruntime leaves the Resize
    channels-first, its fast path, and the rewrite would only add a Transpose (style-transfer
    family: 0.97x onnxruntime's quantize_static at batch 64 with its Resize after such an Add
    rewritten)."""
    from gencompress.passes.insert_qdq import BINARY_OPS, INT8_OPS, TRANSPARENT_OPS, UNARY_INT8_OPS, VARIADIC_INT8_OPS

    producer = value.producer() if value is not None else None
    if producer is None or depth > 32:
        return False
    if producer.op_type in INT8_OPS:
        return True
    if producer.op_type in (*TRANSPARENT_OPS, *UNARY_INT8_OPS):
        return bool(producer.inputs) and after_int8_op(producer.inputs[0], depth + 1)
    if producer.op_type in (*BINARY_OPS, *VARIADIC_INT8_OPS):
        data = [v for v in producer.inputs if v is not None and v.const_value is None]
        return bool(data) and all(after_int8_op(v, depth + 1) for v in data)
    return False


def upsamplers(model: ir.Model, shapes: ShapeLookup | None = None) -> dict[str, list[ir.Node]]:
    """{name of each Resize this pass rewrites: the Convs reading it}."""
    graph, shapes = model.graph, shapes or ShapeLookup(model)
    return {n.name: [u.node for u in n.outputs[0].uses()] for n in graph
            if upsample_factors(n, shapes) is not None and read_only_by_convs(graph, n.outputs[0]) and after_int8_op(n.inputs[0])}


@register("resize_nhwc")
class ResizeNHWCPass(GencompressPass):
    """See the module docstring. Graph inputs and outputs unchanged; outputs exactly equal."""

    @dataclass(frozen=True)
    class Options:
        exclude: tuple[str, ...] = ()  # Convs that compute in float (node name, op type or weight name, as --exclude)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        namer = Namer(graph)
        done = []
        patterns = set(self.options.exclude)

        def excluded(conv: ir.Node) -> bool:
            return bool(patterns & {conv.name, conv.op_type, *(v.name for v in conv.inputs[1:] if v is not None)})

        shapes = ShapeLookup(model)
        chosen = {name for name, convs in upsamplers(model, shapes).items() if not any(map(excluded, convs))}
        for resize in [n for n in graph if n.name in chosen]:
            c, h, w, fh, fw = upsample_factors(resize, shapes)
            x, y = resize.inputs[0], resize.outputs[0]
            base = f"{resize.name or 'Resize'}_nhwc"

            def shape(suffix, dims):
                return add_initializer(graph, namer, f"{base}_{suffix}", np.array(dims, np.int64))

            nodes = [new_node(namer, base, "Transpose", [x], {"perm": [0, 2, 3, 1]})]
            nodes.append(new_node(namer, base, "Reshape", [nodes[-1].outputs[0], shape("rows", [0, h, 1, w, 1, c])]))
            nodes.append(new_node(namer, base, "Expand", [nodes[-1].outputs[0], shape("repeat", [1, 1, fh, 1, fw, 1])]))
            nodes.append(new_node(namer, base, "Reshape", [nodes[-1].outputs[0], shape("image", [0, h * fh, w * fw, c])]))
            back = new_node(namer, base, "Transpose", [nodes[-1].outputs[0]], {"perm": [0, 3, 1, 2]})
            back.outputs[0].type, back.outputs[0].shape = y.type, y.shape
            nodes.append(back)
            graph.insert_before(resize, nodes)
            y.replace_all_uses_with(back.outputs[0])
            graph.remove(resize, safe=True)
            done.append(resize.name)
        self.report = {"rewritten": done}
        return ir.passes.PassResult(model, bool(done))
