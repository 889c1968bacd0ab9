"""Whether a QDQ model computes the same on every CPU: its int8 weights read against the int16
pair bound of onnxruntime's x86 kernels without VNNI (``passes/int8_saturation.py``).

A layer counts when onnxruntime runs it as an int8 kernel: a Conv, Gemm or MatMul whose input is
a DequantizeLinear of an activation and whose weight is a DequantizeLinear of a constant int8
tensor. Its weight pairs, in the kernel's K order, must keep same-sign magnitudes within 128.
"""

from __future__ import annotations

import onnx_ir as ir

from gencompress.isa import host_isa, saturates
from gencompress.passes.int8_saturation import Layout, unsafe_pairs

INT8_KERNEL_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> index of the weight input


def _dequantized(value: ir.Value | None) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def _layout(node: ir.Node) -> Layout:
    if node.op_type == "Conv":
        return Layout("Conv", group=node.attributes.get_int("group", 1))
    if node.op_type == "Gemm":
        return Layout("Gemm", trans_b=bool(node.attributes.get_int("transB", 0)))
    return Layout("MatMul")


def unsafe_layers(model: ir.Model) -> tuple[int, list[dict]]:
    """(int8 kernel layers read, those whose weights can saturate: node, op, unsafe pair count)."""
    layers, unsafe = 0, []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        index = INT8_KERNEL_OPS.get(node.op_type)
        if index is None or node.domain not in ("", "ai.onnx") or len(node.inputs) <= index:
            continue
        x, w = _dequantized(node.inputs[0]), _dequantized(node.inputs[index])
        if x is None or w is None or x.inputs[0].const_value is not None:
            continue  # not an int8 kernel: a float input, or a weight computed in float
        q = w.inputs[0].const_value
        if q is None or q.dtype != ir.DataType.INT8:
            continue
        layers += 1
        count = unsafe_pairs(q.numpy(), _layout(node))
        if count:
            unsafe.append({"node": node.name, "op_type": node.op_type, "unsafe_pairs": count})
    return layers, unsafe


def portability(model) -> dict:
    """For report.json, bench and manifests: the ISA the figures here were measured on, and the
    model's verdict: ``saturation_free`` True/False (None when no layer runs as an int8 kernel)."""
    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    layers, unsafe = unsafe_layers(model)
    isa = host_isa()
    verdict = None if not layers else not unsafe
    out = {"isa": isa, "isa_saturates_int8": saturates(isa), "int8_kernel_layers": layers, "saturation_free": verdict}
    if unsafe:
        out["unsafe_layers"] = unsafe
        out["note"] = ("int8 weight pairs that x86 CPUs without VNNI (AVX2, AVX-512BW) sum into a saturating int16: "
                       "figures measured on a VNNI CPU do not hold there (requantize with --int8-kernels portable)")
    return out
