"""Int8 weights of float-computing layers as ``Cast(q) * scale``, a constant subgraph onnxruntime
folds into a float initializer at load, instead of a DequantizeLinear it runs on every call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register



def _reads_quantized_activation(node: ir.Node) -> bool:
    """An op onnxruntime fuses into an int8 kernel: one of its inputs is a dequantized activation."""
    for v in node.inputs:
        p = v.producer() if v is not None else None
        if p is not None and p.op_type == "DequantizeLinear" and p.inputs[0].const_value is None:
            return True
    return False


def cast_mul_weights(model: ir.Model, int8_nodes=None) -> int:
    """Replace each DequantizeLinear of a constant int8 weight (zero point 0, no block_size) whose
    readers all compute in float (not in ``int8_nodes``, names; None: not reading a dequantized
    activation) by ``Cast(q) * Reshape(scale)``: the same values, a constant subgraph onnxruntime
    folds into a float initializer at load. Returns how many were replaced."""
    graph = model.graph
    count = 0
    if int8_nodes is None:
        int8_nodes = frozenset(n.name for n in graph if _reads_quantized_activation(n))
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        q = node.inputs[0]
        if q is None or q.const_value is None or q.is_graph_input() or q.dtype not in (ir.DataType.INT8, ir.DataType.UINT8):
            continue
        if node.attributes.get_int("block_size", 0):
            continue
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            zp = node.inputs[2].const_value
            if zp is None or np.any(zp.numpy() != 0):
                continue
        out = node.outputs[0]
        if not out.uses() or any(u.node.name in int8_nodes for u in out.uses()) or out in graph.outputs:
            continue
        rank = len(q.const_value.shape)
        scale = node.inputs[1]
        base = q.name
        cast = ir.node("Cast", [q], {"to": ir.DataType.FLOAT}, name=f"{base}_to_float",
                       outputs=[ir.Value(name=f"{base}_as_float", type=ir.TensorType(ir.DataType.FLOAT), shape=q.shape)])
        new = [cast]
        if rank > 1 and scale.shape is not None and len(scale.shape) == 1:
            axis = node.attributes.get_int("axis", 1) % rank
            dims = [1] * rank
            dims[axis] = -1
            shape = ir.Value(name=f"{base}_scale_shape", const_value=ir.tensor(np.array(dims, dtype=np.int64), name=f"{base}_scale_shape"),
                             type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([rank]))
            graph.register_initializer(shape)
            reshape = ir.node("Reshape", [scale, shape], name=f"{base}_scale_reshape",
                              outputs=[ir.Value(name=f"{base}_scale_bcast", type=ir.TensorType(ir.DataType.FLOAT))])
            new.append(reshape)
            scale = reshape.outputs[0]
        mul = ir.node("Mul", [cast.outputs[0], scale], name=f"{base}_dequantize",
                      outputs=[ir.Value(name=f"{base}_folded", type=ir.TensorType(ir.DataType.FLOAT), shape=out.shape)])
        new.append(mul)
        graph.insert_before(node, new)
        out.replace_all_uses_with(mul.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


@register("fold_weights")
class FoldWeightsPass(GencompressPass):
    """Int8 weights of float-computing layers as ``Cast(q) * scale`` (``cast_mul_weights``), which
    onnxruntime folds at load, instead of a DequantizeLinear it runs on every call. Put it after
    ``weight_only_quantize`` (8 bits; int4 blocks stay DequantizeLinear)."""

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = cast_mul_weights(model)
        self.report = {"folded_weights": count}
        return ir.passes.PassResult(model, bool(count))
