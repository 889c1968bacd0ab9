"""Static int8 quantization in QDQ form: QuantizeLinear/DequantizeLinear pairs, standard ONNX ops only.

What the pass writes (the conventions of DESIGN.md):

- Weights of Conv, ConvTranspose, Gemm and MatMul: int8 initializers, symmetric (zero point 0,
  values in [-127, 127]), one scale per output channel (axis from ``passes/weights.py``: 0 for
  Conv and Gemm with transB, 1 for ConvTranspose and MatMul / Gemm without transB), or one
  scale per tensor with ``per_tensor``; a DequantizeLinear feeds the float op.
  A node with the metadata ``gencompress.channel_block`` = S (``CHANNEL_BLOCK_KEY``; e.g. the
  Gemm ``convtranspose_to_gemm`` makes of a ConvTranspose, whose columns are C channels × S
  positions) gets one scale per block of S consecutive output channels.
- Bias of Conv/ConvTranspose (and of Gemm with alpha = beta = 1): int32, scale = input scale ×
  weight scale, zero point 0. A per-channel bias scale is not stored but computed in the graph,
  ``Mul(input scale, weight scale)``.
- Per-channel vectors (weight scales and zero points, int32 biases) that repeat a shorter
  pattern bit for bit (a channel value repeated over a block; all-zero zero points) are stored
  once and expanded in the graph (Expand, Reshape) when that saves ``MIN_COMPACT_SAVING`` bytes.
  These expansions and the bias-scale Mul are constant subgraphs: onnxruntime folds them into
  initializers at load time (level basic), before its QDQ fusions (level extended) look for
  constant scales, so Conv/Gemm still fuse into QLinearConv/QGemm.
- Activations: one scale per tensor from the calibrated range; uint8 asymmetric (default) or
  int8 symmetric. A Q→DQ pair sits on every float input of a quantized op, and on the output of
  Conv/ConvTranspose/Add/Mul (so the runtime can fuse DQ→op→Q into one int8 kernel).
- Placement that onnxruntime's QDQ fusion recognises: a ReLU after a quantized op shares the
  scale of its output (with uint8 the zero point is 0 and the runtime drops the ReLU into the
  int8 kernel); data-movement ops (Reshape, Transpose, Squeeze, ...) between two quantized
  points share the scale of their input so the runtime can run them on int8 data.
- GRU/LSTM/RNN weights and Gather tables (embeddings) have no int8 kernel: they are stored as
  int8 (per output channel / per row) with a DequantizeLinear in front, computed in float; so is
  a GRU/LSTM/RNN bias (int8, one scale per tensor).
- Graph outputs stay float; graph inputs and outputs keep their names, types and ranks.

Ranges come from ``Options.ranges`` (name, lo, hi); any the plan needs that are missing are
measured by the calibrator the pass is given (``runtime_check/calibration.calibrate_ranges``; quantize and
recipes give it), never by the pass itself: passes run no model. So are the input moments
portable int8 uses to keep the output error of the weights the int16 pair bound changes small
(``runtime_check/saturation.input_moments``, the pass's ``moments``; ``passes/int8_saturation.py``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from threadpoolctl import threadpool_limits

from gencompress.errors import GencompressError
from gencompress.onnx_io import release
from gencompress.passes.compact_block_weights import reads_pixel_blocks
from gencompress.passes.int8_saturation import METHODS as SATURATION_REMEDIES
from gencompress.passes.int8_saturation import (
    FEEDBACK_MACS, UINT8_COST, UINT8_ZERO_POINT, Layout, Unfold, as_uint8, bound_cost, feedback_cost, saturation_free, uint8_layers,
    unsafe_pairs, worker_threads,
)
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, ShapeLookup, onnx_opset
from gencompress.passes.weights import WeightUse, find_weights

ACTIVATION_TYPES = ("uint8", "int8")
# how a calibrated tensor's range is taken from its statistics (runtime_check/calibration.py)
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_PERCENTILE = 99.99
# portable: no u8×s8 weight pair can overflow the int16 sums of onnxruntime's non-VNNI x86
# kernels (AVX2, AVX-512BW); vnni: full 8-bit weights, for targets that all have VNNI / ARM dot
INT8_KERNELS = ("portable", "vnni")
SATURATION_REASON = "weight pairs could overflow the int16 sums of x86 int8 kernels without VNNI (AVX2, AVX-512BW)"
UINT8_REASON = (SATURATION_REASON + "; a cheap layer (int8_saturation.UINT8_SHARE of the multiply-adds) whose output error the bound "
                "would raise more than int8_saturation.UINT8_COST times (bound_cost; no moments to measure it: assumed) keeps full "
                "8-bit weights as uint8, zero point 128: u8×u8 kernels add in int32")
INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
BINARY_OPS = ("Add", "Mul")
RECURRENT_OPS = ("GRU", "LSTM", "RNN")
# Ops that move or select data without changing values (or clamp at 0, for ReLU and MaxPool):
# a quantized tensor keeps its scale through them.
TRANSPARENT_OPS = (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "Expand",
    "Tile",
    "Slice",
    "Gather",
    "DepthToSpace",
    "SpaceToDepth",
    "MaxPool",
    "Relu",
    "Resize",  # nearest / linear only (``is_transparent``): cubic can overshoot the input's range
)
# Ops onnxruntime runs on int8 data when a DequantizeLinear feeds every input and a QuantizeLinear
# takes the output (QLinearLeakyRelu, QLinearConcat; QLinearAdd / QLinearMul for BINARY_OPS).
UNARY_INT8_OPS = ("LeakyRelu",)
VARIADIC_INT8_OPS = ("Concat",)
# A Mul by a constant this small (a residual scale, a per-channel factor) gets the constant
# quantized like an activation, so the Mul runs as QLinearMul instead of in float.
MAX_CONSTANT_OPERAND = 4096
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
INT32_MAX = 2**31 - 1
# Node metadata a pass may set on a Conv/Gemm/MatMul: along the weight's output axis, each block of
# this many consecutive entries is one output channel of the layer the node stands for (e.g.
# convtranspose_to_gemm: Gemm column c*S + s is output position s of ConvTranspose channel c).
# The weight then gets one scale per block: the scales the original layer would have had.
CHANNEL_BLOCK_KEY = "gencompress.channel_block"
# a per-channel parameter vector that repeats a shorter pattern is stored short and expanded in the
# graph when that saves at least this many bytes (the Expand/Reshape nodes cost ~200)
MIN_COMPACT_SAVING = 512


# ---- which nodes are layers -------------------------------------------------------------------


@dataclass
class Layer:
    """A node that gets int8 weights (and, for ``kind == 'int8'``, quantized activations)."""

    node: ir.Node
    kind: str  # "int8": runs on int8 data in the runtime; "weights": int8 storage, float compute
    weights: list[WeightUse] = field(default_factory=list)
    act_inputs: tuple[int, ...] = ()
    bias_index: int | None = None
    quantize_output: bool = False
    channel_block: int = 1  # weight scales per block of output channels (CHANNEL_BLOCK_KEY)
    const_inputs: tuple[int, ...] = ()  # constant operands quantized like activations (Mul by a constant)
    share_scale: bool = False  # Concat: inputs that nothing else reads take the output's scale
    saturation: dict | None = None  # how the int16 pair bound changed its weights (int8_saturation)

    @property
    def name(self) -> str:
        return self.node.name or ""

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def matches(self, pattern: str) -> bool:
        return pattern in (self.name, self.op_type) or any(w.name == pattern for w in self.weights)

    def describe(self) -> dict:
        info = {"node": self.name, "op_type": self.op_type, "kind": self.kind, "weights": [w.name for w in self.weights]}
        if self.channel_block > 1:
            info["channel_block"] = self.channel_block
        if self.saturation is not None:
            info["saturation"] = self.saturation
        return info


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and (value.dtype is None or value.dtype == ir.DataType.FLOAT)


def _is_constant(graph: ir.Graph, value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def _is_activation(graph: ir.Graph, value: ir.Value | None) -> bool:
    return value is not None and _is_float(value) and not _is_constant(graph, value)


def table_weights(graph: ir.Graph) -> list[WeightUse]:
    """Gather tables (embeddings): initializer ``[V, D]`` read by rows; output axis 0, reduce axis 1."""
    uses = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
            continue
        data = node.inputs[0]
        if _is_constant(graph, data) and data.name in graph.initializers and data.dtype == ir.DataType.FLOAT:
            if len(data.const_value.shape) == 2:
                uses.append(WeightUse(node, 0, data, 0, 1))
    return uses


def find_layers(graph: ir.Graph) -> list[Layer]:
    """Every node the static quantizer can quantize, in graph order."""
    weights_by_node: dict[int, list[WeightUse]] = defaultdict(list)
    for use in [*find_weights(graph), *table_weights(graph)]:
        if use.value.dtype == ir.DataType.FLOAT:
            weights_by_node[id(use.node)].append(use)
    outputs = set(id(v) for v in graph.outputs)
    layers = []
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        op = node.op_type
        uses = weights_by_node.get(id(node), [])
        if op in INT8_OPS:
            if not _is_float(node.outputs[0]):
                continue
            weight_idx = {u.input_index for u in uses}
            act = tuple(i for i in (0, 1) if i < len(node.inputs) and i not in weight_idx and _is_activation(graph, node.inputs[i]))
            if len(act) + len(weight_idx) < 2:
                continue  # e.g. a constant left operand: leave it in float
            bias = None
            if op in ("Conv", "ConvTranspose") and len(node.inputs) > 2 and _is_constant(graph, node.inputs[2]) and 1 in weight_idx:
                bias = 2
            if op == "Gemm" and 1 in weight_idx and _gemm_bias_ok(node):
                bias = 2
            # a Conv output is quantized even when it is a graph output (a DequantizeLinear then
            # gives the float output): onnxruntime runs a Conv in int8 only with a QuantizeLinear after it
            quantize_output = op == "Conv" or (op == "ConvTranspose" and id(node.outputs[0]) not in outputs)
            layers.append(Layer(node, "int8", uses, act, bias, quantize_output=quantize_output))
        elif id(node.outputs[0]) in outputs:
            continue  # the ops below gain nothing from int8 when their result leaves the graph as float
        elif op in BINARY_OPS and len(node.inputs) == 2:
            act = tuple(i for i in (0, 1) if _is_activation(graph, node.inputs[i]))
            if len(act) == 2:
                layers.append(Layer(node, "int8", [], (0, 1), None, quantize_output=True))
            elif op == "Mul" and len(act) == 1 and _small_constant(graph, node.inputs[1 - act[0]]):
                layers.append(Layer(node, "int8", [], act, None, quantize_output=True, const_inputs=(1 - act[0],)))
        elif op in UNARY_INT8_OPS and _is_activation(graph, node.inputs[0]):
            layers.append(Layer(node, "int8", [], (0,), None, quantize_output=True))
        elif op in VARIADIC_INT8_OPS and node.inputs and all(_is_activation(graph, v) for v in node.inputs):
            layers.append(Layer(node, "int8", [], tuple(range(len(node.inputs))), None, quantize_output=True, share_scale=True))
        elif uses and (op in RECURRENT_OPS or op == "Gather"):
            layers.append(Layer(node, "weights", uses))
    return layers


def _small_constant(graph: ir.Graph, value: ir.Value | None) -> bool:
    return (
        _is_float(value) and _is_constant(graph, value) and value.name in graph.initializers
        and value.const_value.size <= MAX_CONSTANT_OPERAND and bool(np.isfinite(value.const_value.numpy()).all())
    )


def is_transparent(node: ir.Node) -> bool:
    """Keeps a quantized tensor's scale: moves or selects values, or clamps them at 0 (Relu, MaxPool)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in TRANSPARENT_OPS:
        return False
    if node.op_type == "Resize":
        return node.attributes.get_string("mode", "nearest") in ("nearest", "linear")
    return True


