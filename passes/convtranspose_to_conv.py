"""ConvTranspose -> sub-pixel Conv (+ DepthToSpace + Slice), exact in float.

A transposed convolution with stride ``s`` writes input pixel ``i`` through kernel tap ``k`` to
output position ``u = i*s + k*d`` (before cropping the pads). Grouping outputs by phase
``r = (u - c) mod s`` (for a frame offset ``c``), each phase is an ordinary correlation of the
input with a subset of the taps. So the whole layer is ONE Conv producing ``s_h*s_w*C_out``
channels (every phase's kernel on a common tap grid, zero where a phase has no tap), whose
phases are interleaved by one DepthToSpace (mode CRD: channel ``c*s*s + phase``, which keeps each
group's channels contiguous, so grouped ConvTranspose maps to a grouped Conv) and cropped by one
Slice where the sub-pixel grid overhangs the output. Per axis the frame offset ``c`` is chosen
to minimise ``taps x rows`` computed (e.g. kernel 4 / stride 2 / pad 1 -> 2x2 taps on a grid one
row and column larger than the input, cropped by one on each side). Stride 1 is a plain Conv
with the kernel flipped into correlation order and the pads adjusted.

Layout ``phases`` instead gives each of the ``s*s`` output phases its own exact Conv (its own
taps and pads, no extra rows, no crop), concatenated phase-major and interleaved by one
DepthToSpace (DCR): no wasted MACs, one Conv per phase. It needs 2-D, equal strides, every
phase with at least one tap and non-negative per-phase pads; otherwise the fused form is used.

An elementwise activation that alone consumes the ConvTranspose (Relu, LeakyRelu, Tanh, ...)
moves before the DepthToSpace/Slice so a quantizer sees ``Conv -> Relu``.

Handled: 1-D, 2-D and 3-D ConvTranspose with constant weights (and bias), any kernel, stride,
dilation, group, pads, output_padding, output_shape and auto_pad for which onnxruntime follows
the ONNX spec. Unequal strides (or 1-D/3-D) interleave with Reshape -> Transpose -> Reshape
instead of DepthToSpace, which needs all but one spatial size static.

Left alone (with the reason in ``self.report``): non-constant weight or bias, non-float weights,
opset < 11, output_shape / SAME auto_pad whose total padding would be negative (onnxruntime
clamps it, unlike the spec) or that needs a dynamic input size, interleaving that would need
more than one dynamic spatial size.

Guarantees: graph inputs and outputs unchanged; each rewritten output equals the original up
to float summation order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import (
    Namer,
    ShapeLookup,
    add_initializer,
    const_array,
    count_by,
    drop_if_unused,
    hoistable_activation,
    hoisted_copy,
    is_onnx_domain,
    new_node,
    onnx_opset,
    replace_with,
)

INT64_MAX = np.iinfo(np.int64).max
DEPTH_TO_SPACE_MODES = ("CRD", "DCR", "reshape")
LAYOUTS = ("auto", "fused", "phases")


class Skip(Exception):
    """A ConvTranspose this rewrite leaves alone; the message says why."""


@dataclass(frozen=True)
class ConvTransposeSpec:
    """A ConvTranspose node's attributes resolved to explicit per-axis numbers."""

    weight: np.ndarray  # [C_in, C_out/group, *kernel]
    bias: np.ndarray | None  # [C_out]
    group: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    output_padding: tuple[int, ...]
    in_dims: tuple[int | None, ...]  # input spatial sizes (None where not static)

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def c_in(self) -> int:
        return self.weight.shape[0]

    @property
    def c_out(self) -> int:
        return self.weight.shape[1] * self.group

    def out_dim(self, axis: int) -> int | None:
        size = self.in_dims[axis]
        if size is None:
            return None
        s, k, d = self.strides[axis], self.kernel[axis], self.dilations[axis]
        return s * (size - 1) + self.output_padding[axis] + d * (k - 1) + 1 - self.pads_begin[axis] - self.pads_end[axis]


