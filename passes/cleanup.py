"""Cleanup: onnx_ir's common passes and onnxscript's constant folding, in one named pass."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
import onnx_ir.passes.common as common

from gencompress.passes.registry import GencompressPass, register


@register("cleanup")
class CleanupPass(GencompressPass):
    """Fold constants, drop unused nodes/initializers, merge duplicate initializers, sort topologically.

    Guarantees: graph inputs and outputs unchanged; numerics unchanged up to constant folding
    (which evaluates the same ops in float).
    """

    @dataclass(frozen=True)
    class Options:
        fold_constants: bool = True

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
        return ir.passes.PassResult(model, modified)


class _FoldConstants(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxscript.optimizer import fold_constants

        result = fold_constants(model)
        return ir.passes.PassResult(model, bool(getattr(result, "modified", True)))
