"""float16 conversion: float32 weights and activations to float16, graph inputs/outputs kept float32.

A node is converted when its operator accepts float16 in every slot that carries float32 now
(read off the ONNX schema of the model's opset); slots fixed to float32 by the schema (e.g.
Resize's ``scales``) stay float32. Nodes that cannot be converted (no float16 in the schema,
random ops with a dtype attribute, ops with subgraphs, other domains) and nodes named in
``exclude`` stay float32. Cast nodes go wherever a float16 value meets a float32 slot or the
reverse, so the model is type-correct; with ``keep_io_types`` (default) the graph's inputs and
outputs keep their float32 type and names, with a Cast at each boundary.

Workaround: a Transpose feeding a MatMul stays float32 (onnxruntime 1.32's CPU session setup
crashes on a float16 Transpose → MatMul pair of rank 3, in its NchwcTransformer).

Initializers are rounded to float16 (values beyond ±65504 saturate). onnxruntime's CPU provider
runs float16 nodes it has no float16 kernel for by casting around them, so the model runs
everywhere; the gain is size (and speed on hardware with float16 units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from gencompress.passes.insert_qdq import Builder
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import onnx_opset

FLOAT, HALF = ir.DataType.FLOAT, ir.DataType.FLOAT16
# ops whose float output type comes from an attribute, not from their inputs
DTYPE_ATTRIBUTE_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli", "Multinomial"}
HALF_MAX = float(np.finfo(np.float16).max)


def _schema(node: ir.Node, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:
        return None


def _slot_types(params, count: int) -> list[str]:
    """The type string of each of ``count`` actual inputs/outputs (variadic last parameter repeats)."""
    types = []
    for i in range(count):
        if i < len(params):
            types.append(params[i].type_str)
        elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            types.append(params[-1].type_str)
        else:
            types.append("")
    return types


class _NodeTypes:
    """Which input/output slots of a node become float16 if the node is converted."""

    def __init__(self, node: ir.Node, opset: int, excluded: bool):
        self.node = node
        self.half_inputs: set[int] = set()
        self.half_outputs: set[int] = set()
        self.convert = False
        if excluded or node.domain not in ("", "ai.onnx") or node.op_type in DTYPE_ATTRIBUTE_OPS:
            return
        if node.op_type == "Transpose" and any(u.node.op_type == "MatMul" for u in node.outputs[0].uses()):
            return  # see the module docstring: onnxruntime crashes on float16 Transpose -> MatMul
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            return
        schema = _schema(node, opset)
        if schema is None:
            return
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        in_types = _slot_types(schema.inputs, len(node.inputs))
        out_types = _slot_types(schema.outputs, len(node.outputs))
        slots = [(True, i, v, t) for i, (v, t) in enumerate(zip(node.inputs, in_types))]
        slots += [(False, i, v, t) for i, (v, t) in enumerate(zip(node.outputs, out_types))]
        for is_input, i, value, type_str in slots:
            if value is None or value.dtype != FLOAT:
                continue
            if type_str in allowed:
                if "tensor(float16)" not in allowed[type_str]:
                    return  # this op cannot compute in float16
                (self.half_inputs if is_input else self.half_outputs).add(i)
            # else: a slot fixed to tensor(float) by the schema stays float32
        if node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT:
            self.half_outputs.add(0)
        if node.op_type in ("Constant", "ConstantOfShape"):
            attr = node.attributes.get("value")
            if attr is not None and attr.as_tensor().dtype == FLOAT:
                self.half_outputs.add(0)
            elif attr is None and node.op_type == "Constant":
                self.half_outputs.discard(0)  # value_float / value_floats: left float32, cast where read
        self.convert = bool(self.half_inputs or self.half_outputs)


@register("fp16_convert")
class FP16ConvertPass(GencompressPass):
    """Convert float32 compute and weights to float16 (see the module docstring).

    Guarantees: with ``keep_io_types`` the graph inputs and outputs keep names, float32 dtype and
    ranks; the model stays type-correct (Casts where float16 meets float32).
    """

    @dataclass(frozen=True)
    class Options:
        keep_io_types: bool = True  # graph inputs/outputs stay float32, with Casts at the boundary
        exclude: tuple[str, ...] = ()  # node names or op types kept in float32

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from gencompress.errors import GencompressError

        opts = self.options
        graph = model.graph
        opset = onnx_opset(model)
        nodes = list(graph)
        for pattern in opts.exclude:
            if not any(pattern in (n.name, n.op_type) for n in nodes):
                raise GencompressError(f"--exclude {pattern!r}: no node or op type of that name in the model")
        info = {id(n): _NodeTypes(n, opset, any(p in (n.name, n.op_type) for p in opts.exclude)) for n in nodes}
        converted = [n for n in nodes if info[id(n)].convert]
        if not converted:
            raise GencompressError("nothing to convert: the model has no float32 computation that float16 can take")

        # node outputs
        for node in converted:
            t = info[id(node)]
            for i in t.half_outputs:
                node.outputs[i].dtype = HALF
            if node.op_type == "Cast" and 0 in t.half_outputs:
                node.attributes["to"] = ir.AttrInt64("to", HALF)
            if node.op_type in ("Constant", "ConstantOfShape") and 0 in t.half_outputs:
                attr = node.attributes.get("value")
                # a ConstantOfShape without a value fills with float32 zeros (the spec's default),
                # as an RNN's batch-sized zero initial state exports: give it a float16 zero
                array, name = (attr.as_tensor().numpy(), attr.as_tensor().name) if attr is not None else (np.zeros(1, np.float32), None)
                node.attributes["value"] = ir.AttrTensor("value", _half_tensor(array, name))

        # initializers read only in float16 slots become float16; mixed readers keep both
        builder = Builder(graph)
        converted_bytes = 0
        for name in list(graph.initializers):
            value = graph.initializers[name]
            if value.dtype != FLOAT or value.const_value is None or value.is_graph_input():
                continue
            uses = value.uses()
            half_uses = [u for u in uses if u.idx in info.get(id(u.node), _EMPTY).half_inputs]
            if not half_uses:
                continue
            array = value.const_value.numpy()
            if len(half_uses) == len(uses) and not value.is_graph_output():
                value.const_value = _half_tensor(array, value.name)
                value.dtype = HALF
            else:
                copy = builder.initializer(f"{value.name}_fp16", _half_array(array), HALF)
                for u in half_uses:
                    u.node.replace_input_with(u.idx, copy)
            converted_bytes += array.nbytes

        if not opts.keep_io_types:
            for value in graph.inputs:
                if value.dtype == FLOAT:
                    value.dtype = HALF

        # Casts wherever a value's type differs from what its reader's slot now expects
        casts: dict[tuple[str, int], ir.Value] = {}

        def cast(value: ir.Value, to: ir.DataType, before: ir.Node) -> ir.Value:
            key = (value.name, int(to))
            if key not in casts:
                suffix = "fp16" if to == HALF else "fp32"
                node = builder.node("Cast", [value], value.name, suffix, to, value.shape, {"to": to})
                producer = value.producer()
                if producer is not None:
                    graph.insert_after(producer, node)
                else:
                    graph.insert_before(before, node)
                casts[key] = node.outputs[0]
            return casts[key]

        for node in list(graph):
            t = info.get(id(node))
            if t is None:
                continue  # a Cast added here
            for i, value in enumerate(node.inputs):
                if value is None or value.dtype not in (FLOAT, HALF):
                    continue
                want = HALF if (t.convert and i in t.half_inputs) else FLOAT
                if value.dtype != want:
                    node.replace_input_with(i, cast(value, want, node))
        cast_count = len(casts)

        for index, value in enumerate(list(graph.outputs)):
            if value.dtype == HALF and opts.keep_io_types:
                name = value.name
                value.name = builder.unique(f"{name}_fp16")
                node = ir.node("Cast", [value], {"to": FLOAT}, name=builder.unique(f"{name}_Cast"))
                out = node.outputs[0]
                out.name, out.dtype, out.shape = name, FLOAT, value.shape
                graph.insert_after(value.producer(), node) if value.producer() is not None else graph.append(node)
                graph.outputs[index] = out
                cast_count += 1
        for name in list(graph.initializers):
            v = graph.initializers[name]
            if not v.uses() and not v.is_graph_output() and not v.is_graph_input():
                del graph.initializers[name]
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.TopologicalSortPass()(model)
        kept = [n for n in graph if id(n) in info and not info[id(n)].convert and any(v is not None and v.dtype == FLOAT for v in n.outputs)]
        self.report = {
            "float16_nodes": len(converted),
            "float32_nodes": [{"node": n.name, "op_type": n.op_type} for n in kept],
            "casts": cast_count,
            "converted_weight_bytes": converted_bytes,
            "keep_io_types": opts.keep_io_types,
        }
        return ir.passes.PassResult(model, True)


class _Empty:
    half_inputs: set = frozenset()


_EMPTY = _Empty()


def _half_array(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -HALF_MAX, HALF_MAX).astype(np.float16)


def _half_tensor(array: np.ndarray, name: str | None) -> ir.Tensor:
    return ir.Tensor(_half_array(array), name=name)