def _gemm_bias_ok(node: ir.Node) -> bool:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    c = node.inputs[2]
    if c.const_value is None or c.is_graph_input() or c.dtype != ir.DataType.FLOAT:
        return False
    if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_float("beta", 1.0) != 1.0:
        return False
    w = node.inputs[1].const_value
    n = w.shape[0] if node.attributes.get_int("transB", 0) else w.shape[1]
    shape = tuple(c.const_value.shape)
    return shape in ((n,), (1, n))


def channel_block(node: ir.Node, use: WeightUse) -> int:
    """The node's ``CHANNEL_BLOCK_KEY`` hint for this weight: 1 when absent, not a whole number > 1,
    or not dividing the weight's output axis."""
    text = node.metadata_props.get(CHANNEL_BLOCK_KEY)
    try:
        block = int(text) if text is not None else 1
    except ValueError:
        return 1
    size = use.value.const_value.shape[use.out_axis]
    return block if 1 < block < size and size % block == 0 else 1


def int8_macs(layer: Layer, shapes: ShapeLookup) -> int | None:
    """Multiply-adds per sample of a Conv / Gemm / MatMul layer's int8 kernel (weight elements times
    output positions), None when a shape it needs is unknown."""
    node, w = layer.node, layer.node.inputs[1]
    if w is None or w.const_value is None:
        return None
    size = int(np.prod(w.const_value.shape))
    if layer.op_type == "Gemm":
        return size
    value = node.outputs[0] if layer.op_type == "Conv" else node.inputs[0]
    if value is None:
        return None

    def positions(dims):  # the output positions (Conv) or rows per sample (MatMul): the batch left out
        dims = None if dims is None else (dims[2:] if layer.op_type == "Conv" else dims[1:-1])
        return dims if dims is not None and all(isinstance(d, int) for d in dims) else None

    dims = positions(value.shape)
    if dims is None:  # shape inference only where the graph has no static shape
        dims = positions(shapes.dims(value))
    return None if dims is None else size * int(np.prod(dims, dtype=np.int64))


