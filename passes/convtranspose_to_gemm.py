"""ConvTranspose on a 1x1 input (the latent projection) -> Flatten + Gemm + Reshape, exact in float.

With one input pixel, a transposed convolution is a matrix product: output ``[C_out, *O]`` at
position ``o`` is ``sum_ci x[ci] * W[ci, co, k]`` where ``o + pad_begin == k * dilation`` (zero
plus bias where no tap lands; strides do not matter). So ``[N, C_in, 1, 1]`` ->
``Flatten(axis=1)`` -> ``Gemm(B = [C_in, C_out*prod(O)], C = bias repeated)`` ->
``Reshape([0, C_out, *O])``: the batch axis stays dynamic (Reshape's 0 copies it). Groups
give a block-diagonal B. onnxruntime runs an int8 Gemm; it has no int8 ConvTranspose.

An elementwise activation that alone consumes the ConvTranspose moves before the Reshape
(``Gemm -> Relu -> Reshape``), next to the Gemm.

The Gemm carries the node metadata ``gencompress.channel_block`` = prod(O) (see
``insert_qdq.CHANNEL_BLOCK_KEY``): its columns come in blocks of prod(O), one per ConvTranspose
channel, so a quantizer gives each block one scale, the one the ConvTranspose channel would have
had (and the per-column scales, zero points and int32 bias are that channel's values repeated,
which ``insert_qdq`` stores once each).

Only where every spatial size of the input is statically 1 (graph shape or shape inference).
Left alone: everything else (``convtranspose_to_conv`` handles it), and non-constant weights.

Guarantees: graph inputs and outputs unchanged; outputs equal the original up to float
summation order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.convtranspose_to_conv import ConvTransposeSpec, Skip, resolve_convtranspose
from gencompress.passes.insert_qdq import CHANNEL_BLOCK_KEY
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import (
    Namer,
    ShapeLookup,
    add_initializer,
    drop_if_unused,
    hoistable_activation,
    hoisted_copy,
    is_onnx_domain,
    new_node,
    onnx_opset,
    replace_with,
)


def projection_matrix(spec: ConvTransposeSpec) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """``B [C_in, C_out*prod(O)]``, Gemm bias ``[C_out*prod(O)]`` (or None) and the output sizes O."""
    rank = spec.rank
    out_dims = tuple(spec.out_dim(a) for a in range(rank))
    g = spec.group
    c_in_g, c_out_g = spec.c_in // g, spec.weight.shape[1]
    # per axis: output position o <- kernel index k with o + pad_begin == k * dilation
    maps = []
    for a in range(rank):
        pairs = []
        for o in range(out_dims[a]):
            u = o + spec.pads_begin[a]
            if u % spec.dilations[a] == 0 and 0 <= u // spec.dilations[a] < spec.kernel[a]:
                pairs.append((o, u // spec.dilations[a]))
        maps.append(pairs)
    b = np.zeros((g, c_in_g, g, c_out_g, *out_dims), dtype=spec.weight.dtype)
    w = spec.weight.reshape(g, c_in_g, c_out_g, *spec.kernel)
    dense = np.zeros((g, c_in_g, c_out_g, *out_dims), dtype=spec.weight.dtype)
    for combo in itertools.product(*maps):
        o = tuple(p[0] for p in combo)
        k = tuple(p[1] for p in combo)
        dense[(slice(None),) * 3 + o] = w[(slice(None),) * 3 + k]
    for gi in range(g):
        b[gi, :, gi] = dense[gi]
    matrix = b.reshape(spec.c_in, -1)
    bias = None
    if spec.bias is not None:
        bias = np.repeat(spec.bias, int(np.prod(out_dims))).astype(spec.bias.dtype)
    return matrix, bias, out_dims


@register("convtranspose_to_gemm")
class ConvTransposeToGemmPass(GencompressPass):
    """Rewrite ConvTranspose whose input is statically 1x1 as Flatten -> Gemm -> Reshape.

    Options:
        hoist_activations: move a sole elementwise activation consumer before the Reshape.
        max_weight_growth: leave alone a layer whose Gemm matrix would have more than this many
            times the ConvTranspose's weight elements (zeros from pads/dilation/groups).
    """

    @dataclass(frozen=True)
    class Options:
        hoist_activations: bool = True
        max_weight_growth: float = 4.0
        exclude: tuple[str, ...] = ()  # ConvTransposes (node names) left alone, unreported: the layers kept float

        def __post_init__(self):
            if not self.max_weight_growth >= 1:
                raise ValueError(f"max_weight_growth must be >= 1, got {self.max_weight_growth!r}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        rewritten, left = [], []
        nodes = [n for n in graph if is_onnx_domain(n) and n.op_type == "ConvTranspose" and n.name not in self.options.exclude]
        if onnx_opset(model) < 11:
            nodes = []  # Flatten/Gemm/Reshape exist earlier, but keep one opset floor for the rewrites
        shapes = ShapeLookup(model)
        namer = Namer(graph)
        for node in nodes:
            dims = shapes.dims(node.inputs[0])
            if dims is None or len(dims) < 3 or any(d != 1 for d in dims[2:]):
                continue  # not a 1x1 input: convtranspose_to_conv's job
            try:
                spec = resolve_convtranspose(node, shapes)
                rewritten.append(self._rewrite(graph, node, spec, namer))
            except Skip as e:
                left.append({"node": node.name, "reason": str(e)})
        self.report = {"rewritten": rewritten, "left_alone": left}
        return ir.passes.PassResult(model, bool(rewritten))

    def _rewrite(self, graph: ir.Graph, node: ir.Node, spec: ConvTransposeSpec, namer: Namer) -> dict:
        matrix, bias, out_dims = projection_matrix(spec)
        growth = matrix.size / spec.weight.size
        if growth > self.options.max_weight_growth:
            raise Skip(f"Gemm matrix would be {growth:.1f}x the weight (max_weight_growth {self.options.max_weight_growth:g})")
        x, y = node.inputs[0], node.outputs[0]
        base = node.name or y.name or "ConvTranspose"
        dtype = y.dtype if y.dtype is not None else x.dtype
        batch = x.shape[0] if x.shape is not None and len(x.shape) == spec.rank + 2 else None
        features = matrix.shape[1]

        flat = new_node(namer, base, "Flatten", [x], {"axis": 1}, dtype, None if batch is None else [batch, spec.c_in])
        inputs = [flat.outputs[0], add_initializer(graph, namer, f"{base}.gemm_weight", matrix)]
        if bias is not None:
            inputs.append(add_initializer(graph, namer, f"{base}.gemm_bias", bias))
        gemm = new_node(namer, base, "Gemm", inputs, None, dtype, None if batch is None else [batch, features])
        block = features // spec.c_out
        if block > 1:  # columns c*block ... c*block+block-1 are channel c: quantize them as one channel
            gemm.metadata_props[CHANNEL_BLOCK_KEY] = str(block)
        new_nodes = [flat, gemm]
        current = gemm.outputs[0]
        old_nodes, old_value = [node], y

        activation = hoistable_activation(y) if self.options.hoist_activations else None
        if activation is not None:
            act = hoisted_copy(namer, base, activation, current)
            new_nodes.append(act)
            current = act.outputs[0]
            old_nodes.append(activation)
            old_value = activation.outputs[0]

        target = add_initializer(graph, namer, f"{base}.output_shape", np.array([0, spec.c_out, *out_dims], np.int64))
        reshape = new_node(namer, base, "Reshape", [current, target], None, dtype, None if batch is None else [batch, spec.c_out, *out_dims])
        new_nodes.append(reshape)
        old_params = list(node.inputs[1:])
        replace_with(graph, old_nodes, new_nodes, old_value, reshape.outputs[0])
        drop_if_unused(graph, old_params)
        return {
            "node": node.name,
            "form": "flatten+gemm+reshape",
            "gemm": [spec.c_in, features],
            "output": [spec.c_out, *out_dims],
            "group": spec.group,
            "hoisted": activation.op_type if activation is not None else None,
        }
