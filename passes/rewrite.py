"""The graph surgery the int8 rewrite passes share: constant lookup, unique names, new nodes,
static shapes, activation hoisting, replacing a chain of nodes. The sequence itself is
``passes/int8_rewrites.py``.

Each rewrite built on these is exact in float (same ops on the same numbers, up to float
rounding of folded weights); onnxruntime has int8 kernels for Conv and Gemm, but not for
ConvTranspose, which a QDQ graph runs as dequantize -> float ConvTranspose -> quantize.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_ir as ir


# ---- shared helpers --------------------------------------------------------------------------

# Elementwise ops with no per-channel parameters: f(move(x)) == move(f(x)) for any data movement
# (DepthToSpace, Slice, Reshape, Transpose), so they can run before it, next to the Conv/Gemm,
# where a QDQ quantizer fuses them (Conv + Relu).
HOISTABLE_ACTIVATIONS = frozenset(
    {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Clip"}
)


def is_onnx_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def onnx_opset(model: ir.Model) -> int:
    """The model's default-domain opset version (0 if it imports none)."""
    imports = model.opset_imports
    return int(imports.get("", imports.get("ai.onnx", 0)))


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value`` as numpy (initializer, Constant node, through Identity), else None.

    A graph input that also has an initializer (an overridable default) is not a constant.
    """
    seen = 0
    while value is not None and seen < 16:
        if value.is_graph_input():
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is None or not is_onnx_domain(node):
            return None
        if node.op_type == "Identity" and len(node.inputs) == 1:
            value = node.inputs[0]
            seen += 1
            continue
        if node.op_type == "Constant":
            try:
                tensor = ir.convenience.get_const_tensor(value)
            except ValueError:
                return None
            return None if tensor is None else tensor.numpy()
        return None
    return None


class Namer:
    """Unique, deterministic value and node names for new graph elements: ``base``, ``base_1``, ..."""

    def __init__(self, graph: ir.Graph):
        self._used: set[str] = set()
        for value in [*graph.inputs, *graph.outputs, *graph.initializers.values()]:
            if value.name:
                self._used.add(value.name)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.name:
                self._used.add(node.name)
            for value in node.outputs:
                if value.name:
                    self._used.add(value.name)

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name


def add_initializer(graph: ir.Graph, namer: Namer, base: str, array: np.ndarray) -> ir.Value:
    """A new initializer holding ``array`` (never overwrites or aliases an existing one)."""
    array = np.ascontiguousarray(array)
    name = namer(base)
    value = ir.Value(
        name=name,
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def new_node(namer: Namer, base: str, op_type: str, inputs, attributes=None, dtype=None, shape=None) -> ir.Node:
    """A default-domain node with one named output (not yet in a graph)."""
    node = ir.node(op_type, list(inputs), attributes or {}, name=namer(f"{base}/{op_type}"))
    out = node.outputs[0]
    out.name = namer(f"{base}/{op_type}_output")
    if dtype is not None:
        out.type = ir.TensorType(dtype)
    if shape is not None:
        out.shape = ir.Shape(shape)
    return node


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value`` (through one input slot), if it is not also a graph output."""
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    return uses[0].node


def hoistable_activation(value: ir.Value) -> ir.Node | None:
    """The elementwise activation that alone consumes ``value``, if it can move before data movement."""
    node = only_consumer(value)
    if node is None or not is_onnx_domain(node) or node.op_type not in HOISTABLE_ACTIVATIONS:
        return None
    if len(node.outputs) != 1 or node.inputs[0] is not value:
        return None
    if node.op_type == "Clip":
        for bound in node.inputs[1:]:
            if bound is None:
                continue
            arr = const_array(bound)
            if arr is None or arr.size != 1:
                return None
    return node


def hoisted_copy(namer: Namer, base: str, activation: ir.Node, value: ir.Value) -> ir.Node:
    """A copy of ``activation`` (same attributes and extra inputs) reading ``value``, shaped like it."""
    act = ir.node(
        activation.op_type, [value, *activation.inputs[1:]],
        {a.name: a for a in activation.attributes.values()},
        name=namer(f"{activation.name or base}/hoisted"),
    )
    act.outputs[0].name = namer(f"{base}/{activation.op_type}_output")
    act.outputs[0].type = value.type
    act.outputs[0].shape = value.shape
    return act


def static_shapes(model: ir.Model) -> dict[str, tuple[int | None, ...]]:
    """Shapes by value name from onnx shape inference on a copy (the model is not touched).

    Unknown or symbolic dims are None. Used only where a value carries no shape of its own.
    """
    import onnx

    from gencompress.onnx_io import skeleton

    try:  # on the graph without its weights: a full copy of a large model would double its memory
        proto = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for info in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        t = info.type.tensor_type
        if not t.HasField("shape"):
            continue
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return shapes


class ShapeLookup:
    """``dims(value)``: the value's dims (None where not static) or None if its rank is unknown."""

    def __init__(self, model: ir.Model):
        self._model = model
        self._inferred: dict | None = None

    def dims(self, value: ir.Value) -> tuple[int | None, ...] | None:
        if value.shape is not None:
            own = tuple(d if isinstance(d, int) else None for d in value.shape)
            if all(d is not None for d in own):
                return own
        else:
            own = None
        if self._inferred is None:
            self._inferred = static_shapes(self._model)
        inferred = self._inferred.get(value.name)
        if own is None:
            return inferred
        if inferred is None or len(inferred) != len(own):
            return own
        return tuple(a if a is not None else b for a, b in zip(own, inferred))


def replace_with(graph: ir.Graph, old_nodes: list[ir.Node], new_nodes: list[ir.Node], old_value: ir.Value, new_value: ir.Value) -> None:
    """Put ``new_nodes`` where ``old_nodes[0]`` was; ``new_value`` takes over ``old_value``'s uses and name."""
    name = old_value.name
    old_value.name = None  # free the name for the value that takes its place
    ir.convenience.replace_nodes_and_values(graph, old_nodes[0], old_nodes, new_nodes, [old_value], [new_value])
    new_value.name = name
    take_over_metadata(old_value, new_value)


def take_over_metadata(old_value: ir.Value, new_value: ir.Value) -> None:
    """``new_value`` keeps ``old_value``'s metadata_props (a graph output's, e.g. from the exporter)."""
    for key, item in old_value.metadata_props.items():
        new_value.metadata_props.setdefault(key, item)
    if old_value.doc_string and not new_value.doc_string:
        new_value.doc_string = old_value.doc_string


def drop_if_unused(graph: ir.Graph, values) -> None:
    """Remove initializers among ``values`` that nothing reads any more (never graph inputs/outputs)."""
    for value in values:
        if value is None or value.name not in graph.initializers or graph.initializers[value.name] is not value:
            continue
        if value.is_graph_input() or value.is_graph_output() or value.uses():
            continue
        del graph.initializers[value.name]


def count_by(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))
