"""Cleanup: onnx_ir's common passes and onnxscript's constant folding, in one named pass.

It is also the one place that decides how every verb folds constants and strips the exporter's
debug metadata: ``quantize``'s ``prepare()`` and ``compress``'s recipe both go through
``fold_computed_weights`` and ``strip_debug_metadata``, so the two give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Fold constant subgraphs in place by the policy above; True if the folder ran."""
    from onnxscript.optimizer import fold_constants

    def should_fold(node):
        if node.op_type in GROWING_OPS:
            return False
        if node.op_type in SHAPE_OPS and node.inputs and node.inputs[0] is not None and len(node.inputs[0].uses()) > 1:
            return False
        return None  # the folder's own decision

    try:
        result = fold_constants(model, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT, should_fold=should_fold)
    except Exception:  # the folder is an optimisation: without it weights behind reshuffles stay float
        return False
    return bool(getattr(result, "modified", True))


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