def _ints(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return tuple(int(v) for v in attr.as_ints()) if attr is not None else tuple(default)


def resolve_convtranspose(node: ir.Node, shapes: ShapeLookup) -> ConvTransposeSpec:
    """Read a ConvTranspose's weights and attributes into a ``ConvTransposeSpec``; ``Skip`` if not possible."""
    x = node.inputs[0]
    weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        raise Skip("weight is not a constant")
    if weight.dtype not in (np.float32, np.float64, np.float16):
        raise Skip(f"weight dtype {weight.dtype} is not float")
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = const_array(node.inputs[2])
        if bias is None:
            raise Skip("bias is not a constant")
    rank = weight.ndim - 2
    if rank not in (1, 2, 3):
        raise Skip(f"{rank}-D ConvTranspose")
    group = node.attributes.get_int("group", 1)
    kernel = _ints(node, "kernel_shape", weight.shape[2:])
    if kernel != tuple(weight.shape[2:]):
        raise Skip("kernel_shape disagrees with the weight")
    if group < 1 or weight.shape[0] % group:
        raise Skip(f"group {group} does not divide C_in {weight.shape[0]}")
    strides = _ints(node, "strides", [1] * rank)
    dilations = _ints(node, "dilations", [1] * rank)
    output_padding = _ints(node, "output_padding", [0] * rank)
    pads = _ints(node, "pads", [0] * (2 * rank))
    output_shape = _ints(node, "output_shape", [])
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if any(len(v) != rank for v in (strides, dilations, output_padding)) or len(pads) != 2 * rank:
        raise Skip("attribute lengths disagree with the kernel rank")
    if min(strides + dilations) < 1 or min(output_padding + pads) < 0:
        raise Skip("non-positive stride/dilation or negative padding")
    if bias is not None and bias.shape != (weight.shape[1] * group,):
        raise Skip("bias shape disagrees with the weight")

    x_dims = shapes.dims(x)
    if x_dims is not None and len(x_dims) != rank + 2:
        raise Skip("input rank disagrees with the weight")
    in_dims = tuple(x_dims[2:]) if x_dims is not None else (None,) * rank

    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Total padding is derived from the requested output size (ONNX spec; onnxruntime agrees
        # as long as it is not negative). SAME_UPPER puts the smaller half first.
        pads_begin, pads_end = [], []
        for a in range(rank):
            if in_dims[a] is None and output_shape:
                raise Skip("output_shape with a dynamic input size")
            eff = dilations[a] * (kernel[a] - 1) + 1
            if output_shape:
                target = output_shape[len(output_shape) - rank + a]
                total = strides[a] * (in_dims[a] - 1) + output_padding[a] + eff - target
            else:  # SAME: output = input * stride, independent of the input size
                total = output_padding[a] + eff - strides[a]
            if total < 0:
                raise Skip("auto_pad/output_shape with negative total padding (onnxruntime deviates from the spec)")
            small, large = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                pads_begin.append(small)
                pads_end.append(large)
            else:
                pads_begin.append(large)
                pads_end.append(small)
    elif auto_pad == "VALID":
        pads_begin, pads_end = [0] * rank, [0] * rank
    elif auto_pad == "NOTSET":
        pads_begin, pads_end = list(pads[:rank]), list(pads[rank:])
    else:
        raise Skip(f"unknown auto_pad {auto_pad!r}")
    spec = ConvTransposeSpec(
        weight, bias, group, kernel, strides, dilations, tuple(pads_begin), tuple(pads_end), output_padding, in_dims
    )
    for a in range(rank):
        out = spec.out_dim(a)
        if out is not None and out <= 0:
            raise Skip("empty output")
    return spec


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis of a ConvTranspose becomes a Conv over ``stride`` phases.

    ``taps``: (phase, conv tap, ConvTranspose kernel index) triples. The Conv has ``size`` taps
    spaced ``dilation`` apart and pads ``pad_begin``/``pad_end``; its output is ``extra`` rows longer
    than the input; after interleaving, ``crop_begin``/``crop_end`` rows are cut off.
    """

    stride: int
    frame: int
    taps: tuple[tuple[int, int, int], ...]
    size: int
    dilation: int
    pad_begin: int
    pad_end: int
    extra: int
    crop_begin: int
    crop_end: int


def plan_axis(kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, output_padding: int, in_size: int | None) -> AxisPlan:
    """The sub-pixel plan for one axis with the fewest taps x rows (ties: least cropping, lowest frame)."""
    s, d, k_max = stride, dilation, kernel
    best_key, best = None, None
    for c in range(s):
        taps = [(r, (r + c - k * d) // s, k) for r in range(s) for k in range(k_max) if (r + c - k * d) % s == 0]
        offsets = [j for _, j, _ in taps]
        j_min, j_max = min(offsets), max(offsets)
        step = 0
        for j in offsets:
            step = math.gcd(step, j - j_min)
        step = step or 1
        size = (j_max - j_min) // step + 1
        q_start = min((pad_begin - c) // s, -j_min)  # first sub-pixel row computed
        pb = -(q_start + j_min)
        pe = max(0, (output_padding + d * (k_max - 1) - pad_end - c) // s + j_max)
        extra = pb + pe - (j_max - j_min)
        crop_begin = pad_begin - (s * q_start + c)
        crop_end = s * (1 - j_max + pe) + c - output_padding - d * (k_max - 1) - 1 + pad_end
        rows = (in_size if in_size is not None else 32) + extra
        key = (size * rows, crop_begin + crop_end, c)
        if best_key is None or key < best_key:
            best_key = key
            plan_taps = tuple((r, (j - j_min) // step, k) for r, j, k in taps)
            best = AxisPlan(s, c, plan_taps, size, step, pb, pe, extra, crop_begin, crop_end)
    assert best is not None and best.crop_begin >= 0 and best.crop_end >= 0
    return best


@dataclass(frozen=True)
class PhaseAxisPlan:
    """One output phase ``r`` of one axis as its own Conv: rows ``o = s*q + r`` for ``q < rows``.

    ``taps``: (conv tap, ConvTranspose kernel index) pairs; ``crop_end`` is shared by all phases.
    """

    phase: int
    taps: tuple[tuple[int, int], ...]
    size: int
    dilation: int
    pad_begin: int
    pad_end: int
    crop_end: int


def plan_phases_axis(kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, output_padding: int) -> list[PhaseAxisPlan] | None:
    """Per output phase, the exact Conv (no extra rows); None if a phase has no tap or needs negative pads."""
    s, d = stride, dilation
    rem = output_padding + d * (kernel - 1) + 1 - pad_begin - pad_end  # output = s*(in - 1) + rem
    rows_extra = -(-rem // s)  # output rows per phase = in - 1 + rows_extra
    crop_end = s * rows_extra - rem
    plans = []
    for r in range(s):
        taps = [((r + pad_begin - k * d) // s, k) for k in range(kernel) if (r + pad_begin - k * d) % s == 0]
        if not taps:
            return None
        offsets = [j for j, _ in taps]
        j_min, j_max = min(offsets), max(offsets)
        step = 0
        for j in offsets:
            step = math.gcd(step, j - j_min)
        step = step or 1
        pb, pe = -j_min, rows_extra - 1 + j_max
        if pb < 0 or pe < 0:
            return None
        plans.append(PhaseAxisPlan(r, tuple(((j - j_min) // step, k) for j, k in taps), (j_max - j_min) // step + 1, step, pb, pe, crop_end))
    return plans


def subpixel_weight(spec: ConvTransposeSpec, plans: list[AxisPlan], mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Conv weight ``[C_out*prod(s), C_in/group, *taps]`` and bias in ``mode``'s channel order."""
    g = spec.group
    c_in_g = spec.c_in // g
    c_out_g = spec.weight.shape[1]
    # [g, C_out/g, C_in/g, *kernel]
    w = spec.weight.reshape(g, c_in_g, c_out_g, *spec.kernel).swapaxes(1, 2)
    phases = tuple(p.stride for p in plans)
    sizes = tuple(p.size for p in plans)
    out = np.zeros((g, c_out_g, *phases, c_in_g, *sizes), dtype=spec.weight.dtype)
    for combo in itertools.product(*(p.taps for p in plans)):
        r = tuple(t[0] for t in combo)
        t = tuple(t[1] for t in combo)
        k = tuple(t[2] for t in combo)
        out[(slice(None), slice(None), *r, slice(None), *t)] = w[(slice(None), slice(None), slice(None), *k)]
    n_phases = int(np.prod(phases))
    bias = spec.bias
    if mode == "DCR":  # channel = phase * C_out + c (group 1 only)
        out = np.moveaxis(out.reshape(g * c_out_g, n_phases, c_in_g, *sizes), 1, 0)
        conv_bias = None if bias is None else np.tile(bias, n_phases)
    else:  # CRD / reshape: channel = c * n_phases + phase
        conv_bias = None if bias is None else np.repeat(bias, n_phases)
    weight = out.reshape(g * c_out_g * n_phases, c_in_g, *sizes)
    return np.ascontiguousarray(weight), conv_bias


def fused_weight_growth(spec: ConvTransposeSpec) -> float:
    """Size of the fused layout's weight relative to the ConvTranspose's: every phase on the
    common tap grid, zeros where a phase has no tap (the ``phases`` layout stores exactly 1.0)."""
    plans = [
        plan_axis(spec.kernel[a], spec.strides[a], spec.dilations[a], spec.pads_begin[a], spec.pads_end[a], spec.output_padding[a], spec.in_dims[a])
        for a in range(spec.rank)
    ]
    fused = np.prod([p.stride for p in plans]) * np.prod([p.size for p in plans])
    return float(fused / np.prod(spec.kernel))


@register("convtranspose_to_conv")
class ConvTransposeToConvPass(GencompressPass):
    """Rewrite ConvTranspose as a sub-pixel Conv + DepthToSpace + Slice (plain Conv for stride 1).

    Options:
        depth_to_space: how the phases interleave. ``CRD`` (default): one DepthToSpace in CRD
            mode, valid for any group. ``DCR``: DepthToSpace in DCR mode (group 1 only; other
            groups fall back to CRD). ``reshape``: Reshape -> Transpose -> Reshape (needs static
            spatial sizes but for one; ops a QDQ quantizer can run in int8).
            Unequal strides, 1-D and 3-D always use ``reshape``.
        hoist_activations: move a sole elementwise activation consumer before the interleave
            (a copy per phase Conv in the ``phases`` layout).
        layout: ``auto`` (default): per layer, ``phases`` where the fused weight would be larger
            than the ConvTranspose's (zeros stored and multiplied: e.g. kernel 3 stride 2 gives
            every phase a 2x2 grid, 16 taps for 9, 1.78x), else ``fused`` (one Conv: fewer
            kernels, no extra work). ``fused``: one Conv for all phases, on a grid that may
            overhang the output (cropped by Slice). ``phases``: one exact Conv per phase +
            Concat + DepthToSpace DCR, where applicable (see the module docstring), else ``fused``.
    """

    @dataclass(frozen=True)
    class Options:
        depth_to_space: str = "CRD"
        hoist_activations: bool = True
        layout: str = "auto"
        exclude: tuple[str, ...] = ()  # ConvTransposes (node names) left alone, unreported: the layers kept float

        def __post_init__(self):
            if self.layout not in LAYOUTS:
                raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
            if self.depth_to_space not in DEPTH_TO_SPACE_MODES:
                raise ValueError(f"depth_to_space must be one of {', '.join(DEPTH_TO_SPACE_MODES)}, got {self.depth_to_space!r}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        rewritten, left = [], []
        nodes = [n for n in graph if is_onnx_domain(n) and n.op_type == "ConvTranspose" and n.name not in self.options.exclude]
        if nodes and onnx_opset(model) < 11:
            left = [{"node": n.name, "reason": f"opset {onnx_opset(model)} < 11"} for n in nodes]
            nodes = []
        shapes = ShapeLookup(model)
        namer = Namer(graph)
        for node in nodes:
            try:
                spec = resolve_convtranspose(node, shapes)
                rewritten.append(self._rewrite(graph, node, spec, namer))
            except Skip as e:
                left.append({"node": node.name, "reason": str(e)})
        self.report = {
            "rewritten": rewritten,
            "left_alone": left,
            "forms": count_by(r["form"] for r in rewritten),
        }
        return ir.passes.PassResult(model, bool(rewritten))

    def _rewrite(self, graph: ir.Graph, node: ir.Node, spec: ConvTransposeSpec, namer: Namer) -> dict:
        rank = spec.rank
        x, y = node.inputs[0], node.outputs[0]
        base = node.name or y.name or "ConvTranspose"
        dtype = y.dtype if y.dtype is not None else x.dtype
        batch = x.shape[0] if x.shape is not None and len(x.shape) == rank + 2 else None

        def shape(channels, dims):
            return None if batch is None or any(d is None for d in dims) else [batch, channels, *dims]

        activation = hoistable_activation(y) if self.options.hoist_activations else None
        phase_plans = None
        layout, growth = self.options.layout, fused_weight_growth(spec)
        if layout == "auto":
            layout = "phases" if growth > 1.0 else "fused"
        if layout == "phases" and rank == 2 and spec.strides[0] == spec.strides[1] > 1:
            phase_plans = [
                plan_phases_axis(spec.kernel[a], spec.strides[a], spec.dilations[a], spec.pads_begin[a], spec.pads_end[a], spec.output_padding[a])
                for a in range(rank)
            ]
            if any(p is None for p in phase_plans):
                phase_plans = None

        if phase_plans is not None:
            new_nodes, current, crops, info = self._phase_convs(graph, namer, base, x, spec, phase_plans, activation, dtype, shape)
        else:
            new_nodes, current, crops, info = self._fused_conv(graph, namer, base, x, spec, activation, dtype, shape)

        crop_axes = [a for a in range(rank) if crops[a] != (0, 0)]
        if crop_axes:
            starts = [crops[a][0] for a in crop_axes]
            ends = [-crops[a][1] if crops[a][1] else INT64_MAX for a in crop_axes]
            out_dims = [spec.out_dim(a) for a in range(rank)]
            sl = new_node(
                namer, base, "Slice",
                [
                    current,
                    add_initializer(graph, namer, f"{base}.crop_starts", np.array(starts, np.int64)),
                    add_initializer(graph, namer, f"{base}.crop_ends", np.array(ends, np.int64)),
                    add_initializer(graph, namer, f"{base}.crop_axes", np.array([2 + a for a in crop_axes], np.int64)),
                ],
                None, dtype, shape(spec.c_out, out_dims),
            )
            new_nodes.append(sl)
            current = sl.outputs[0]
            info["form"] += "+slice"

        hoisted = activation is not None and info.pop("hoisted")
        old_nodes, old_value = ([node, activation], activation.outputs[0]) if hoisted else ([node], y)
        old_params = list(node.inputs[1:])
        replace_with(graph, old_nodes, new_nodes, old_value, current)
        drop_if_unused(graph, old_params)
        info.pop("hoisted", None)
        return {
            "node": node.name,
            "form": info["form"],
            "kernel": list(spec.kernel),
            "strides": list(spec.strides),
            "group": spec.group,
            "conv_kernels": info["conv_kernels"],
            "hoisted": activation.op_type if hoisted else None,
            "work_vs_convtranspose": info["work"],
            "layout": "phases" if phase_plans is not None else "fused",
            "fused_weight_vs_convtranspose": round(growth, 3),
        }

    def _fused_conv(self, graph, namer, base, x, spec, activation, dtype, shape):
        """One Conv over all phases, interleaved by DepthToSpace (or Reshape/Transpose)."""
        rank = spec.rank
        plans = [
            plan_axis(spec.kernel[a], spec.strides[a], spec.dilations[a], spec.pads_begin[a], spec.pads_end[a], spec.output_padding[a], spec.in_dims[a])
            for a in range(rank)
        ]
        strides = [p.stride for p in plans]
        n_phases = int(np.prod(strides))
        mode = self.options.depth_to_space
        if n_phases > 1 and (rank != 2 or strides[0] != strides[1]):
            mode = "reshape"
        if mode == "DCR" and spec.group != 1:
            mode = "CRD"
        conv_dims = [None if spec.in_dims[a] is None else spec.in_dims[a] + plans[a].extra for a in range(rank)]
        if n_phases > 1 and mode == "reshape" and sum(d is None for d in conv_dims) > 1:
            raise Skip("interleaving by reshape needs all but one spatial size static")

        weight, bias = subpixel_weight(spec, plans, mode)
        inputs = [x, add_initializer(graph, namer, f"{base}.subpixel_weight", weight)]
        if bias is not None:
            inputs.append(add_initializer(graph, namer, f"{base}.subpixel_bias", bias))
        conv = new_node(
            namer, base, "Conv", inputs,
            {
                "kernel_shape": [p.size for p in plans],
                "strides": [1] * rank,
                "dilations": [p.dilation for p in plans],
                "pads": [p.pad_begin for p in plans] + [p.pad_end for p in plans],
                "group": spec.group,
            },
            dtype, shape(spec.c_out * n_phases, conv_dims),
        )
        new_nodes = [conv]
        current = conv.outputs[0]
        needs_move = n_phases > 1 or any(p.crop_begin or p.crop_end for p in plans)
        hoisted = activation is not None and needs_move
        if hoisted:
            new_nodes.append(hoisted_copy(namer, base, activation, current))
            current = new_nodes[-1].outputs[0]
        if n_phases > 1:
            full_dims = [None if d is None else d * s for d, s in zip(conv_dims, strides)]
            if mode in ("CRD", "DCR"):
                d2s = new_node(namer, base, "DepthToSpace", [current], {"blocksize": strides[0], "mode": mode}, dtype, shape(spec.c_out, full_dims))
                new_nodes.append(d2s)
            else:
                new_nodes += self._interleave_by_reshape(graph, namer, base, current, spec.c_out, strides, conv_dims, dtype, shape)
            current = new_nodes[-1].outputs[0]
        form = "conv" if n_phases == 1 else ("conv+depth_to_space" if mode != "reshape" else "conv+reshape_transpose")
        work = None
        if all(d is not None for d in spec.in_dims):
            conv_work = n_phases * np.prod([p.size for p in plans]) * np.prod(conv_dims)
            work = round(float(conv_work / (np.prod(spec.kernel) * np.prod(spec.in_dims))), 3)
        crops = [(p.crop_begin, p.crop_end) for p in plans]
        return new_nodes, current, crops, {"form": form, "conv_kernels": [[p.size for p in plans]], "work": work, "hoisted": hoisted}

    def _phase_convs(self, graph, namer, base, x, spec, phase_plans, activation, dtype, shape):
        """One exact Conv per output phase, Concat (phase-major), DepthToSpace DCR."""
        s = spec.strides[0]
        g = spec.group
        c_in_g, c_out_g = spec.c_in // g, spec.weight.shape[1]
        w = spec.weight.reshape(g, c_in_g, c_out_g, *spec.kernel).swapaxes(1, 2)  # [g, C_out/g, C_in/g, kh, kw]
        rows = [None if spec.out_dim(a) is None else -(-spec.out_dim(a) // s) for a in range(2)]
        new_nodes, outputs, kernels, work = [], [], [], 0
        for ph, pw in itertools.product(*phase_plans):
            weight = np.zeros((g, c_out_g, c_in_g, ph.size, pw.size), dtype=spec.weight.dtype)
            for (th, kh), (tw, kw) in itertools.product(ph.taps, pw.taps):
                weight[:, :, :, th, tw] = w[:, :, :, kh, kw]
            tag = f"{base}.phase{ph.phase}{pw.phase}"
            inputs = [x, add_initializer(graph, namer, f"{tag}_weight", weight.reshape(g * c_out_g, c_in_g, ph.size, pw.size))]
            if spec.bias is not None:
                inputs.append(add_initializer(graph, namer, f"{tag}_bias", spec.bias))
            conv = new_node(
                namer, f"{base}/phase{ph.phase}{pw.phase}", "Conv", inputs,
                {
                    "kernel_shape": [ph.size, pw.size],
                    "strides": [1, 1],
                    "dilations": [ph.dilation, pw.dilation],
                    "pads": [ph.pad_begin, pw.pad_begin, ph.pad_end, pw.pad_end],
                    "group": g,
                },
                dtype, shape(spec.c_out, rows),
            )
            new_nodes.append(conv)
            out = conv.outputs[0]
            if activation is not None:
                new_nodes.append(hoisted_copy(namer, f"{base}/phase{ph.phase}{pw.phase}", activation, out))
                out = new_nodes[-1].outputs[0]
            outputs.append(out)
            kernels.append([ph.size, pw.size])
            work += ph.size * pw.size
        cat = new_node(namer, base, "Concat", outputs, {"axis": 1}, dtype, shape(spec.c_out * s * s, rows))
        full = [None if r is None else r * s for r in rows]
        d2s = new_node(namer, base, "DepthToSpace", [cat.outputs[0]], {"blocksize": s, "mode": "DCR"}, dtype, shape(spec.c_out, full))
        new_nodes += [cat, d2s]
        info_work = None
        if all(d is not None for d in spec.in_dims):
            info_work = round(float(work * rows[0] * rows[1] / (np.prod(spec.kernel) * np.prod(spec.in_dims))), 3)
        crops = [(0, phase_plans[a][0].crop_end) for a in range(2)]
        return new_nodes, d2s.outputs[0], crops, {"form": "phase_convs+concat+depth_to_space", "conv_kernels": kernels, "work": info_work, "hoisted": activation is not None}

    @staticmethod
    def _interleave_by_reshape(graph, namer, base, value, channels, strides, conv_dims, dtype, shape):
        """[N, C*prod(s), Q...] -> [N, C, Q0*s0, Q1*s1, ...] with Reshape/Transpose/Reshape (CRD order)."""
        rank = len(strides)
        blocked = [a for a in range(rank) if strides[a] > 1]
        q = [-1 if d is None else d for d in conv_dims]
        split = [0, channels, *[strides[a] for a in blocked], *q]
        perm = [0, 1]
        for a in range(rank):
            perm.append(2 + len(blocked) + a)
            if a in blocked:
                perm.append(2 + blocked.index(a))
        merged = [0, channels, *[-1 if d is None else d * s for d, s in zip(conv_dims, strides)]]
        r1 = new_node(namer, base, "Reshape", [value, add_initializer(graph, namer, f"{base}.phase_split", np.array(split, np.int64))], None, dtype)
        tr = new_node(namer, base, "Transpose", [r1.outputs[0]], {"perm": perm}, dtype)
        full = [None if d is None else d * s for d, s in zip(conv_dims, strides)]
        r2 = new_node(namer, base, "Reshape", [tr.outputs[0], add_initializer(graph, namer, f"{base}.phase_merge", np.array(merged, np.int64))], None, dtype, shape(channels, full))
        return [r1, tr, r2]
