"""The page's form of a shipped model: the same quantized computation, laid out for onnxruntime-web's wasm kernels.

Measured in the page (``benchmarks/ship.py --forms``, onnxruntime-web's own profiler): at batch 1 a
Gemm or MatMul on int8 weights is a matrix-vector product, and onnxruntime-web's wasm int8 kernel for
it (QGemm / MatMulIntegerToFloat after the QDQ fusion) is about 3x slower than its float kernel (zoo
dcgan's 100x2048 latent projection: 65-79 us against 19-34 us, profiled), while its int8 Conv
(QLinearConv) beats the float Conv. So in the page's copy of the model the weight DequantizeLinear
of each Gemm/MatMul becomes ``Cast -> Mul`` by the same scales: onnxruntime-web folds it into float
weights when it loads the model (the file keeps its int8 weights), the QDQ fusion no longer applies,
and the product runs in float on the same dequantized values. The activations' Quantize/Dequantize
pairs stay, so the page computes what onnxruntime's exact reference (DQ -> float) computes; the bundle
checks the form against model.onnx on the test vectors before shipping it (``edge.bundle``).

Weights with one zero point for the whole tensor are rewritten (0 for DESIGN's int8 weights; 128 where
the portable int8 stores uint8); per-channel zero points and blocked (int4) weights are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MATRIX_OPS = ("Gemm", "MatMul")


def web_form(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with the weight DequantizeLinear of its Gemm/MatMul nodes as Cast -> Mul;
    returns it and the names of the DequantizeLinear nodes rewritten (empty: the copy is unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rewritten = []
    for node in list(graph.node):
        if node.op_type not in MATRIX_OPS or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or not _weight_dq(dq, inits, producer) or any(c.op_type not in MATRIX_OPS for c in consumers[dq.output[0]]):
            continue
        _replace(graph, dq, inits, _zero_point(dq, inits, producer))
        rewritten.append(dq.name or dq.output[0])
    if rewritten:
        _drop_unused(graph)
    return out, rewritten


def _weight_dq(dq, inits: dict, producer: dict) -> bool:
    """A DequantizeLinear of a constant 8-bit tensor with one zero point for all of it: DQ(x) == (Cast(x) - zp) * scale."""
    if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or dq.input[0] not in inits:
        return False
    if any(a.name == "block_size" and a.i for a in dq.attribute):
        return False
    if inits[dq.input[0]].data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return False
    scale = _constant_root(dq.input[1], inits, producer)
    if scale is None or inits[scale].data_type != onnx.TensorProto.FLOAT:  # Cast -> float: a float16 scale would not multiply
        return False
    return _zero_point(dq, inits, producer) is not None


def _constant_root(name: str, inits: dict, producer: dict) -> str | None:
    """The initializer ``name`` is, or is broadcast/reshaped from; None if it is computed otherwise."""
    while name and name not in inits and name in producer and producer[name].op_type in ("Expand", "Reshape", "Unsqueeze", "Identity"):
        name = producer[name].input[0]
    return name if name in inits else None


def _zero_point(dq, inits: dict, producer: dict) -> float | None:
    """The zero point as one number (0 when absent), or None when it is not one constant value."""
    if len(dq.input) < 3 or not dq.input[2]:
        return 0.0
    zp = _constant_root(dq.input[2], inits, producer)  # a constant broadcast to the scale's shape: the same value
    if zp is None:
        return None
    values = numpy_helper.to_array(inits[zp])
    return float(values.flat[0]) if values.size and (values == values.flat[0]).all() else None


def _drop_unused(graph) -> None:
    """Nodes and initializers nothing reads any more (what fed the rewritten zero points)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def _replace(graph, dq, inits: dict, zero_point: float) -> None:
    """DQ(x, scale, zp, axis) -> Mul(Cast(x) [- zp], scale reshaped to broadcast along ``axis``), in DQ's place."""
    rank = len(inits[dq.input[0]].dims)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    axis = axis + rank if axis < 0 else axis
    base = dq.name or dq.output[0]
    nodes = [helper.make_node("Cast", [dq.input[0]], [f"{base}.web_cast"], to=onnx.TensorProto.FLOAT, name=f"{base}.web_cast")]
    values = f"{base}.web_cast"
    if zero_point:
        graph.initializer.append(numpy_helper.from_array(np.float32(zero_point), f"{base}.web_zero_point"))
        nodes.append(helper.make_node("Sub", [values, f"{base}.web_zero_point"], [f"{base}.web_centered"], name=f"{base}.web_centered"))
        values = f"{base}.web_centered"
    scale = dq.input[1]
    if axis != rank - 1:  # a per-channel scale [C] broadcasts along the last axis only: give it its axis
        shape = [1] * rank
        shape[axis] = -1
        graph.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), f"{base}.web_scale_shape"))
        nodes.append(helper.make_node("Reshape", [scale, f"{base}.web_scale_shape"], [f"{base}.web_scale"], name=f"{base}.web_scale"))
        scale = f"{base}.web_scale"
    nodes.append(helper.make_node("Mul", [values, scale], [dq.output[0]], name=f"{base}.web_mul"))
    at = list(graph.node).index(dq)
    graph.node.remove(dq)
    for offset, n in enumerate(nodes):
        graph.node.insert(at + offset, n)
