"""Activation ranges carried across the int8 rewrites: calibrate the model before the rewrites,
then give each tensor a rewrite creates the range of the tensor whose values it holds."""

from __future__ import annotations

from typing import Mapping

# ops that only move values: the output holds each input value equally often (a permutation, or
# Expand's uniform repeat), so every method's range of the output is the input's
MOVING_OPS = frozenset({"Reshape", "Flatten", "Transpose", "DepthToSpace", "SpaceToDepth", "Squeeze", "Unsqueeze", "Identity", "Expand"})
# and a Slice: when it alone reads a tensor, the values it drops are read by nobody
FORWARD_OPS = MOVING_OPS | {"Slice"}


def carry_ranges(graph, before, ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Ranges for the tensors of ``graph`` that ``before`` does not compute, where ``graph`` is
    ``before`` (both onnx_ir graphs) after rewrites that keep a tensor's name only with its values,
    and ``ranges`` holds the ranges of ``before``'s tensors by name. A tensor the rewrites made
    gets the range of the one it holds the values of: found through ops that only move values
    (``MOVING_OPS``, either way), a Slice that alone reads it (what the Slice drops, nobody
    reads), or an elementwise activation the rewrites moved before such ops, whose original in
    ``before`` reads that tensor. So the model before the rewrites can be calibrated in their
    place. A tensor with no such match is left out (the caller calibrates it)."""
    from gencompress.passes.rewrite import HOISTABLE_ACTIVATIONS, is_onnx_domain

    made_before = {v.name: node for node in before for v in node.outputs}
    graph_outputs = {v.name for v in graph.outputs}
    known = dict(ranges)
    walking: set[str] = set()

    def sole_reader(value):
        uses = list(value.uses())
        if value.name in graph_outputs or len(uses) != 1 or uses[0].idx != 0 or not is_onnx_domain(uses[0].node):
            return None
        return uses[0].node

    def moved_activation_input(act):
        """The range of what ``act`` reads, if its output only moves on to a tensor ``before``
        computes with the same activation."""
        current = act.outputs[0]
        while current.name not in made_before:
            reader = sole_reader(current)
            if reader is None or reader.op_type not in FORWARD_OPS:
                return None
            current = reader.outputs[0]
        original = made_before[current.name]
        same = (
            original.op_type == act.op_type and len(original.inputs) == len(act.inputs) and original.inputs[0] is not None
            and all((a is None) == (b is None) and (a is None or a.name == b.name) for a, b in zip(original.inputs[1:], act.inputs[1:]))
            and {k: a.value for k, a in original.attributes.items()} == {k: a.value for k, a in act.attributes.items()}
        )
        return known.get(original.inputs[0].name) if same else None

    def find(value):
        if value.name in known or value.name in walking:
            return known.get(value.name)
        walking.add(value.name)
        found = None
        producer = value.producer()
        if producer is not None and is_onnx_domain(producer) and producer.op_type in MOVING_OPS and producer.inputs[0] is not None:
            found = find(producer.inputs[0])
        reader = sole_reader(value) if found is None else None
        if reader is not None and reader.op_type in FORWARD_OPS:
            found = find(reader.outputs[0])
        elif reader is not None and reader.op_type in HOISTABLE_ACTIVATIONS:
            found = moved_activation_input(reader)
        walking.discard(value.name)
        if found is not None:
            known[value.name] = found
        return found

    carried = {}
    for value in [*graph.inputs, *(v for node in graph for v in node.outputs)]:
        if value.name and value.name not in ranges and find(value) is not None:
            carried[value.name] = known[value.name]
    return carried

