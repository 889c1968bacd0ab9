"""The int8 rewrite sequence, in this order:

1. ``fold_batchnorm``: BatchNormalization folded into the Conv/ConvTranspose/Gemm before it, so a
   quantizer sees ``Conv -> Relu`` (fusable) rather than ``Conv -> BatchNormalization -> Relu``;
2. ``convtranspose_to_gemm``: ConvTranspose on a statically 1x1 input (the latent projection)
   becomes Flatten -> Gemm -> Reshape;
3. ``convtranspose_to_conv``: every other ConvTranspose with constant weights becomes a sub-pixel
   Conv -> DepthToSpace -> Slice (a plain Conv for stride 1), the activation after it moved
   next to the Conv;
4. ``cleanup``: drop what the rewrites left unused, fold constants, sort;
5. with ``channels_last``: ``depth_to_space_nhwc`` (the speed plan's layout);
6. with ``layout_rewrites``: ``resize_nhwc`` and ``conv_space_to_depth`` (how int8 Convs lay out
   their data).

``exclude`` names the layers that stay float: their ConvTransposes are left as they are and the
layout rewrites leave the Convs alone.

Every user of the rewrites (quantize, the speed plan, compress's recipes) runs this one
sequence: ``RewriteForInt8Pass``, in a recipe ``rewrite_for_int8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from gencompress.passes.cleanup import CleanupPass
from gencompress.passes.convtranspose_to_conv import ConvTransposeToConvPass
from gencompress.passes.conv_space_to_depth import ConvSpaceToDepthPass
from gencompress.passes.convtranspose_to_gemm import ConvTransposeToGemmPass
from gencompress.passes.depth_to_space_nhwc import DepthToSpaceNHWCPass
from gencompress.passes.fold_batchnorm import FoldBatchNormPass
from gencompress.passes.resize_nhwc import ResizeNHWCPass
from gencompress.passes.registry import GencompressPass, register

REWRITE_PASSES = ("fold_batchnorm", "convtranspose_to_gemm", "convtranspose_to_conv")


@register("rewrite_for_int8")
class RewriteForInt8Pass(GencompressPass):
    """fold_batchnorm -> convtranspose_to_gemm -> convtranspose_to_conv -> cleanup.

    The order matters: BatchNorm must go first so the activation after each ConvTranspose is its
    sole consumer (and can move next to the new Conv/Gemm); the 1x1 case must be claimed by the
    Gemm rewrite before the general sub-pixel one would turn it into a padded Conv.

    Guarantees: graph inputs and outputs unchanged (names, dtypes, ranks, dynamic dims),
    metadata kept; outputs equal the original's up to float rounding of folded weights.
    ``self.report`` holds each step's report.
    """

    @dataclass(frozen=True)
    class Options:
        fold_batchnorm: bool = True
        gemm: bool = True  # ConvTranspose on 1x1 input -> Gemm
        conv: bool = True  # other ConvTranspose -> sub-pixel Conv
        hoist_activations: bool = True
        depth_to_space: str = "CRD"  # CRD | DCR | reshape: how phases interleave (see convtranspose_to_conv)
        layout: str = "auto"  # auto | fused | phases (see convtranspose_to_conv)
        cleanup: bool = True
        exclude: tuple[str, ...] = ()  # layers (node names) that stay float
        channels_last: bool = False
        layout_rewrites: bool = False

        def __post_init__(self):
            # the same checks (and messages) as the pass that takes these options
            ConvTransposeToConvPass.Options(depth_to_space=self.depth_to_space, layout=self.layout)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        o = self.options
        exclude = tuple(o.exclude)
        steps = []
        if o.fold_batchnorm:
            steps.append(FoldBatchNormPass())
        if o.gemm:
            steps.append(ConvTransposeToGemmPass(ConvTransposeToGemmPass.Options(hoist_activations=o.hoist_activations, exclude=exclude)))
        if o.conv:
            steps.append(ConvTransposeToConvPass(ConvTransposeToConvPass.Options(
                depth_to_space=o.depth_to_space, hoist_activations=o.hoist_activations, layout=o.layout, exclude=exclude)))
        modified = False
        report = {}
        for step in steps:
            result = step(model)
            model, modified = result.model, modified or result.modified
            report[step.pass_name] = step.report
        if o.cleanup and modified:
            model = CleanupPass()(model).model
        after = [DepthToSpaceNHWCPass()] if o.channels_last else []
        if o.layout_rewrites:
            after += [ResizeNHWCPass(ResizeNHWCPass.Options(exclude=exclude)),
                      ConvSpaceToDepthPass(ConvSpaceToDepthPass.Options(exclude=exclude))]
        for step in after:
            result = step(model)
            model, modified = result.model, modified or result.modified
            report[step.pass_name] = step.report
        self.report = report
        return ir.passes.PassResult(model, modified)


def rewrite_for_int8(model: ir.Model, **options) -> tuple[ir.Model, dict]:
    """Run the int8 rewrites on an ``onnx_ir.Model`` in place; return it and the per-pass report."""
    p = RewriteForInt8Pass(RewriteForInt8Pass.Options(**options))
    result = p(model)
    return result.model, p.report

