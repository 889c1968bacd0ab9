"""Cleanup: onnx_ir's common passes and onnxscript's constant folding, in one named pass.

It is also the one place that decides how every verb folds constants and strips the exporter's
debug metadata: ``quantize``'s ``prepare()`` and ``compress``'s recipe both go through
``fold_computed_weights`` and ``strip_debug_metadata``, so the two give the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from gencompress.passes.registry import GencompressPass, register

# Fold constant subgraphs up to this many elements: weights the graph computes from parameters
# (a GRU/LSTM's weights reshuffled by Slice/Concat, equalized-LR ``weight * scale``) become
# initializers a quantizer can store as int8. onnxscript's default limit (8,192) leaves most of
# them float.
FOLD_SIZE_LIMIT = 1 << 26
# Never folded: their outputs are larger than their inputs, so folding would grow the file.
GROWING_OPS = ("Expand", "Tile", "ConstantOfShape", "Range")
# Not folded when their constant input has other readers: the folded copy would store the same
# numbers twice (StyleGAN2 reads a conv weight directly and, Unsqueezed, in its demodulation).
SHAPE_OPS = ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Transpose")
# Per-node/value metadata the exporters write (source lines, absolute paths, stack traces).
DEBUG_METADATA_PREFIXES = ("pkg.torch", "pkg.onnxscript", "namespace")


def fold_computed_weights(model: ir.Model) -> bool:
    """Fold constant subgraphs in place by the policy above, the layers' parameters filled in by
    ConstantOfShape (``weight_fills``) included; True if the folder ran."""
    from onnxscript.optimizer import fold_constants

    fills = set(weight_fills(model.graph))

    def should_fold(node):
        if node in fills:
            return True
        if node.op_type in GROWING_OPS:
            return False
        if node.op_type in SHAPE_OPS and node.inputs and node.inputs[0] is not None and len(node.inputs[0].uses()) > 1:
            return False
        return None  # the folder's own decision

    try:
        result = fold_constants(model, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=_output_limit(fills), should_fold=should_fold)
    except Exception:  # the folder is an optimisation: without it weights behind reshuffles stay float
        return False
    return bool(getattr(result, "modified", True))


# ---- layer parameters the graph fills in: ConstantOfShape with a constant shape ------------------

# A parameter input of these ops (from this input index on): a fill read there is a parameter
# that a graph of this form stores nowhere, only its shape and value (the onnx wheel's "light"
# classic CNNs: every Conv/Gemm weight, bias and BatchNorm parameter a ConstantOfShape).
PARAMETER_INPUTS = {
    "Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 0, "GRU": 1, "LSTM": 1,
    "BatchNormalization": 1, "InstanceNormalization": 1, "LayerNormalization": 1, "GroupNormalization": 1,
    "PRelu": 1, "Mul": 0, "Add": 0,
}


def weight_fills(graph: ir.Graph) -> list[ir.Node]:
    """The graph's ConstantOfShape nodes with a constant shape whose value is read only as a
    layer's parameter (``PARAMETER_INPUTS``, directly or through ops that only move elements).
    Folded into initializers, they become weights the passes can prune and quantize; the file
    grows by their size, which is why other fills (a zero state, a mask) stay nodes."""
    fills = []
    for node in graph:
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        shape = node.inputs[0]
        if shape is None or shape.is_graph_input() or shape.const_value is None:
            continue  # a shape computed from an input (a batch-sized zero state) is no parameter
        if _fill_size(node) is not None and _read_as_parameter(node.outputs[0]):
            fills.append(node)
    return fills  # their total size was held to the machine's memory when the model was read (onnx_io)


def _read_as_parameter(value: ir.Value, depth: int = 0) -> bool:
    from gencompress.passes.prune_report import DATA_MOVEMENT_OPS

    uses = list(value.uses())
    if not uses or value.is_graph_output() or depth > 8:
        return False
    for node, index in uses:
        if node.domain not in ("", "ai.onnx"):
            return False
        first = PARAMETER_INPUTS.get(node.op_type)
        if first is not None and index >= first:
            continue
        if node.op_type in DATA_MOVEMENT_OPS and index == 0 and all(_read_as_parameter(out, depth + 1) for out in node.outputs):
            continue
        return False
    return True


def _fill_size(node: ir.Node) -> int | None:
    """Elements of a fill's output; None unless its shape is a valid constant (a 1-D int64
    vector of sizes >= 0, as the spec says: onnxruntime refuses anything else at load)."""
    try:
        dims = node.inputs[0].const_value.numpy()
    except Exception:
        return None
    if dims.dtype != np.int64 or dims.ndim != 1 or (dims < 0).any():
        return None
    return math.prod(int(d) for d in dims)


def _output_limit(fills) -> int:
    """The folder's output size limit: a fill is stored whatever its size (``weight_fills`` was
    held to the machine's memory when the model was read)."""
    return max([FOLD_SIZE_LIMIT, *(_fill_size(node) for node in fills)])


