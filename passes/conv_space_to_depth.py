"""A Conv with few output channels -> SpaceToDepth -> Conv with r*r times the channels -> DepthToSpace.

The layer that draws the picture (Conv 9x9 or 3x3 -> 3 channels, full resolution) is one of a
generator's slowest in int8: onnxruntime runs a QLinearConv whose output channels are fewer than
its kernels' 16-channel tiles as a GEMM over every output pixel with most lanes idle (style-transfer
family at batch 64: the 9x9 16->3 Conv alone was 19% of int8 kernel time, 31 ms, for 12% of the
multiply-adds). Computing r x r output pixels per position instead gives the GEMM r*r times the
output channels on r*r times fewer positions:

    y = Conv(x, w)   ==   DepthToSpace_r(Conv(SpaceToDepth_r(x), w'))

with ``w'[(a*r+b)*C_out + o, (al*r+be)*C_in + c, t, s] = w[o, c, r*(t+t0)+al-a+pad_top,
r*(s+s0)+be-b+pad_left]`` (zero where that tap is outside the kernel): output pixel (r*y+a, r*x+b)
reads input pixel (r*(y+t+t0)+al, r*(x+s+s0)+be). Both orders are DCR (channel = block * C + c),
the bias is repeated per block. Exact in float: every output is the same sum of the same products
(zero taps add nothing). In int8 each block channel gets its own weight scale from the taps it
has, never coarser than the original channel's.

Rewritten: default-domain 2-D Convs with constant weights, group 1, stride 1, dilation 1, a
"same" output size (pads summing to kernel - 1 per axis, explicit or auto_pad SAME), a static
input height and width divisible by r, at most ``max_out_channels`` output channels (onnxruntime's
GEMM tiles are 16 wide), and extra multiply-adds from the zero taps at most ``max_work`` times the
original's. r is the smallest of 2, 4 that gives 16 output channels or more. The Convs that
``exclude`` keeps in float are left alone: in float, onnxruntime's own Conv is faster than the
rewritten form. The new nodes are named ``<conv>/SpaceToDepth``, ``<conv>/Conv``,
``<conv>/DepthToSpace``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, ShapeLookup, add_initializer, const_array, drop_if_unused, is_onnx_domain, new_node, replace_with

BLOCKS = (2, 4)
FEW_CHANNELS_NOT = "not few output channels"  # the reason not reported: most Convs
GEMM_TILE = 16  # onnxruntime's int8 GEMM / indirect Conv kernels compute 16 output channels at a time


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else default


def same_pads(node: ir.Node, kernel: list[int]) -> list[int] | None:
    """[top, left, bottom, right] when the Conv keeps the input size (stride 1), else None."""
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [k - 1 for k in kernel]
        small = [t // 2 for t in total]
        big = [t - s for t, s in zip(total, small)]
        return small + big if auto_pad == "SAME_UPPER" else big + small
    if auto_pad != "NOTSET":
        return None
    pads = _ints(node, "pads", [0, 0, 0, 0])
    if len(pads) != 4 or any(p < 0 for p in pads) or any(pads[i] + pads[i + 2] != kernel[i] - 1 for i in range(2)):
        return None
    return pads


def block_taps(kernel: int, pad_begin: int, r: int) -> tuple[int, int]:
    """(first block offset t0 <= 0, number of block taps) for one axis."""
    first = -pad_begin // r  # floor((0 - pad) / r)
    last = (r - 1 + kernel - 1 - pad_begin) // r
    return first, last - first + 1


def space_to_depth_weight(w: np.ndarray, pads: list[int], r: int) -> np.ndarray:
    """``w'`` of the module docstring for weight ``w`` [C_out, C_in, kh, kw] and block ``r``."""
    c_out, c_in, kh, kw = w.shape
    (t0, th), (s0, tw) = block_taps(kh, pads[0], r), block_taps(kw, pads[1], r)
    out = np.zeros((r * r * c_out, r * r * c_in, th, tw), w.dtype)
    t, s = np.arange(th), np.arange(tw)
    for a in range(r):
        for b in range(r):
            for al in range(r):
                for be in range(r):
                    i = r * (t + t0) + al - a + pads[0]
                    j = r * (s + s0) + be - b + pads[1]
                    ti, sj = np.flatnonzero((i >= 0) & (i < kh)), np.flatnonzero((j >= 0) & (j < kw))
                    if not len(ti) or not len(sj):
                        continue
                    rows = slice((a * r + b) * c_out, (a * r + b + 1) * c_out)
                    cols = slice((al * r + be) * c_in, (al * r + be + 1) * c_in)
                    out[rows, cols, ti[:, None], sj[None, :]] = w[:, :, i[ti][:, None], j[sj][None, :]]
    return out


