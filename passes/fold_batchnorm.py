"""Fold inference-mode BatchNormalization, and Mul by a constant, into the Conv / ConvTranspose /
Gemm / MatMul before it.

``BN(y) = a * (y - mean) + beta`` with ``a = scale / sqrt(var + eps)`` per channel (axis 1). When
``y`` is a layer's output, scaling the layer's output channels by ``a`` and setting its bias to
``a * (bias - mean) + beta`` gives the same result with one node fewer, and a quantizer then sees
``Conv -> Relu`` (which it fuses) instead of ``Conv -> BatchNormalization -> Relu``. The dynamo
exporter already folds many of these; the TorchScript (legacy) exporter does not.
A Mul of the layer's output by a constant that is a scalar or one value per output channel (e.g.
a residual branch scaled by 0.2 in super-resolution nets) is the same fold with ``b = 0``:
onnxruntime fuses it into a float Conv at load, but not into an int8 one, where it would cost a
QLinearMul (or a dequantize/quantize pair) per layer.

Producers handled (weight and bias constant; weight channels along the layer's output axis):
- Conv ``W [C_out, C_in/g, ...]``: axis 0;
- ConvTranspose ``W [C_in, C_out/g, ...]``: axis 1, per group;
- Gemm (2-D output, constant B and C; alpha/beta folded): B's output axis (``transB``);
- MatMul with a constant 2-D B and a 2-D input: becomes Gemm with the folded bias.

Folded only when the layer's output has no other consumer and is not a graph output, the BN is
in inference mode with only its first output used, and its four parameters are constants.
New weights are new initializers (a weight shared with another node is never changed in place);
old initializers nothing reads any more are dropped, Constant/Identity nodes that fed them are
left for cleanup. Parameters are combined in float64 and cast back.

Guarantees: graph inputs and outputs unchanged; outputs equal the original up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import (
    Namer,
    ShapeLookup,
    add_initializer,
    const_array,
    count_by,
    drop_if_unused,
    is_onnx_domain,
    new_node,
    only_consumer,
    replace_with,
    take_over_metadata,
)

FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _scaled(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``w * factor`` computed in float64, stored in ``w``'s type: the same numbers without a
    float64 copy of a large weight (numpy casts through its small ufunc buffers; 3x faster than
    chunked float64 products on a 33M-value weight)."""
    shape = (1,) * (w.ndim - np.ndim(factor)) + np.shape(factor)
    out = np.empty(np.broadcast_shapes(w.shape, shape), dtype=w.dtype)
    np.multiply(w, np.reshape(factor, shape), out=out, dtype=np.float64, casting="unsafe")
    return out


class _Skip(Exception):
    pass


