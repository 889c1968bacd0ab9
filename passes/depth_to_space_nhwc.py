"""DepthToSpace (DCR) [+ Slice] after a Conv -> the same pixel shuffle spelled channels-last.

onnxruntime runs an int8 Conv (QLinearConv) channels-last on the CPU and wraps it in
Transpose(NCHW->NHWC) ... Transpose(NHWC->NCHW). Its transpose optimizer cancels such pairs
between two int8 Convs, but not across a DepthToSpace, which only exists in NCHW: a rewritten
ConvTranspose stack (convtranspose_to_conv: Conv -> DepthToSpace -> Slice) keeps two Transposes
and a DepthToSpace per layer (zoo dcgan, batch 1: 38% of kernel time).

This pass writes ``Transpose(0,2,3,1) -> Reshape [N,H,W,r,r,C] -> Transpose(0,1,3,2,4,5) ->
Reshape [N,H*r,W*r,C] -> Slice (axes moved) -> Transpose(0,3,1,2)``. The first and last
Transposes cancel against onnxruntime's around the int8 Convs, leaving one Transpose per layer
that moves whole C-channel rows (DCR puts the channel innermost; with CRD it would gather single
bytes and be slower than DepthToSpace). Exact: the same elements in the same places.

Only DepthToSpace in DCR mode with a static input shape [N, r*r*C, H, W] whose input comes from a
Conv (directly or through one elementwise activation) is rewritten; in a float graph the extra
Transposes cost time, so ``speed_plan`` uses this only for configurations it times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, add_initializer

NCHW_TO_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip")


def _after_conv(value: ir.Value) -> bool:
    p = value.producer()
    if p is not None and p.op_type in ACTIVATIONS:
        p = p.inputs[0].producer() if p.inputs[0] is not None else None
    return p is not None and p.op_type == "Conv"


@register("depth_to_space_nhwc")
class DepthToSpaceNHWCPass(GencompressPass):
    """See the module docstring. Graph inputs and outputs unchanged; outputs exactly equal."""

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        namer = Namer(graph)
        done = []
        for d2s in [n for n in graph if n.op_type == "DepthToSpace" and n.domain in ("", "ai.onnx")]:
            if d2s.attributes.get_string("mode", "DCR") != "DCR" or not _after_conv(d2s.inputs[0]):
                continue
            x, y = d2s.inputs[0], d2s.outputs[0]
            dims = list(x.shape.dims) if x.shape is not None else []
            if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
                continue
            r = d2s.attributes.get_int("blocksize")
            _, rrc, h, w = dims
            c = rrc // (r * r)
            uses = list(y.uses())
            crop = uses[0].node if len(uses) == 1 and uses[0].node.op_type == "Slice" and y not in graph.outputs else None
            if crop is not None and not self._axes_known(crop):
                crop = None
            base = d2s.name or "DepthToSpace"

            def node(op, inputs, attrs=None):
                return ir.node(op, inputs, attrs or {}, name=namer(f"{base}_nhwc_{op}"), outputs=[ir.Value(name=namer(f"{base}_nhwc_{op}_out"))])

            nodes = [node("Transpose", [x], {"perm": [0, 2, 3, 1]})]
            nodes.append(node("Reshape", [nodes[-1].outputs[0], add_initializer(graph, namer, f"{base}_nhwc_shape6", np.array([0, h, w, r, r, c], np.int64))]))
            nodes.append(node("Transpose", [nodes[-1].outputs[0]], {"perm": [0, 1, 3, 2, 4, 5]}))
            nodes.append(node("Reshape", [nodes[-1].outputs[0], add_initializer(graph, namer, f"{base}_nhwc_shape4", np.array([0, h * r, w * r, c], np.int64))]))
            last, replaced = nodes[-1].outputs[0], y
            if crop is not None:
                axes = self._axes(crop)
                moved = add_initializer(graph, namer, f"{base}_nhwc_axes", np.array([NCHW_TO_NHWC_AXIS[a] for a in axes], np.int64))
                extra = list(crop.inputs[4:]) if len(crop.inputs) > 4 else []
                nodes.append(node("Slice", [last, crop.inputs[1], crop.inputs[2], moved, *extra]))
                last, replaced = nodes[-1].outputs[0], crop.outputs[0]
            back = node("Transpose", [last], {"perm": [0, 3, 1, 2]})
            back.outputs[0].type, back.outputs[0].shape = replaced.type, replaced.shape
            nodes.append(back)
            graph.insert_before(d2s, nodes)
            # the new value takes the name (and a graph output's place) of the one it replaces: it
            # holds the same values (calibration finds a tensor's range by its name)
            name = replaced.name
            replaced.name = namer(f"{name}_replaced")
            back.outputs[0].name = name
            if replaced in graph.outputs:
                graph.outputs[list(graph.outputs).index(replaced)] = back.outputs[0]
            replaced.replace_all_uses_with(back.outputs[0])
            if crop is not None:
                graph.remove(crop, safe=True)
            graph.remove(d2s, safe=True)
            done.append(d2s.name)
        self.report = {"rewritten": done}
        return ir.passes.PassResult(model, bool(done))

    @staticmethod
    def _axes_known(crop: ir.Node) -> bool:
        if any(v is not None and v.const_value is None for v in crop.inputs[1:]):
            return False
        return True

    @staticmethod
    def _axes(crop: ir.Node) -> list[int]:
        if len(crop.inputs) > 3 and crop.inputs[3] is not None:
            return [int(a) % 4 for a in crop.inputs[3].const_value.numpy()]
        return list(range(len(crop.inputs[1].const_value.numpy())))