@register("conv_space_to_depth")
class ConvSpaceToDepthPass(GencompressPass):
    """See the module docstring. Graph inputs and outputs unchanged; outputs equal up to float
    summation order."""

    @dataclass(frozen=True)
    class Options:
        exclude: tuple[str, ...] = ()  # Convs that compute in float (node name, op type or weight name, as --exclude)
        max_out_channels: int = GEMM_TILE - 1
        max_work: float = 2.0  # multiply-adds of the rewritten Conv / the original's

        def __post_init__(self):
            if self.max_out_channels < 1:
                raise ValueError(f"max_out_channels must be 1 or more, got {self.max_out_channels}")
            if not math.isfinite(self.max_work) or self.max_work < 1.0:
                raise ValueError(f"max_work must be a finite number, 1 or more (the rewrite never does less work), got {self.max_work}")

    def plan(self, node: ir.Node, shapes: ShapeLookup) -> tuple[int, list[int]] | str:
        """(r, pads) for a Conv this pass rewrites, else why not."""
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return "no weight"
        weight = node.inputs[1]  # its shape, without reading a large weight's values
        w = weight.const_value if weight.const_value is not None and not weight.is_graph_input() else const_array(weight)
        if w is None or len(w.shape) != 4:
            return "weight not a constant 2-D kernel"
        if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
            return "bias not constant"
        if node.attributes.get_int("group", 1) != 1 or set(_ints(node, "strides", [1, 1])) != {1} or set(_ints(node, "dilations", [1, 1])) != {1}:
            return "grouped, strided or dilated"
        c_out, c_in, kh, kw = (int(d) for d in w.shape)
        if c_out > self.options.max_out_channels:
            return f"{FEW_CHANNELS_NOT}: {c_out} output channels"
        pads = same_pads(node, [kh, kw])
        if pads is None:
            return "output size differs from the input's"
        dims = shapes.dims(node.inputs[0])
        if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:]):
            return "input height/width not static"
        for r in BLOCKS:
            if r * r * c_out < GEMM_TILE and r != BLOCKS[-1]:
                continue
            if dims[2] % r or dims[3] % r:
                return f"input {dims[2]}x{dims[3]} not divisible by {r}"
            taps = block_taps(kh, pads[0], r)[1] * block_taps(kw, pads[1], r)[1]
            work = r * r * taps / (kh * kw)
            if work > self.options.max_work:
                return f"{work:.1f}x the multiply-adds with {r}x{r} blocks"
            return r, pads
        return "no block size"

    def plans(self, model: ir.Model) -> dict[str, tuple[ir.Node, tuple[int, list[int]] | str]]:
        """{Conv name: (node, its plan or why not)} for the Convs not excluded."""
        shapes = ShapeLookup(model)
        patterns = set(self.options.exclude)
        convs = [n for n in model.graph if is_onnx_domain(n) and n.op_type == "Conv"]
        return {n.name: (n, self.plan(n, shapes)) for n in convs if not patterns & {n.name, n.op_type, *(v.name for v in n.inputs[1:] if v is not None)}}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        namer = Namer(model.graph)
        done, left = [], []
        for node, plan in self.plans(model).values():
            if not isinstance(plan, str):
                done.append(self._rewrite(model.graph, namer, node, *plan))
            elif not plan.startswith(FEW_CHANNELS_NOT):
                left.append({"node": node.name, "reason": plan})
        self.report = {"rewritten": done, "left_alone": left}
        return ir.passes.PassResult(model, bool(done))

    @staticmethod
    def _rewrite(graph: ir.Graph, namer: Namer, node: ir.Node, r: int, pads: list[int]) -> dict:
        x, y = node.inputs[0], node.outputs[0]
        w = const_array(node.inputs[1])
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        c_out, _, kh, kw = w.shape
        base = node.name or y.name or "Conv"
        w2 = space_to_depth_weight(w, pads, r)
        (t0, th), (s0, tw) = block_taps(kh, pads[0], r), block_taps(kw, pads[1], r)
        inputs = [None, add_initializer(graph, namer, f"{base}.space_to_depth_weight", w2)]
        if bias is not None:
            inputs.append(add_initializer(graph, namer, f"{base}.space_to_depth_bias", np.tile(bias, r * r)))
        s2d = new_node(namer, base, "SpaceToDepth", [x], {"blocksize": r}, x.dtype)
        inputs[0] = s2d.outputs[0]
        attrs = {"kernel_shape": [th, tw], "pads": [-t0, -s0, th - 1 + t0, tw - 1 + s0]}
        conv = new_node(namer, base, "Conv", inputs, attrs, y.dtype)
        d2s = new_node(namer, base, "DepthToSpace", [conv.outputs[0]], {"blocksize": r, "mode": "DCR"}, y.dtype, y.shape)
        old_params = list(node.inputs[1:])
        replace_with(graph, [node], [s2d, conv, d2s], y, d2s.outputs[0])
        drop_if_unused(graph, old_params)
        return {"node": node.name, "block": r, "kernel": [kh, kw], "conv_kernel": [th, tw], "out_channels": [int(c_out), int(r * r * c_out)],
                "work_vs_conv": round(r * r * th * tw / (kh * kw), 3)}


def rewritable_convs(model: ir.Model) -> frozenset:
    """Names of the Convs ``conv_space_to_depth`` (default options) rewrites."""
    return frozenset(name for name, (_, plan) in ConvSpaceToDepthPass().plans(model).items() if not isinstance(plan, str))