@register("fold_batchnorm")
class FoldBatchNormPass(GencompressPass):
    """Fold BatchNormalization (inference mode) and per-channel constant Mul into the preceding Conv/ConvTranspose/Gemm/MatMul."""

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        namer = Namer(graph)
        shapes = ShapeLookup(model)
        folded, left = [], []
        for bn in [n for n in graph if is_onnx_domain(n) and n.op_type in ("BatchNormalization", "Mul")]:
            y = self._mul_operands(bn)[0] if bn.op_type == "Mul" else bn.inputs[0]
            layer = y.producer() if y is not None else None
            if layer is None or not is_onnx_domain(layer) or layer.op_type not in FOLDABLE:
                continue  # nothing to fold into: not reported
            bn_name = bn.name or bn.outputs[0].name
            layer_name = layer.name or layer.outputs[0].name
            try:
                params = self._mul_params(shapes, layer, bn) if bn.op_type == "Mul" else self._bn_params(bn)
                if only_consumer(y) is not bn or len(layer.outputs) != 1:
                    raise _Skip(f"the {layer.op_type} output has other consumers")
                old_params = [*layer.inputs[1:], *bn.inputs[1:]]
                fold = getattr(self, f"_fold_{layer.op_type.lower()}")
                fold(graph, namer, shapes, layer, bn, *params)
                drop_if_unused(graph, old_params)
                folded.append({"node": bn_name, "op_type": bn.op_type, "into": layer_name, "op": layer.op_type})
            except _Skip as e:
                left.append({"node": bn_name, "op_type": bn.op_type, "into": layer_name, "reason": str(e)})
        self.report = {"folded": folded, "left_alone": left, "into": count_by(f["op"] for f in folded)}
        return ir.passes.PassResult(model, bool(folded))

    # ---- BatchNormalization -> per-channel (a, b) ----------------------------------------

    @staticmethod
    def _bn_params(bn: ir.Node) -> tuple[np.ndarray, np.ndarray]:
        if bn.attributes.get_int("training_mode", 0) != 0:
            raise _Skip("training_mode BatchNormalization")
        if bn.attributes.get_int("spatial", 1) != 1:
            raise _Skip("BatchNormalization with spatial=0")
        if any(v is not None and (v.uses() or v.is_graph_output()) for v in bn.outputs[1:]):
            raise _Skip("BatchNormalization running-stat outputs are used")
        if len(bn.inputs) != 5:
            raise _Skip("BatchNormalization without its four parameters")
        arrays = [const_array(v) for v in bn.inputs[1:]]
        if any(a is None for a in arrays):
            raise _Skip("BatchNormalization parameters are not constants")
        scale, beta, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in arrays)
        if not len(scale) == len(beta) == len(mean) == len(var):
            raise _Skip("BatchNormalization parameter sizes differ")
        eps = bn.attributes.get_float("epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)
        return a, beta - mean * a  # BN(y) = a * y + b

    # ---- Mul by a constant -> per-channel (a, 0) ------------------------------------------

    @staticmethod
    def _mul_operands(mul: ir.Node) -> tuple[ir.Value | None, np.ndarray | None]:
        """(the layer output, the constant) of a Mul with one constant operand, else (None, None)."""
        if len(mul.inputs) != 2 or any(v is None for v in mul.inputs):
            return None, None
        for i in (0, 1):
            c = const_array(mul.inputs[1 - i])
            if c is not None and const_array(mul.inputs[i]) is None:
                return mul.inputs[i], c
        return None, None

    def _mul_params(self, shapes, layer: ir.Node, mul: ir.Node) -> tuple[np.ndarray, np.ndarray]:
        c = self._mul_operands(mul)[1]
        if c.dtype not in FLOAT_DTYPES:
            raise _Skip(f"Mul constant dtype {c.dtype} is not float")
        if c.size == 1:
            if c.ndim > len(shapes.dims(mul.outputs[0]) or ()) and c.ndim > 0:
                raise _Skip("the scalar Mul broadcasts to a higher rank")
            a = np.asarray(c, np.float64).reshape(1)
        else:
            rank = self._output_rank(shapes, layer, mul)
            dims = (1,) * ((rank or 0) - c.ndim) + c.shape
            if rank is None or c.ndim > rank or len(dims) < 2 or any(d != 1 for i, d in enumerate(dims) if i != 1):
                raise _Skip(f"Mul constant of shape {list(c.shape)} is not one value per output channel")
            a = np.asarray(c, np.float64).reshape(-1)
        return a, np.zeros_like(a)

    # ---- per producer -----------------------------------------------------------------------

    @staticmethod
    def _weight(layer: ir.Node, index: int) -> np.ndarray:
        value = layer.inputs[index] if len(layer.inputs) > index else None
        w = const_array(value)
        if w is None:
            raise _Skip(f"{layer.op_type} input {index} is not a constant")
        if w.dtype not in FLOAT_DTYPES:
            raise _Skip(f"{layer.op_type} weight dtype {w.dtype} is not float")
        return w

    def _bias(self, layer: ir.Node, index: int, channels: int) -> np.ndarray:
        if len(layer.inputs) > index and layer.inputs[index] is not None:
            return np.broadcast_to(np.asarray(self._weight(layer, index), np.float64), (channels,)).copy()
        return np.zeros(channels, np.float64)

    def _finish(self, graph, namer, layer, bn, inputs: list) -> None:
        """Give ``layer`` its new inputs and let its output take the BN output's place."""
        for i, value in enumerate(inputs):
            if i < len(layer.inputs):
                layer.replace_input_with(i, value)
            else:
                layer.resize_inputs(i + 1)
                layer.replace_input_with(i, value)
        out, bn_out = layer.outputs[0], bn.outputs[0]
        name = bn_out.name
        bn_out.name = None
        out.shape = bn_out.shape if bn_out.shape is not None else out.shape
        out.type = bn_out.type if bn_out.type is not None else out.type
        ir.convenience.replace_all_uses_with(bn_out, out, replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        out.name = name
        take_over_metadata(bn_out, out)

    def _check(self, a: np.ndarray, b: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) with one value per channel (a scalar Mul's are broadcast)."""
        if a.shape[0] == 1 and b.shape[0] == 1:
            return np.full(channels, a[0]), np.full(channels, b[0])
        if a.shape[0] != channels:
            raise _Skip(f"the scale has {a.shape[0]} channels, the layer {channels}")
        return a, b

    def _fold_conv(self, graph, namer, shapes, layer, bn, a, b):
        w = self._weight(layer, 1)
        a, b = self._check(a, b, w.shape[0])
        bias = self._bias(layer, 2, w.shape[0])
        new_w = _scaled(w, a.reshape(-1, *[1] * (w.ndim - 1)))
        new_b = (bias * a + b).astype(w.dtype)
        base = layer.name or "Conv"
        self._finish(graph, namer, layer, bn, [
            layer.inputs[0],
            add_initializer(graph, namer, f"{base}.folded_weight", new_w),
            add_initializer(graph, namer, f"{base}.folded_bias", new_b),
        ])

    def _fold_convtranspose(self, graph, namer, shapes, layer, bn, a, b):
        w = self._weight(layer, 1)
        group = layer.attributes.get_int("group", 1)
        c_in, c_out_g = w.shape[0], w.shape[1]
        if group < 1 or c_in % group:
            raise _Skip("ConvTranspose group does not divide C_in")
        a, b = self._check(a, b, c_out_g * group)
        bias = self._bias(layer, 2, c_out_g * group)
        # output channel of W[ci, j] is (ci // (C_in/g)) * C_out/g + j
        factor = a.reshape(group, 1, c_out_g, *[1] * (w.ndim - 2))
        new_w = _scaled(w.reshape(group, c_in // group, *w.shape[1:]), factor).reshape(w.shape)
        new_b = (bias * a + b).astype(w.dtype)
        base = layer.name or "ConvTranspose"
        self._finish(graph, namer, layer, bn, [
            layer.inputs[0],
            add_initializer(graph, namer, f"{base}.folded_weight", new_w),
            add_initializer(graph, namer, f"{base}.folded_bias", new_b),
        ])

    def _output_rank(self, shapes, layer, bn) -> int | None:
        for value in (bn.outputs[0], layer.outputs[0], layer.inputs[0]):
            dims = shapes.dims(value)
            if dims is not None:
                return len(dims)
        return None

    def _fold_gemm(self, graph, namer, shapes, layer, bn, a, b):
        w = self._weight(layer, 1)
        if w.ndim != 2:
            raise _Skip("Gemm B is not 2-D")
        trans_b = layer.attributes.get_int("transB", 0)
        n = w.shape[0] if trans_b else w.shape[1]
        a, b = self._check(a, b, n)
        alpha = layer.attributes.get_float("alpha", 1.0)
        beta = layer.attributes.get_float("beta", 1.0)
        c = np.zeros(n, np.float64)
        if len(layer.inputs) > 2 and layer.inputs[2] is not None:
            raw = np.asarray(self._weight(layer, 2), np.float64)
            if raw.ndim == 2:
                if raw.shape[0] != 1:
                    raise _Skip("Gemm C varies along the batch axis")
                raw = raw[0]
            c = np.broadcast_to(raw, (n,)).copy()
        scale = (a * alpha).reshape((-1, 1) if trans_b else (1, -1))
        new_w = _scaled(w, scale)
        new_c = (beta * c * a + b).astype(w.dtype)
        base = layer.name or "Gemm"
        layer.attributes.pop("alpha", None)
        layer.attributes.pop("beta", None)
        self._finish(graph, namer, layer, bn, [
            layer.inputs[0],
            add_initializer(graph, namer, f"{base}.folded_weight", new_w),
            add_initializer(graph, namer, f"{base}.folded_bias", new_c),
        ])

    def _fold_matmul(self, graph, namer, shapes, layer, bn, a, b):
        w = self._weight(layer, 1)
        if w.ndim != 2:
            raise _Skip("MatMul B is not 2-D")
        if self._output_rank(shapes, layer, bn) != 2:
            raise _Skip("MatMul output rank is not statically 2")
        x_dims = shapes.dims(layer.inputs[0])
        if x_dims is None or len(x_dims) != 2:
            raise _Skip("MatMul input rank is not statically 2")
        a, b = self._check(a, b, w.shape[1])
        new_w = _scaled(w, a.reshape(1, -1))
        new_c = b.astype(w.dtype)
        base = layer.name or "MatMul"
        gemm = new_node(namer, base, "Gemm", [
            layer.inputs[0],
            add_initializer(graph, namer, f"{base}.folded_weight", new_w),
            add_initializer(graph, namer, f"{base}.folded_bias", new_c),
        ])
        replace_with(graph, [layer, bn], [gemm], bn.outputs[0], gemm.outputs[0])
        gemm.name = layer.name or gemm.name