def fold_weight_fills(model: ir.Model) -> int:
    """Fold only the ``weight_fills`` of ``model`` into initializers, in place (the values the
    graph computes, bit for bit: onnxscript's folder evaluates them); returns how many. What
    prune, which folds nothing that is not bit-identical, needs to see those weights."""
    from onnxscript.optimizer import fold_constants

    fills = set(weight_fills(model.graph))
    if fills:
        fold_constants(model, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=_output_limit(fills), should_fold=lambda node: node in fills)
    return len(fills) - len(set(weight_fills(model.graph)) & fills)


def fills_note(model: ir.Model) -> str | None:
    """The verbs' note on ``weight_fills`` (said before folding them); None when there are none."""
    fills = weight_fills(model.graph)
    if not fills:
        return None
    mb = sum(_fill_size(node) * _fill_itemsize(node) for node in fills) / 1e6
    return (f"{len(fills)} layer parameter(s) the graph fills in with ConstantOfShape (values not stored, as in the onnx wheel's "
            f"'light' nets) made initializers, pruned or quantized as weights: the output stores them ({mb:.1f} MB as float)")


def _fill_itemsize(node: ir.Node) -> int:
    attr = node.attributes.get("value")
    try:
        return attr.value.dtype.itemsize if attr is not None else 4  # none: float32 zeros, the spec's default
    except Exception:
        return 4


def strip_debug_metadata(model: ir.Model) -> bool:
    """Drop the exporter's per-node and per-value debug metadata, in place; model-level metadata
    (input priors, output range) is kept. True if anything was dropped."""
    dropped = False

    def clean(props):
        nonlocal dropped
        for key in [k for k in props if k.startswith(DEBUG_METADATA_PREFIXES)]:
            del props[key]
            dropped = True

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        clean(node.metadata_props)
        for value in node.outputs:
            clean(value.metadata_props)
    for value in [*model.graph.initializers.values(), *model.graph.inputs, *model.graph.outputs]:
        clean(value.metadata_props)
    return dropped


@register("cleanup")
class CleanupPass(GencompressPass):
    """Fold constants, drop unused nodes/initializers, merge duplicate initializers, sort
    topologically; with ``strip_debug_metadata``, drop the exporter's debug metadata.

    Guarantees: graph inputs and outputs unchanged; numerics unchanged up to constant folding
    (which evaluates the same ops in float).
    """

    @dataclass(frozen=True)
    class Options:
        fold_constants: bool = True
        # off by default: compress and quantize strip once, at the end of the recipe / in prepare()
        strip_debug_metadata: bool = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        steps = [common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)]
        if self.options.fold_constants:
            note = fills_note(model)  # said before they are folded, in the step's report
            self.report = {"note": note} if note else None
            steps.append(_FoldConstants())
        steps += [
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
            common.DeduplicateInitializersPass(),
            common.TopologicalSortPass(),
        ]
        modified = False
        for step in steps:
            result = step(model)
            model, modified = result.model, modified or result.modified
        if self.options.strip_debug_metadata:
            modified = strip_debug_metadata(model) or modified
        return ir.passes.PassResult(model, modified)


class _FoldConstants(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, fold_computed_weights(model))