def select_layers(layers: list[Layer], exclude=(), include=None) -> tuple[list[Layer], list[Layer]]:
    """(kept, excluded): ``exclude`` patterns (node name, op type or weight name) drop layers;
    ``include`` (if not None) keeps only the layers it names. An unknown pattern is a user error."""
    for option, patterns in (("--exclude", exclude), ("include", include or ())):
        for p in patterns:
            if not any(layer.matches(p) for layer in layers):
                known = ", ".join(sorted({layer.name for layer in layers} | {layer.op_type for layer in layers})) or "none"
                raise GencompressError(f"{option} {p!r}: no quantizable node, op type or weight of that name (quantizable: {known})")
    kept, dropped = [], []
    for layer in layers:
        out = any(layer.matches(p) for p in exclude) or (include is not None and not any(layer.matches(p) for p in include))
        (dropped if out else kept).append(layer)
    return kept, dropped


# ---- where the Q/DQ pairs go ------------------------------------------------------------------


@dataclass
class Plan:
    layers: list[Layer]
    points: dict[ir.Value, ir.Value]  # activation tensor -> the tensor whose range sets its scale
    readers: dict[ir.Value, set[tuple[ir.Node, int]]]  # which inputs read the dequantized tensor

    @property
    def seeds(self) -> list[str]:
        return list(dict.fromkeys(v.name for v in self.points.values()))


def make_plan(graph: ir.Graph, layers: list[Layer]) -> Plan:
    """Which activation tensors get a Q/DQ pair, which scale each uses, and who reads it.

    Seeds: every float activation input of an int8 layer, and the output of the layers that
    quantize it (Conv, Add, Mul, LeakyRelu, Concat, ...). From each seed, walking up through
    transparent ops whose input has no other reader, the tensors above join the seed's group and
    share its scale (the seed is the most downstream tensor, e.g. the ReLU output, so its range
    is the one that matters). A Concat input that nothing else reads and no int8 op computes
    joins the Concat output's group: the int8 Concat then only copies, with no requantization.
    """
    order = {id(n): i for i, n in enumerate(graph)}
    int8_nodes = {id(layer.node) for layer in layers if layer.kind == "int8"}
    sharing = {id(layer.node) for layer in layers if layer.share_scale and layer.quantize_output}
    graph_outputs = {id(v) for v in graph.outputs}
    seeds: list[tuple[ir.Value, tuple[ir.Node, int] | None]] = []
    for layer in layers:
        if layer.kind != "int8":
            continue
        for i in layer.act_inputs:
            seeds.append((layer.node.inputs[i], (layer.node, i)))
        if layer.quantize_output:
            seeds.append((layer.node.outputs[0], None))

    def position(value: ir.Value) -> int:
        producer = value.producer()
        return order.get(id(producer), -1) if producer is not None else -1

    points: dict[ir.Value, ir.Value] = {}
    readers: dict[ir.Value, set] = defaultdict(set)
    # downstream tensors first, so that a chain claims the tensors above it
    for value, reader in sorted(seeds, key=lambda s: -position(s[0])):
        if reader is not None:
            readers[value].add(reader)
        if value in points:
            continue
        points[value] = value
        if reader is not None and id(reader[0]) in sharing and reader[0].outputs[0] in points and _private(value, int8_nodes, graph_outputs):
            points[value] = points[reader[0].outputs[0]]
        current = value
        while True:
            producer = current.producer()
            if producer is None or not is_transparent(producer) or id(producer) in int8_nodes:
                break
            upstream = producer.inputs[0]
            if not _is_activation(graph, upstream) or upstream in points:
                break
            if len(upstream.uses()) != 1 or id(upstream) in graph_outputs:
                break
            points[upstream] = points[value]
            readers[upstream].add((producer, 0))
            current = upstream
    # an int8 op's output feeds all its consumers through Q/DQ (else the runtime cannot fuse it)
    for value in points:
        producer = value.producer()
        if producer is not None and id(producer) in int8_nodes:
            readers[value].update((u.node, u.idx) for u in value.uses())
    ordered = sorted(points, key=position)
    return Plan(layers, {v: points[v] for v in ordered}, {v: readers[v] for v in ordered})


def _private(value: ir.Value, int8_nodes: set[int], graph_outputs: set[int]) -> bool:
    """Read by one node only, not a graph output, and not computed by an int8 op."""
    producer = value.producer()
    return len(value.uses()) == 1 and id(value) not in graph_outputs and (producer is None or id(producer) not in int8_nodes)


# ---- numbers ----------------------------------------------------------------------------------


