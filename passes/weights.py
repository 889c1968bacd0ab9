"""Which initializers are layer weights, and along which axes their channels lie.

Shared by pruning and quantization so both agree on the layouts:

======================  ==========================  ===========  ===============
op                      weight layout               output axis  reduction axis
======================  ==========================  ===========  ===============
Conv                    [C_out, C_in/g, kH, kW]     0            1
ConvTranspose           [C_in, C_out/g, kH, kW]     1            0
Gemm (transB=0)         B [K, N]                    1            0
Gemm (transB=1)         B [N, K]                    0            1
MatMul                  B [..., K, N]               -1           -2
GRU / LSTM              W [dirs, G*H, in], R [...]  1            2
======================  ==========================  ===========  ===============
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "GRU", "LSTM")


@dataclass(frozen=True)
class WeightUse:
    node: ir.Node
    input_index: int  # which input of ``node`` the weight feeds
    value: ir.Value  # the initializer
    out_axis: int  # normalised (non-negative) output-channel axis
    reduce_axis: int  # normalised reduction (input-channel / K) axis

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def name(self) -> str:
        return self.value.name

    def array(self):
        return self.value.const_value.numpy()


def _initializer(graph: ir.Graph, value: ir.Value | None) -> ir.Value | None:
    if value is None or value.name not in graph.initializers or value.const_value is None:
        return None
    if value.is_graph_input():  # an overridable initializer is an input, not a constant
        return None
    return value


def _axes(node: ir.Node, index: int, rank: int) -> tuple[int, int] | None:
    op = node.op_type
    if op == "Conv" and index == 1:
        return 0, 1
    if op == "ConvTranspose" and index == 1:
        return 1, 0
    if op == "Gemm" and index == 1 and rank == 2:
        trans_b = node.attributes.get_int("transB", 0)
        return (0, 1) if trans_b else (1, 0)
    if op == "MatMul" and index == 1 and rank >= 2:
        return rank - 1, rank - 2
    if op in ("GRU", "LSTM") and index in (1, 2) and rank == 3:
        return 1, 2
    return None


def find_weights(graph: ir.Graph) -> list[WeightUse]:
    """Every (node, weight initializer) pair of a weight op, in graph order."""
    uses = []
    for node in graph:  # top-level nodes; subgraphs are not searched
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_OPS:
            continue
        for index, value in enumerate(node.inputs):
            init = _initializer(graph, value)
            if init is None:
                continue
            axes = _axes(node, index, len(init.const_value.shape))
            if axes is not None:
                uses.append(WeightUse(node, index, init, *axes))
    return uses


def no_float_weights_reason(graph: ir.Graph) -> str:
    """Why ``graph`` has no float32 layer weights to quantize, said truly: its layers' weights
    are float16/bfloat16/double (a model already converted), or graph inputs (overridable
    initializers: a feed may replace them), or there are none."""
    use = next((u for u in find_weights(graph) if u.value.dtype != ir.DataType.FLOAT), None)
    if use is not None:
        dtype = use.value.dtype.name.lower() if use.value.dtype is not None else "untyped"
        return (f"the model's layer weights are {dtype}, not float32 (e.g. {use.op_type} {use.node.name or '<unnamed>'!r} reads "
                f"{use.name!r}): it is already converted; give the float32 model it was made from")
    inputs = {v.name for v in graph.inputs}
    for node in graph:
        if node.domain in ("", "ai.onnx") and node.op_type in WEIGHT_OPS:
            fed = next((v.name for v in node.inputs[1:] if v is not None and v.name in inputs and v.name in graph.initializers), None)
            if fed:
                return (f"the layers' weights are graph inputs a feed may replace (e.g. {fed!r} of {node.op_type} "
                        f"{node.name or '<unnamed>'!r}), not constants; read without --keep-initializer-inputs")
    return "the model has no Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM or embedding weights"