def activation_params(lo: float, hi: float, dtype: str) -> tuple[np.float32, int]:
    """Scale and zero point of a per-tensor activation range (the range is widened to contain 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "uint8":
        scale = np.float32((hi - lo) / 255.0)
        if not scale > 0:
            return np.float32(1.0), 0
        zp = int(np.clip(np.rint(-lo / float(scale)), 0, 255))
        return scale, zp
    peak = max(-lo, hi)
    scale = np.float32(peak / 127.0)
    if not scale > 0:
        return np.float32(1.0), 0
    return scale, 0


def quantize_symmetric(w: np.ndarray, axis: int | None, qmax: int = 127, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integer weights: ``(q, scale)`` with q in [-qmax, qmax]; one scale per slice along ``axis``.

    ``block``: one scale per ``block`` consecutive slices along ``axis`` (their common peak), still
    returned one per slice (each repeated ``block`` times); ``w.shape[axis]`` must be a multiple.
    """
    w = np.asarray(w, dtype=np.float32)
    # max |w| as max(max w, -min w): no |w| copy of a large weight (the same numbers)
    if axis is None:
        peak = max(w.max(initial=0.0), -w.min(initial=0.0))
        scale = np.asarray(peak / qmax, dtype=np.float32)
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        peaks = np.maximum(w.max(axis=other, initial=0.0), -w.min(axis=other, initial=0.0))
        if block > 1:
            if peaks.size % block:
                raise ValueError(f"block {block} does not divide the {peaks.size} channels")
            peaks = np.repeat(peaks.reshape(-1, block).max(axis=1), block)
        scale = (peaks / qmax).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    shaped = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    if w.ndim == 0:
        return np.clip(np.rint(w / shaped), -qmax, qmax).astype(np.int8), scale
    # about a million values at a time along the first axis, in one scratch array: no float copy of a
    # whole large weight (134 MB for the largest layer of the 47M scale model) and no fresh pages per
    # chunk (that layer at load 7: 0.14-1.27 s with a new array per chunk, 0.09-0.18 s), the same numbers
    q = np.empty(w.shape, dtype=np.int8)
    step = max(1, (1 << 20) // max(1, w.size // max(w.shape[0], 1)))
    buf = np.empty((min(step, w.shape[0]), *w.shape[1:]), dtype=np.float32)
    for start in range(0, w.shape[0], step):
        part = slice(start, start + step)
        t = np.divide(w[part], shaped[part] if axis == 0 else shaped, out=buf[: len(q[part])])  # rounded and clipped in place
        np.rint(t, out=t)
        np.clip(t, -qmax, qmax, out=t)
        q[part] = t
    return q, scale


def repeat_pattern(a: np.ndarray) -> tuple[str, int] | None:
    """The shortest pattern a 1-D array repeats exactly (bit for bit): ``("repeat", k)`` when it is
    k values each repeated n/k times in a row (``np.repeat``), ``("tile", k)`` when it is k values
    repeated n/k times as a whole (``np.tile``); None when it is no repeat (k = n)."""
    a = np.ascontiguousarray(a)
    n = a.size
    if a.ndim != 1 or n < 2:
        return None
    bits = a.view(f"u{a.itemsize}")
    for k in range(1, n // 2 + 1):
        if n % k:
            continue
        grid = bits.reshape(k, n // k)
        if (grid == grid[:, :1]).all():
            return "repeat", k
        grid = bits.reshape(n // k, k)
        if (grid == grid[:1]).all():
            return "tile", k
    return None


# ---- graph building ---------------------------------------------------------------------------


class Builder:
    """Unique names and new initializers/nodes for one graph."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.unique = Namer(graph)  # the rewrites' name generator: base, base_1, ...
        self._shapes: dict[tuple[int, ...], ir.Value] = {}

    def shape(self, dims) -> ir.Value:
        """An int64 shape initializer (one per distinct shape)."""
        key = tuple(int(d) for d in dims)
        if key not in self._shapes:
            self._shapes[key] = self.initializer("shape_" + "x".join(map(str, key)), np.array(key, dtype=np.int64))
        return self._shapes[key]

    def constant(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None, *, before: ir.Node) -> ir.Value:
        """``array`` as a graph value: an initializer named ``base``, or, for a 1-D vector that
        repeats a shorter pattern (``repeat_pattern``) when that saves ``MIN_COMPACT_SAVING`` bytes,
        the pattern as the initializer ``base`` expanded in the graph (Expand, then Reshape for a
        pattern longer than one value) into ``{base}_expanded``. The nodes go before ``before``.

        The expansion is a constant subgraph: runtimes fold it into an initializer at load time
        (onnxruntime's constant folding, level basic, runs before its QDQ fusions)."""
        array = np.array(array, order="C", copy=True)
        found = repeat_pattern(array) if array.ndim == 1 else None
        if found is None or (array.size - found[1]) * array.itemsize < MIN_COMPACT_SAVING:
            return self.initializer(base, array, dtype)
        form, k = found
        n = array.size
        out_dtype = dtype if dtype is not None else ir.DataType.from_numpy(array.dtype)
        if k == 1:
            short = self.initializer(base, array[:1], dtype)
            expand = self.node("Expand", [short, self.shape([n])], base, "expanded", out_dtype, [n])
            self.graph.insert_before(before, expand)
            return expand.outputs[0]
        # [k, 1] -> [k, n/k] for np.repeat; [k] -> [n/k, k] for np.tile; then flat
        short, grid = (array.reshape(k, n // k)[:, :1], [k, n // k]) if form == "repeat" else (array[:k], [n // k, k])
        sv = self.initializer(base, short, dtype)
        expand = self.node("Expand", [sv, self.shape(grid)], base, "grid", out_dtype, grid)
        flat = self.node("Reshape", [expand.outputs[0], self.shape([n])], base, "expanded", out_dtype, [n])
        self.graph.insert_before(before, [expand, flat])
        return flat.outputs[0]

    def initializer(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        name = self.unique(base)
        array = np.array(array, order="C", copy=True)  # keeps 0-d arrays scalar
        tensor = ir.Tensor(array, dtype=dtype, name=name) if dtype is not None else ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def node(self, op: str, inputs, base: str, suffix: str, out_dtype: ir.DataType, shape, attributes=None) -> ir.Node:
        """A node named ``{base}_{op}`` with one output ``{base}_{suffix}`` of the given type and shape."""
        out = ir.Value(name=self.unique(f"{base}_{suffix}"), type=ir.TensorType(out_dtype), shape=ir.Shape(shape) if shape is not None else None)
        return ir.node(op, inputs, attributes or {}, outputs=[out], name=self.unique(f"{base}_{op}"))


def dequantize_weight(
    builder: Builder,
    use: WeightUse,
    q: np.ndarray,
    scale: np.ndarray,
    axis: int | None,
    qtype: ir.DataType,
    *,
    block_size: int | None = None,
    zero_point: bool | int = False,
    half_scales: bool = False,
    compact: bool = False,
) -> ir.Value:
    """Store ``q`` as an integer initializer with a DequantizeLinear in front; return the float value.

    ``half_scales``: store the scales as float16 with a Cast to float32 in front of the
    DequantizeLinear (a constant subgraph: runtimes fold it at load time). ``scale`` must then
    already be exactly representable in float16.
    ``compact``: a scale or zero-point vector that repeats a shorter pattern is stored short and
    expanded in the graph (``Builder.constant``).
    ``zero_point``: True writes zeros, an int (uint8 weights) that value.
    """
    base = use.value.name

    def store(name, array, dtype=None):
        return builder.constant(name, array, dtype, before=use.node) if compact else builder.initializer(name, array, dtype)

    qv = builder.initializer(f"{base}_quantized", q, qtype)
    if half_scales:
        sh = builder.initializer(f"{base}_scale_fp16", scale.astype(np.float16))
        cast = builder.node("Cast", [sh], f"{base}_scale", "float32", ir.DataType.FLOAT, sh.shape, {"to": ir.DataType.FLOAT})
        builder.graph.insert_before(use.node, cast)
        sv = cast.outputs[0]
    else:
        sv = store(f"{base}_scale", scale.astype(np.float32))
    inputs = [qv, sv]
    if zero_point:
        zp_dtype = np.int8 if qtype == ir.DataType.INT4 else q.dtype
        inputs.append(store(f"{base}_zero_point", np.full(scale.shape, 0 if zero_point is True else int(zero_point), dtype=zp_dtype), qtype))
    attributes = {}
    if axis is not None:
        attributes["axis"] = axis
    if block_size:
        attributes["block_size"] = block_size
    dq = builder.node("DequantizeLinear", inputs, base, "dequantized", ir.DataType.FLOAT, use.value.shape, attributes)
    builder.graph.insert_before(use.node, dq)
    return dq.outputs[0]


MIN_BIAS_VALUES = 16  # smaller float biases are not worth a DequantizeLinear


def store_bias_int8(builder: Builder, node: ir.Node, index: int, done: dict[str, ir.Value]) -> bool:
    """Store a float bias (input ``index`` of ``node``) as int8, one scale per tensor, behind a
    DequantizeLinear (for ops whose bias is added in float: weight-only layers, GRU/LSTM)."""
    if len(node.inputs) <= index or node.inputs[index] is None:
        return False
    bias = node.inputs[index]
    if bias.name not in done:
        if bias.const_value is None or bias.is_graph_input() or bias.dtype != ir.DataType.FLOAT:
            return False
        if bias.name not in builder.graph.initializers or bias.const_value.size < MIN_BIAS_VALUES:
            return False
        q, scale = quantize_symmetric(bias.const_value.numpy(), None)
        done[bias.name] = dequantize_weight(builder, WeightUse(node, index, bias, 0, 0), q, scale, None, ir.DataType.INT8)
    node.replace_input_with(index, done[bias.name])
    return True


# ---- weights stored once -----------------------------------------------------------------------

RUNTIME_WEIGHT_REASON = (
    "its weight is computed from an activation on every run (runtime-modulated): quantizing it "
    "as an activation each run costs more than the int8 kernel saves"
)
MIN_STORED_ELEMENTS = 1024  # smaller float constants are not worth a DequantizeLinear


def split_runtime_weight_layers(layers: list[Layer]) -> tuple[list[Layer], list[Layer]]:
    """(layers, kept float): a Conv/ConvTranspose whose weight is not a constant (StyleGAN2's
    per-sample modulated weights) stays float, with ``RUNTIME_WEIGHT_REASON``."""
    kept, modulated = [], []
    for layer in layers:
        runtime = layer.op_type in ("Conv", "ConvTranspose") and 1 in layer.act_inputs
        (modulated if runtime else kept).append(layer)
    return kept, modulated


def share_dequantized_weights(graph: ir.Graph, cache: dict) -> list[dict]:
    """A quantized weight that other ops read too (StyleGAN2's demodulation reads the conv
    weight) is not kept as a second float copy: those readers take the DequantizeLinear output.
    Returns one entry per weight shared: its name and the readers moved."""
    shared = []
    for (name, *_how), (dq_value, _scale) in cache.items():
        value = graph.initializers.get(name)
        if value is None or not value.uses() or value.is_graph_output():
            continue
        if any(entry["weight"] == name for entry in shared):
            continue  # quantized along two axes: the first one serves the float readers
        readers = [(use.node, use.idx) for use in value.uses()]
        for node, index in readers:
            node.replace_input_with(index, dq_value)
        shared.append({"weight": name, "readers": sorted({node.name or node.op_type for node, _ in readers})})
    return shared


def store_other_weights_int8(builder: Builder, graph: ir.Graph, all_layers: list[Layer], exclude=()) -> list[dict]:
    """Float initializers of ``MIN_STORED_ELEMENTS`` or more that no quantized layer reads (a
    modulated conv's weight scaled by the style, a learned constant input) are stored as int8,
    one scale per slice of their first axis longer than 1, behind a DequantizeLinear; computed in
    float. Not touched: initializers an excluded (or runtime-modulated) layer reads, graph
    outputs, and those an ``exclude`` pattern names (or names a reader of). Returns layer-table rows."""
    layer_nodes = {id(layer.node) for layer in all_layers}
    rows = []
    for name in list(graph.initializers):
        value = graph.initializers[name]
        if value.dtype != ir.DataType.FLOAT or value.const_value is None or value.is_graph_input() or value.is_graph_output():
            continue
        array = value.const_value.numpy()
        uses = value.uses()
        if array.size < MIN_STORED_ELEMENTS or not uses or name in exclude:
            continue
        if any(id(u.node) in layer_nodes or u.node.domain not in ("", "ai.onnx") for u in uses):
            continue
        if any(u.node.op_type in ("QuantizeLinear", "DequantizeLinear") for u in uses):
            continue  # a scale or zero point this pass wrote
        if any(p in (u.node.name, u.node.op_type) for u in uses for p in exclude):
            continue
        axis = next((i for i, n in enumerate(array.shape) if n > 1), None) if array.ndim >= 2 else None
        first = min(uses, key=lambda u: list(graph).index(u.node))
        q, scale = quantize_symmetric(array, axis)
        dq_value = dequantize_weight(builder, WeightUse(first.node, first.idx, value, axis or 0, 0), q, scale, axis, ir.DataType.INT8)
        for use in list(uses):
            use.node.replace_input_with(use.idx, dq_value)
        rows.append({"node": first.node.name or "", "op_type": first.node.op_type, "kind": "weights", "weights": [name], "stored": "int8 constant, float compute"})
    return rows


# ---- the pass ---------------------------------------------------------------------------------


def _moment_ask(layer: Layer, shape: tuple) -> tuple | None:
    """``(input name, Unfold, K)``: how the input of an int8 layer with weight ``shape`` becomes the
    kernel's K rows, or None where it is not known (grouped Conv, auto_pad, transposed or batched
    operands): those layers' weights are changed without moments."""
    node, x = layer.node, layer.node.inputs[0]
    if x is None or not x.name or reads_pixel_blocks(node):
        return None  # a pixel-block Conv: feedback would make its weight's copies differ (compact_block_weights)
    attr = node.attributes
    if layer.op_type == "Conv":
        if attr.get_int("group", 1) != 1 or attr.get_string("auto_pad", "NOTSET") != "NOTSET":
            return None
        d = len(shape) - 2
        kernel = tuple(int(k) for k in shape[2:])
        pads = tuple(attr.get_ints("pads", [0] * 2 * d))
        unfold = Unfold(kernel, pads, tuple(attr.get_ints("strides", [1] * d)), tuple(attr.get_ints("dilations", [1] * d)))
        return x.name, unfold, int(np.prod(shape[1:]))
    if layer.op_type == "Gemm" and not attr.get_int("transA", 0):
        return x.name, Unfold(), int(shape[1] if attr.get_int("transB", 0) else shape[0])
    if layer.op_type == "MatMul" and len(shape) == 2:
        return x.name, Unfold(), int(shape[0])
    return None


@dataclass(frozen=True)
class StaticOptions:
    """How static int8 is calibrated and stored: the one type the pass, the verbs, recipes and the
    CLI's choices come from. The calibration fields describe how the ranges a pass lacks are measured
    (``runtime_check/calibration.py``)."""

    calib: str = "minmax"  # CALIBRATION_METHODS
    calib_size: int | None = None  # seeded draws from the prior (default 256), or the first N rows of calib_data
    calib_data: str | None = None  # an .npz keyed by input name, or a folder of images
    percentile: float = DEFAULT_PERCENTILE  # for calib "percentile"
    per_tensor: bool = False  # one weight scale per tensor instead of per output channel
    activations: str = "uint8"  # ACTIVATION_TYPES: uint8 asymmetric or int8 symmetric
    seed: int = 0  # of the calibration draws
    int8_kernels: str = "portable"  # INT8_KERNELS: portable (saturation-free on x86 without VNNI) or vnni

    def __post_init__(self):
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, not {self.activations!r}")
        if self.calib not in CALIBRATION_METHODS:
            raise ValueError(f"calib must be one of {', '.join(CALIBRATION_METHODS)}, not {self.calib!r}")
        if self.int8_kernels not in INT8_KERNELS:
            raise ValueError(f"int8_kernels must be one of {', '.join(INT8_KERNELS)}, not {self.int8_kernels!r}")

    def static_fields(self) -> dict:
        """These options alone (a subclass's own fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(StaticOptions)}


@register("insert_qdq")
class InsertQDQPass(GencompressPass):
    """Static int8 QDQ quantization (see the module docstring for what is written where).

    Guarantees: graph inputs and outputs unchanged (names, dtypes, ranks), outputs stay float;
    every quantized weight is an int8 initializer behind a DequantizeLinear; only standard ONNX
    ops are added (QuantizeLinear, DequantizeLinear, and Expand/Reshape/Mul on constants for
    the parameters computed in the graph); deterministic for the same ranges. The
    ``CHANNEL_BLOCK_KEY`` hints of the nodes it sees are consumed (removed).
    """

    @dataclass(frozen=True)
    class Options(StaticOptions):
        exclude: tuple[str, ...] = ()  # node names, op types or weight names kept in float
        include: tuple[str, ...] | None = None  # quantize only these (None: all)
        ranges: tuple[tuple[str, float, float], ...] = ()  # calibrated activation ranges
        saturation_remedy: str = "best"  # int8_saturation.METHODS: how an unsafe channel is changed
        # a cheap layer keeps full 8-bit weights as uint8 when the bound costs its output error more than
        # this factor (int8_saturation.UINT8_COST; 0: every cheap layer, as before session 5)
        uint8_cost: float = UINT8_COST

        def __post_init__(self):
            super().__post_init__()
            if self.saturation_remedy not in SATURATION_REMEDIES:
                raise ValueError(f"saturation_remedy must be one of {', '.join(SATURATION_REMEDIES)}, not {self.saturation_remedy!r}")

    def __init__(self, options=None, calibrate=None, moments=None):
        super().__init__(options)
        # (model, tensor names, options) -> {name: (lo, hi)}: measures the ranges ``Options.ranges``
        # lacks by running the model; given by the layer that runs models (runtime_check.calibration)
        self.calibrate = calibrate
        # (model, {key: (input name, Unfold, K)}, options) -> {key: blocks of E[x xᵀ]}: lets portable
        # int8 keep the output error of the weights it changes small (runtime_check.saturation);
        # without it the change minimizes the weights' own error
        self.moments = moments

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # numpy's BLAS on one thread for the whole pass (the moments, the search, the error feedback's
        # factorizations and products): the float64 products then sum in one order whatever the core
        # count (on two threads rrdb's bytes differed), and two BLAS threads on two busy cores made
        # rrdb's 26 Cholesky factorizations take 9.1 s instead of 0.3 s (cProfile, load 3.5 and 4.7)
        with threadpool_limits(limits=1, user_api="blas"):
            return self._call(model)

    def _call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.options
        graph = model.graph
        opset = onnx_opset(model)
        if opset < MIN_OPSET:
            raise GencompressError(f"the model's opset is {opset}; int8 QDQ needs opset {MIN_OPSET} or newer (re-export with --opset {MIN_OPSET})")
        all_layers = find_layers(graph)
        if not all_layers:
            raise GencompressError("nothing to quantize: the model has no Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM or embedding weights")
        layers, dropped = select_layers(all_layers, opts.exclude, opts.include)
        layers, modulated = split_runtime_weight_layers(layers)
        if not layers:
            raise GencompressError("nothing to quantize: every quantizable layer is excluded")
        plan = make_plan(graph, layers)
        # measured on the graph as it comes (shape inference, where a value has no shape, before any Q/DQ)
        shapes = ShapeLookup(model)
        uint8 = uint8_layers({l.name: int8_macs(l, shapes) for l in layers if any(self._pairing(l, u) for u in l.weights)})
        quantized, ready = self._unsafe_weights(model, layers, uint8)
        ranges = {name: (lo, hi) for name, lo, hi in opts.ranges}
        missing = [s for s in plan.seeds if s not in ranges]
        if missing:
            if self.calibrate is None:
                raise GencompressError(f"insert_qdq: no activation range for {len(missing)} tensor(s), e.g. {missing[0]!r}; "
                                       "give ranges, or run the pass through quantize or a recipe, which calibrate the model")
            ranges.update(self.calibrate(model, missing, opts))
        symmetric = opts.activations == "int8"
        qtype = ir.DataType.INT8 if symmetric else ir.DataType.UINT8
        builder = Builder(graph)

        # activations
        params: dict[str, tuple[ir.Value, ir.Value]] = {}
        dequantized: dict[ir.Value, ir.Value] = {}  # DequantizeLinear output -> the tensor it stands for
        for value, seed in plan.points.items():
            if seed.name not in params:
                lo, hi = ranges[seed.name]
                scale, zp = activation_params(lo, hi, opts.activations)
                sv = builder.initializer(f"{seed.name}_scale", np.asarray(scale, dtype=np.float32))
                zv = builder.initializer(f"{seed.name}_zero_point", np.asarray(zp, dtype=np.int8 if symmetric else np.uint8), qtype)
                params[seed.name] = (sv, zv)
            sv, zv = params[seed.name]
            readers = sorted(plan.readers[value], key=lambda r: (r[0].name or "", r[1]))
            producer = value.producer()
            if not symmetric and self._relu_in_group(plan, value, dequantized):
                # Relu(DQ(Q(x))) == DQ(Q(x)) when the zero point is 0 (the uint8 range starts at 0):
                # its readers read the DequantizeLinear above it, and the Relu goes. (onnxruntime
                # drops such a Relu itself when one node reads it; with several readers it kept
                # a DequantizeLinear -> QuantizeLinear requantization in its place.)
                for node, index in readers:
                    node.replace_input_with(index, producer.inputs[0])
                graph.remove(producer, safe=True)
                continue
            q = builder.node("QuantizeLinear", [value, sv, zv], value.name, "quantized", qtype, value.shape)
            dq = builder.node("DequantizeLinear", [q.outputs[0], sv, zv], value.name, "dequantized", ir.DataType.FLOAT, value.shape)
            dequantized[dq.outputs[0]] = value
            if producer is not None:
                graph.insert_after(producer, [q, dq])
            else:
                graph.insert_before(graph.node(0), [q, dq])
            for node, index in readers:
                node.replace_input_with(index, dq.outputs[0])
            if value.is_graph_output():
                # a quantized graph output (a Conv's): the DequantizeLinear output takes its place and name
                name = value.name
                value.name = builder.unique(f"{name}_float")
                dq.outputs[0].name = name
                for i, out in enumerate(graph.outputs):
                    if out is value:
                        graph.outputs[i] = dq.outputs[0]
        for layer in layers:
            for index in layer.const_inputs:
                self._quantize_constant_operand(builder, layer.node, index, qtype)

        # weights and biases
        cache: dict[tuple, tuple[ir.Value, np.ndarray]] = {}
        float_biases: dict[str, ir.Value] = {}
        for layer in layers:
            for use in layer.weights:
                axis = None if (opts.per_tensor and layer.kind == "int8") else use.out_axis
                block = channel_block(layer.node, use) if axis is not None else 1
                layout = self._pairing(layer, use)
                key = self._weight_key(layer, use, uint8)
                if key not in cache:
                    if key in ready:  # changed with error feedback (_unsafe_weights)
                        q, scale, qtype, zero_point, saturation = ready.pop(key)
                    else:
                        q, scale = quantized.pop(key) if key in quantized else quantize_symmetric(use.array(), axis, block=block)
                        # onnxruntime's Gemm fusion wants the weight zero point spelled out
                        qtype, zero_point, saturation = ir.DataType.INT8, layer.op_type == "Gemm", None
                        if layout is not None:
                            q, scale, qtype, zero_point, saturation = self._portable(use.array(), q, scale, key, None, zero_point)
                    if saturation is not None:
                        layer.saturation = saturation
                    release(use.value.const_value)  # a streamed weight: unmapped once read
                    dq_value = dequantize_weight(builder, use, q, scale, axis, qtype, zero_point=zero_point, compact=True)
                    cache[key] = (dq_value, scale)
                dq_value, scale = cache[key]
                layer.node.replace_input_with(use.input_index, dq_value)
                if layer.bias_index is not None and use.input_index == 1:
                    self._quantize_bias(builder, layer, scale, dq_value.producer().inputs[1])
                if block > 1:
                    layer.channel_block = block
            if layer.op_type in RECURRENT_OPS:
                store_bias_int8(builder, layer.node, 3, float_biases)
        shared = share_dequantized_weights(graph, cache)
        stored = store_other_weights_int8(builder, graph, all_layers, opts.exclude)
        for layer in all_layers:
            layer.node.metadata_props.pop(CHANNEL_BLOCK_KEY, None)  # a hint for this pass: consumed
        self._remove_unused_initializers(graph)
        common_passes.TopologicalSortPass()(model)
        self.report = {
            "activations": opts.activations,
            "weights": "int8 per-tensor" if opts.per_tensor else "int8 per-channel",
            "int8_kernels": opts.int8_kernels,
            "layers": [layer.describe() for layer in layers] + stored,
            "float_layers": [layer.describe() for layer in dropped] + [{**layer.describe(), "reason": RUNTIME_WEIGHT_REASON} for layer in modulated],
            "shared_weights": shared,
            "quantized_activations": len(plan.points),
            "activation_scales": len(params),
        }
        return ir.passes.PassResult(model, True)

    def _portable(self, w: np.ndarray, q: np.ndarray, scale: np.ndarray, key: tuple, blocks: list | None, zero_point) -> tuple:
        """``(q, scale, type, zero point, saturation report or None)``: the int8 weights ``q`` of the
        float weights ``w`` (``key``: ``_weight_key``) made saturation-free, with error feedback on the
        input moments ``blocks`` when given; a cheap layer's by ``_cheap_layer``."""
        _, axis, block, layout, cheap = key
        if cheap and unsafe_pairs(q, layout):
            return self._cheap_layer(w, q, scale, key, blocks, zero_point)
        q, scale, changed = saturation_free(w, q, scale, axis, layout, block=block, method=self.options.saturation_remedy, moments=blocks)
        return q, scale, ir.DataType.INT8, zero_point, None if changed is None else {**changed, "reason": SATURATION_REASON}

    def _cheap_layer(self, w: np.ndarray, q: np.ndarray, scale: np.ndarray, key: tuple, blocks: list | None, zero_point) -> tuple:
        """``(q, scale, type, zero point, saturation report)`` of a cheap layer (``uint8_layers``) with
        an unsafe pair: its saturation-free weights (error feedback on its input's moments
        ``blocks``) where they cost its output error at most ``Options.uint8_cost`` times what full 8-bit
        weights do, else its full 8-bit weights as uint8 (and so without moments)."""
        _, axis, block, layout, _ = key
        if blocks is not None:
            bq, bs, changed = saturation_free(w, q, scale, axis, layout, block=block, method=self.options.saturation_remedy, moments=blocks)
            cost = bound_cost(w, (q, scale), (bq, bs), axis, layout, blocks)
            if cost <= self.options.uint8_cost:
                return bq, bs, ir.DataType.INT8, zero_point, {**changed, "bound_cost": round(cost, 3), "reason": SATURATION_REASON}
            return as_uint8(q), scale, ir.DataType.UINT8, UINT8_ZERO_POINT, {"weights": "uint8", "bound_cost": round(cost, 3), "reason": UINT8_REASON}
        return as_uint8(q), scale, ir.DataType.UINT8, UINT8_ZERO_POINT, {"weights": "uint8", "reason": UINT8_REASON}

    def _weight_key(self, layer: Layer, use: WeightUse, uint8: set) -> tuple:
        """What makes two uses of a weight get the same int8 weights (they then share them)."""
        axis = None if (self.options.per_tensor and layer.kind == "int8") else use.out_axis
        block = channel_block(layer.node, use) if axis is not None else 1
        layout = self._pairing(layer, use)
        return (use.value.name, axis, block, layout, layout is not None and layer.name in uint8)

    def _unsafe_weights(self, model: ir.Model, layers: list[Layer], uint8: set) -> tuple[dict, dict]:
        """``(quantized, ready)``: the int8 weights (``{key: (q, scale)}``) of the layers with an
        unsafe pair, and ``_portable``'s answers (``{key: (q, scale, type, zero point, report)}``)
        for those whose input moments ``self.moments`` measured (in one run of the float model before
        the pass changes it): those whose error feedback fits ``FEEDBACK_MACS`` (none when no moments
        callable was given); they leave ``quantized``. A cheap layer's (``uint8_layers``) are asked as
        optional: they decide between its bound and uint8 weights (``_cheap_layer``) without raising
        the samples the others need, and never alone (no float run for them)."""
        quantized, asks, owners = {}, {}, {}
        for layer in layers:
            for use in layer.weights:
                key = self._weight_key(layer, use, uint8)
                _, axis, block, layout, cheap = key
                if layout is None or key in quantized:
                    continue
                q, scale = quantize_symmetric(use.array(), axis, block=block)
                release(use.value.const_value)  # a streamed weight: unmapped until its turn below
                if unsafe_pairs(q, layout):
                    quantized[key] = (q, scale)
                    ask = _moment_ask(layer, q.shape)
                    if ask is not None and feedback_cost(q, layout) <= FEEDBACK_MACS:
                        asks[key] = (*ask, cheap)  # a cheap layer's: optional (uint8 weights without)
                        owners[key] = (use, layer.op_type == "Gemm")  # the first layer's zero point, as below
        if self.moments is None or all(ask[3] for ask in asks.values()):
            return quantized, {}  # cheap layers' moments only ride along a run the others need
        moments = self.moments(model, asks, self.options)
        # the layers' error feedback on threads of their own (small layers, FEEDBACK_MACS: their weights
        # all held at once): each on one BLAS thread (see call), so the same roundings in any order; the
        # widest H first (its factorization and products), so that the threads end together
        costliest = sorted(moments.items(), key=lambda item: -sum((b - a) ** 2 for a, b, _ in item[1]))
        with ThreadPoolExecutor(min(len(moments), worker_threads()) or 1, thread_name_prefix="saturation") as pool:
            futures = {key: pool.submit(self._portable, owners[key][0].array(), *quantized.pop(key), key, blocks, owners[key][1])
                       for key, blocks in costliest}
            return quantized, {key: future.result() for key, future in futures.items()}

    def _pairing(self, layer: Layer, use: WeightUse) -> Layout | None:
        """How a non-VNNI x86 int8 kernel pairs this weight, when the bound applies to it
        (``int8_kernels`` portable, a layer that runs as an int8 kernel, its B / filter input)."""
        if self.options.int8_kernels != "portable" or layer.kind != "int8" or use.input_index != 1:
            return None
        node = layer.node
        if layer.op_type == "Conv":
            return Layout("Conv", group=node.attributes.get_int("group", 1))
        if layer.op_type == "Gemm":
            return Layout("Gemm", trans_b=bool(node.attributes.get_int("transB", 0)))
        if layer.op_type == "MatMul":
            return Layout("MatMul")
        return None  # ConvTranspose: no int8 kernel in onnxruntime's CPU provider (float after DQ)

    def _quantize_bias(self, builder: Builder, layer: Layer, w_scale: np.ndarray, w_scale_value: ir.Value) -> None:
        """int32 bias, scale = input scale × weight scale, zero point 0. A per-channel bias scale
        is computed in the graph, ``Mul(input scale, weight scale)`` (a constant subgraph that
        runtimes fold at load time), rather than stored: float32 multiplication is exact rounding,
        so it equals the product the int32 values were computed with."""
        node = layer.node
        bias = node.inputs[layer.bias_index]
        x_dq = node.inputs[0].producer()  # the DequantizeLinear feeding the op
        if x_dq is None or x_dq.op_type != "DequantizeLinear":
            return
        x_scale_value = x_dq.inputs[1]
        x_scale = x_scale_value.const_value.numpy()
        b = bias.const_value.numpy().astype(np.float64)
        shape = b.shape
        b = b.reshape(-1)
        n = b.size
        ws = np.asarray(w_scale, dtype=np.float32).reshape(-1)
        tiled = node.op_type == "ConvTranspose" and ws.size > 1 and ws.size != n
        if tiled:
            ws = np.tile(ws, n // ws.size)  # grouped: axis 1 holds C_out / group channels
        scale = (np.float32(x_scale) * ws).astype(np.float32)
        if scale.size == 1 and n > 1:
            per_axis = None
        else:
            per_axis = len(shape) - 1
        q = np.clip(np.rint(b / (scale.astype(np.float64) if scale.size > 1 else float(scale[0]))), -INT32_MAX, INT32_MAX).astype(np.int32)
        q = q.reshape(shape)
        base = bias.name
        if per_axis is not None and len(shape) == 1 and n > 1 and not tiled:
            mul = builder.node("Mul", [x_scale_value, w_scale_value], base, "scale", ir.DataType.FLOAT, [n])
            builder.graph.insert_before(node, mul)
            qv = builder.constant(f"{base}_quantized", q, ir.DataType.INT32, before=node)
            dq = builder.node("DequantizeLinear", [qv, mul.outputs[0]], base, "dequantized", ir.DataType.FLOAT, bias.shape, {"axis": 0})
            builder.graph.insert_before(node, dq)
            node.replace_input_with(layer.bias_index, dq.outputs[0])
            return
        use = WeightUse(node, layer.bias_index, bias, per_axis or 0, 0)
        scale_arr = scale if per_axis is not None else np.asarray(scale[0], dtype=np.float32)
        dq_value = dequantize_weight(builder, use, q, scale_arr, per_axis, ir.DataType.INT32, compact=True)
        node.replace_input_with(layer.bias_index, dq_value)

    @staticmethod
    def _relu_in_group(plan: Plan, value: ir.Value, dequantized: dict[ir.Value, ir.Value]) -> bool:
        """``value`` is a Relu's output read by several nodes (all in the plan), whose input is
        dequantized with the same scale and zero point (so the Relu can go)."""
        producer = value.producer()
        if producer is None or producer.op_type != "Relu" or value.is_graph_output() or len(value.uses()) < 2:
            return False
        source = dequantized.get(producer.inputs[0])
        if source is None or plan.points[source] is not plan.points[value]:
            return False
        return {(u.node, u.idx) for u in value.uses()} <= plan.readers[value]

    @staticmethod
    def _quantize_constant_operand(builder: Builder, node: ir.Node, index: int, qtype: ir.DataType) -> None:
        """A constant operand (of a Mul) stored quantized like an activation, its own range, behind
        a DequantizeLinear: onnxruntime then fuses the op into its int8 kernel (QLinearMul)."""
        value = node.inputs[index]
        array = value.const_value.numpy().astype(np.float32)
        activations = "int8" if qtype == ir.DataType.INT8 else "uint8"
        scale, zp = activation_params(float(array.min()), float(array.max()), activations)
        lo, hi = (-128, 127) if activations == "int8" else (0, 255)
        q = np.clip(np.rint(array / scale) + zp, lo, hi).astype(np.int8 if activations == "int8" else np.uint8)
        qv = builder.initializer(f"{value.name}_quantized", q, qtype)
        sv = builder.initializer(f"{value.name}_scale", np.asarray(scale, dtype=np.float32))
        zv = builder.initializer(f"{value.name}_zero_point", np.asarray(zp, dtype=q.dtype), qtype)
        dq = builder.node("DequantizeLinear", [qv, sv, zv], value.name, "dequantized", ir.DataType.FLOAT, value.shape)
        builder.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])

    @staticmethod
    def _remove_unused_initializers(graph: ir.Graph) -> None:
        outputs = set(id(v) for v in graph.outputs)
        for name in list(graph.initializers):
            value = graph.initializers[name]
            if not value.uses() and id(value) not in outputs and not value.is_graph_input():
                del graph.initializers[name]
