"""Structured channel pruning: remove whole output channels and shrink every tensor they reach.

A *producer* is a Conv, ConvTranspose, Gemm or MatMul with a weight initializer. Its output
channels are followed forward through BatchNormalization/InstanceNormalization, elementwise
activations, elementwise ops with a constant (bias adds, scales), Reshape/Flatten, Transpose,
Squeeze/Unsqueeze, Concat along the channel axis, Pad/Resize/Upsample/pooling that leave the
channel axis alone, and Split along another axis, to the next Conv/ConvTranspose/Gemm/MatMul,
whose input-channel (K) rows are removed with them. Every constant on the way (bias, BN
parameters, per-channel constants, Reshape shapes) is rewritten, so shapes and parameter counts
really shrink.

Reshape/Flatten: a channel maps to a contiguous block of the reshaped axis (flatten of
``[N, C, H, W]`` to ``[N, C*H*W]``: H*W rows of the next Gemm's K), and a reshape that splits a
feature axis into channels (``[N, C*H*W]`` to ``[N, C, H, W]``) makes the producer's features
prune in groups of H*W. A producer whose channels reach a graph output, an elementwise op joining
another branch (a residual Add), a Concat along another axis, a grouped convolution, a recurrent
op, GroupNormalization (exact only when whole groups go: not done), or any op not listed above
keeps all its channels, and the report says which and why.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from math import lcm, prod

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from gencompress.passes.magnitude_prune import write_array
from gencompress.passes.prune_report import check_common, check_sparsity, choose_targets, CRITERIA, DEFAULT_MIN_SIZE, float_params, FoldComputedWeights
from gencompress.passes.prune_report import round_half_up, row, SCOPES, stats, totals, unmatched_warnings, weight_targets
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, const_array

PRODUCER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
UNARY_OPS = frozenset(
    {
        "Abs", "Cast", "Ceil", "Celu", "Clip", "Cos", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
        "HardSwish", "Identity", "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid",
        "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Tanh", "ThresholdedRelu",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min"})
NORM_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
# Ops that act per channel on the spatial axes: a channel's values stay in that channel, so
# channels pass through them when the op leaves the channel axis alone (see ``_spatial``).
SPATIAL_OPS = frozenset({"Pad", "Resize", "Upsample", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool"})


class _Blocked(Exception):
    """A producer's channels cannot shrink; the message says why."""


@dataclass(frozen=True)
class ChannelMap:
    """Producer channel ``c`` covers indices ``[offset + c*scale, offset + (c+1)*scale)`` of ``axis``."""

    axis: int
    scale: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)

    def on(self, axis: int) -> ChannelMap:
        return ChannelMap(axis, self.scale, self.offset)

    def indices(self, groups, k: int) -> set[int]:
        out: set[int] = set()
        for g in groups:
            out.update(range(int(self.offset + g * k * self.scale), int(self.offset + (g + 1) * k * self.scale)))
        return out


@dataclass(frozen=True)
class Edit:
    """A constant input of a node that changes with the producer's channels.

    ``kind="slice"``: entries along ``axis`` are removed; ``kind="shape"``: entry ``axis`` of a
    Reshape's shape shrinks by the number of indices removed.
    """

    node: ir.Node
    index: int
    axis: int
    cmap: ChannelMap
    kind: str = "slice"


@dataclass
class Plan:
    """What pruning one producer's output channels touches."""

    node: ir.Node
    weight: ir.Value
    out_axis: int
    channels: int
    group: int = 1
    tensors: dict = field(default_factory=dict)  # ir.Value -> ChannelMap
    edits: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # (value, ChannelMap, where): must carry the same channels
    blocked: str | None = None
    removed: list = field(default_factory=list)  # removed group indices
    reachable: set = field(default_factory=set)  # every value computed from the producer's output


# ---- shapes and constants ----------------------------------------------------------------------


def _inferred_dims(model: ir.Model) -> dict[str, list]:
    """Static dims by value name from ONNX shape inference on a copy (the model is not touched)."""
    import onnx

    try:
        proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), strict_mode=False, data_prop=True)
    except Exception:
        return {}
    out = {}
    for vi in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


class _Tracer:
    def __init__(self, model: ir.Model):
        self.inferred = _inferred_dims(model)

    def dims(self, value: ir.Value) -> list | None:
        """Dims of ``value``: ints where static, a name or None where not; None if the rank is unknown."""
        const = value.const_value
        if const is not None:
            return [int(d) for d in const.shape.numpy()]
        inferred = self.inferred.get(value.name)
        if value.shape is None:
            return inferred
        dims = [d if isinstance(d, int) else (str(d) if str(d) not in ("", "None") else None) for d in value.shape]
        if inferred and len(inferred) == len(dims):
            dims = [d if isinstance(d, int) else (i if isinstance(i, int) else d) for d, i in zip(dims, inferred)]
        return dims

    def rank(self, value: ir.Value) -> int | None:
        d = self.dims(value)
        return None if d is None else len(d)

    # ---- one producer ----

    def trace(self, node: ir.Node, weight: ir.Value, out_axis: int) -> Plan:
        channels = int(weight.const_value.shape[out_axis])
        plan = Plan(node, weight, out_axis, channels)
        try:
            self._start(plan)
            plan.reachable = _downstream(node.outputs[0])
            self._walk(plan)
            self._finish(plan)
        except _Blocked as e:
            plan.blocked = str(e)
        return plan

    def _start(self, plan: Plan) -> None:
        node, op = plan.node, plan.node.op_type
        if len(plan.weight.uses()) != 1:
            raise _Blocked(f"its weight {plan.weight.name!r} is shared with other nodes")
        if op in ("Conv", "ConvTranspose") and node.attributes.get_int("group", 1) != 1:
            raise _Blocked("grouped convolution")
        plan.edits.append(Edit(node, 1, plan.out_axis, ChannelMap(plan.out_axis)))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = const_array(node.inputs[2])
            if bias is None:
                raise _Blocked("its bias is not a constant")
            if op in ("Conv", "ConvTranspose"):
                plan.edits.append(Edit(node, 2, 0, ChannelMap(0)))
            elif bias.ndim and bias.shape[-1] != 1:  # Gemm C broadcasts to [M, N]
                if bias.shape[-1] != plan.channels:
                    raise _Blocked(f"its bias has shape {list(bias.shape)}")
                plan.edits.append(Edit(node, 2, bias.ndim - 1, ChannelMap(bias.ndim - 1)))
        y = node.outputs[0]
        if op in ("Conv", "ConvTranspose", "Gemm"):
            axis = 1
        else:  # MatMul: the last axis of the output
            ranks = [self.rank(y), self.rank(node.inputs[0])]
            if ranks[0] is None and ranks[1] is None:
                raise _Blocked("the rank of its output is unknown")
            axis = (ranks[0] if ranks[0] is not None else max(ranks[1], plan.weight.const_value.shape.rank())) - 1
        plan.tensors[y] = ChannelMap(axis)

    def _walk(self, plan: Plan) -> None:
        queue = [plan.node.outputs[0]]
        while queue:
            value = queue.pop(0)
            cmap = plan.tensors[value]
            if value.is_graph_output():
                raise _Blocked(f"its channels reach the graph output {value.name!r}")
            for use in value.uses():
                for out, out_map in self._follow(plan, value, cmap, use.node, use.idx):
                    known = plan.tensors.get(out)
                    if known is None:
                        plan.tensors[out] = out_map
                        queue.append(out)
                    elif known != out_map:
                        raise _Blocked(f"its channels reach {out.name!r} twice with different layouts")

    def _finish(self, plan: Plan) -> None:
        for other, cmap, where in plan.pending:
            if plan.tensors.get(other) != cmap:
                raise _Blocked(f"{where} joins them with another branch (e.g. a residual connection)")
        maps = [*plan.tensors.values(), *(e.cmap for e in plan.edits)]
        if any(m.offset.denominator != 1 for m in maps):
            raise _Blocked("a reshape splits them unevenly")
        k = 1
        for m in maps:
            k = lcm(k, m.scale.denominator)
        if plan.channels % k:
            raise _Blocked(f"a reshape groups them by {k}, which does not divide {plan.channels}")
        for value, m in plan.tensors.items():
            d = self.dims(value)
            size = d[m.axis] if d is not None and m.axis < len(d) else None
            if isinstance(size, int) and m.offset + plan.channels * m.scale > size:
                raise _Blocked(f"inconsistent shape of {value.name!r}")
        plan.group = k

    # ---- one consumer ----

    def _follow(self, plan: Plan, value: ir.Value, cmap: ChannelMap, node: ir.Node, idx: int):
        op, name = node.op_type, node.name
        where = f"{op} node {name!r}"
        if node.domain not in ("", "ai.onnx"):
            raise _Blocked(f"its channels reach {where} of domain {node.domain!r}")
        if op in UNARY_OPS and idx == 0:
            for extra in node.inputs[1:]:  # Clip min/max, Dropout ratio: scalars only
                if extra is not None and (c := const_array(extra)) is not None and c.size != 1:
                    raise _Blocked(f"its channels reach {where} with a non-scalar parameter")
            if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
                raise _Blocked(f"its channels reach {where}, whose second output is used")
            return [(node.outputs[0], cmap)]
        if op in BINARY_OPS and len(node.inputs) == 2 and idx in (0, 1):
            return [(node.outputs[0], self._binary(plan, value, cmap, node, idx, where))]
        if op in NORM_PARAMS and idx == 0:
            return [(node.outputs[0], self._norm(plan, value, cmap, node, where))]
        if op in SPATIAL_OPS and idx == 0:
            return [(node.outputs[0], self._spatial(value, cmap, node, where))]
        if op == "Split" and idx == 0:
            return [(out, self._split(value, cmap, node, where)) for out in node.outputs]
        if op == "Reshape" and idx == 0:
            return [(node.outputs[0], self._reshape(plan, value, cmap, node, where))]
        if op == "Flatten" and idx == 0:
            return [(node.outputs[0], self._flatten(value, cmap, node, where))]
        if op == "Transpose" and idx == 0:
            rank = self.rank(value)
            if rank is None:
                raise _Blocked(f"its channels reach {where} of unknown rank")
            perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
            return [(node.outputs[0], cmap.on(perm.index(cmap.axis)))]
        if op in ("Squeeze", "Unsqueeze") and idx == 0:
            return [(node.outputs[0], self._squeeze(value, cmap, node, where))]
        if op == "Concat":
            return [(node.outputs[0], self._concat(value, cmap, node, idx, where))]
        if op in ("Conv", "ConvTranspose") and idx == 0:
            if cmap.axis != 1:
                raise _Blocked(f"its channels reach {where} on axis {cmap.axis}, not the channel axis")
            if node.attributes.get_int("group", 1) != 1:
                raise _Blocked(f"its channels feed the grouped convolution {where}")
            if const_array(node.inputs[1]) is None:
                raise _Blocked(f"{where} has a non-constant weight")
            plan.edits.append(Edit(node, 1, 1 if op == "Conv" else 0, cmap))
            return []
        if op == "Gemm" and idx == 0:
            want = 0 if node.attributes.get_int("transA", 0) else 1
            if cmap.axis != want:
                raise _Blocked(f"its channels reach {where} on axis {cmap.axis}, not its K axis")
            if const_array(node.inputs[1]) is None:
                raise _Blocked(f"{where} has a non-constant weight")
            plan.edits.append(Edit(node, 1, 1 if node.attributes.get_int("transB", 0) else 0, cmap))
            return []
        if op == "MatMul" and idx == 0:
            rank = self.rank(value)
            b = const_array(node.inputs[1])
            if b is None or b.ndim < 2:
                raise _Blocked(f"{where} has no constant 2-D weight")
            if rank is None or cmap.axis != rank - 1:
                raise _Blocked(f"its channels reach {where} on an axis other than K")
            plan.edits.append(Edit(node, 1, b.ndim - 2, cmap))
            return []
        raise _Blocked(f"its channels reach {where}, which channel pruning does not rewrite")

    def _binary(self, plan, value, cmap, node, idx, where) -> ChannelMap:
        other = node.inputs[1 - idx]
        rank = self.rank(value)
        if other is value:
            return cmap
        const = const_array(other)
        if const is None:
            if other not in plan.reachable or rank is None or self.rank(other) != rank:
                raise _Blocked(f"{where} joins them with another branch (e.g. a residual connection)")
            plan.pending.append((other, cmap, where))
            return cmap
        if rank is None:
            raise _Blocked(f"its channels reach {where} of unknown rank")
        out_rank = max(rank, const.ndim)
        out_axis = cmap.axis + out_rank - rank
        c_axis = out_axis - (out_rank - const.ndim)
        if c_axis >= 0 and const.shape[c_axis] != 1:
            size = (self.dims(value) or [None] * rank)[cmap.axis]
            if isinstance(size, int) and const.shape[c_axis] != size:
                raise _Blocked(f"{where} has a constant of shape {list(const.shape)}")
            plan.edits.append(Edit(node, 1 - idx, c_axis, cmap))
        return cmap.on(out_axis)

    def _norm(self, plan, value, cmap, node, where) -> ChannelMap:
        if cmap.axis != 1:
            raise _Blocked(f"its channels reach {where} on axis {cmap.axis}, not its channel axis")
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            raise _Blocked(f"{where} is in training mode")
        for i in NORM_PARAMS[node.op_type]:
            p = const_array(node.inputs[i]) if i < len(node.inputs) else None
            if p is None or p.ndim != 1:
                raise _Blocked(f"{where} has non-constant parameters")
            plan.edits.append(Edit(node, i, 0, cmap))
        return cmap

    def _spatial(self, value, cmap, node, where) -> ChannelMap:
        """Pad / Resize / Upsample / pooling: exact when the channel axis is axis 1 and the op
        neither pads nor rescales it (its constants then need no edit)."""
        rank = self.rank(value)
        if rank is None or cmap.axis != 1:
            raise _Blocked(f"its channels reach {where} on axis {cmap.axis}, not its channel axis")
        op = node.op_type
        if op == "Pad":
            pads = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if pads is None:
                raise _Blocked(f"{where} has non-constant pads")
            axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(rank)
            if axes is None:
                raise _Blocked(f"{where} has non-constant axes")
            axes = [int(a) % rank for a in np.asarray(axes).reshape(-1)]
            pads = np.asarray(pads).reshape(-1)
            if 1 in axes and (pads[axes.index(1)] != 0 or pads[axes.index(1) + len(axes)] != 0):
                raise _Blocked(f"{where} pads the channel axis")
        elif op in ("Resize", "Upsample"):
            sizes = node.inputs[3] if op == "Resize" and len(node.inputs) > 3 else None
            if sizes is not None:
                raise _Blocked(f"{where} resizes to fixed sizes, which name the channel count")
            index = 2 if op == "Resize" else 1
            scales = const_array(node.inputs[index]) if len(node.inputs) > index and node.inputs[index] is not None else None
            if scales is None or scales.size != rank or float(np.asarray(scales).reshape(-1)[1]) != 1.0:
                raise _Blocked(f"{where} has no constant scales keeping the channel axis")
        return cmap

    def _split(self, value, cmap, node, where) -> ChannelMap:
        rank = self.rank(value)
        axis = node.attributes.get_int("axis", 0)
        if rank is None:
            raise _Blocked(f"its channels reach {where} of unknown rank")
        if axis % rank == cmap.axis:
            raise _Blocked(f"{where} splits along the channel axis")
        return cmap

    def _regroup(self, in_dims, cmap, out_dims, where) -> tuple[int, ChannelMap]:
        """Where channel blocks of ``in_dims[axis]`` land in a reshape to ``out_dims``."""
        a = cmap.axis
        tail = in_dims[a:]
        if not all(isinstance(d, int) for d in tail):
            raise _Blocked(f"{where}: the dims after the channel axis are not static")
        total = prod(tail)
        b, cum = None, 1
        for i in range(len(out_dims) - 1, -1, -1):
            if not isinstance(out_dims[i], int):
                break
            cum *= out_dims[i]
            if cum == total:
                b = i
                break
            if cum > total:
                break
        if b is None:
            raise _Blocked(f"{where} mixes the channel axis with the axes before it")
        ratio = Fraction(prod(in_dims[a + 1 :]), prod(out_dims[b + 1 :]))
        return b, ChannelMap(b, cmap.scale * ratio, cmap.offset * ratio)

    def _reshape(self, plan, value, cmap, node, where) -> ChannelMap:
        shape = const_array(node.inputs[1])
        in_dims = self.dims(value)
        if shape is None or in_dims is None:
            raise _Blocked(f"its channels reach {where}, whose shape is not static")
        shape = [int(s) for s in shape]
        allowzero = node.attributes.get_int("allowzero", 0)
        out_dims = []
        for i, s in enumerate(shape):
            if s > 0 or (s == 0 and allowzero):
                out_dims.append(s)
            elif s == 0:
                out_dims.append(in_dims[i] if i < len(in_dims) else None)
            else:
                out_dims.append(None)
        if -1 in shape:
            out_dims[shape.index(-1)] = _infer_minus_one(in_dims, out_dims, shape.index(-1), self.dims(node.outputs[0]))
        b, out_map = self._regroup(in_dims, cmap, out_dims, where)
        a = cmap.axis
        if not allowzero and a < len(shape) and shape[a] == 0 and (b != a or out_map.scale != cmap.scale):
            raise _Blocked(f"{where} copies the channel axis with a 0 in its shape")
        if shape[b] > 0:
            plan.edits.append(Edit(node, 1, b, out_map, kind="shape"))
        return out_map

    def _flatten(self, value, cmap, node, where) -> ChannelMap:
        in_dims = self.dims(value)
        if in_dims is None:
            raise _Blocked(f"its channels reach {where} of unknown rank")
        f = node.attributes.get_int("axis", 1)
        f = f + len(in_dims) if f < 0 else f
        if cmap.axis < f:
            raise _Blocked(f"{where} merges the channel axis into the batch axis")
        tail = in_dims[f:]
        out_dims = [None, prod(tail) if all(isinstance(d, int) for d in tail) else None]
        return self._regroup(in_dims, cmap, out_dims, where)[1]

    def _squeeze(self, value, cmap, node, where) -> ChannelMap:
        rank = self.rank(value)
        if rank is None:
            raise _Blocked(f"its channels reach {where} of unknown rank")
        axes = const_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        axes = list(node.attributes.get_ints("axes", [])) if axes is None else [int(x) for x in np.ravel(axes)]
        if node.op_type == "Unsqueeze":
            out_rank = rank + len(axes)
            axes = {x + out_rank if x < 0 else x for x in axes}
            return cmap.on([i for i in range(out_rank) if i not in axes][cmap.axis])
        if not axes:
            dims = self.dims(value)
            if not all(isinstance(d, int) for d in dims):
                raise _Blocked(f"its channels reach {where} without axes on a dynamic shape")
            axes = [i for i, d in enumerate(dims) if d == 1]
        axes = {x + rank if x < 0 else x for x in axes}
        if cmap.axis in axes:
            raise _Blocked(f"{where} squeezes the channel axis")
        return cmap.on(cmap.axis - sum(1 for x in axes if x < cmap.axis))

    def _concat(self, value, cmap, node, idx, where) -> ChannelMap:
        rank = self.rank(value)
        axis = node.attributes.get_int("axis", 0)
        axis = axis + rank if rank is not None and axis < 0 else axis
        if axis != cmap.axis:
            raise _Blocked(f"{where} concatenates along axis {axis}, so its other inputs would have to lose the same channels")
        before = 0
        for other in node.inputs[:idx]:
            d = self.dims(other)
            if d is None or not isinstance(d[axis], int):
                raise _Blocked(f"{where}: the channel counts of its other inputs are not static")
            before += d[axis]
        return ChannelMap(cmap.axis, cmap.scale, cmap.offset + before)


def _downstream(value: ir.Value) -> set[ir.Value]:
    """Every value computed (directly or not) from ``value``."""
    seen, stack = {value}, [value]
    while stack:
        for node in stack.pop().consumers():
            for out in node.outputs:
                if out not in seen:
                    seen.add(out)
                    stack.append(out)
    return seen


def _infer_minus_one(in_dims, out_dims, pos, inferred):
    """The size a Reshape's -1 stands for, when static dims (or matching symbolic ones) tell."""
    if inferred and pos < len(inferred) and isinstance(inferred[pos], int):
        return inferred[pos]
    num = [d for d in in_dims if not isinstance(d, int)]
    den = [d for i, d in enumerate(out_dims) if i != pos and not isinstance(d, int)]
    if None in num or None in den or sorted(map(str, num)) != sorted(map(str, den)):
        return None
    known_out = prod(d for i, d in enumerate(out_dims) if i != pos and isinstance(d, int))
    known_in = prod(d for d in in_dims if isinstance(d, int))
    return known_in // known_out if known_out and known_in % known_out == 0 else None


# ---- the pass ----------------------------------------------------------------------------------


@register("channel_prune")
class ChannelPrunePass(GencompressPass):
    """Remove the output channels of Conv/ConvTranspose/Gemm/MatMul layers with the smallest norm.

    Channels are ranked by the L1 or L2 norm of their weight slice (times |gamma|/sqrt(var+eps)
    of a BatchNormalization right after, so a BN folded or not ranks the same); ``scope="global"``
    ranks them across layers by norm per weight. ``sparsity`` is the fraction of channels removed
    (per layer, or of all prunable channels); a layer keeps at least one channel group.
    Guarantees: graph inputs and outputs unchanged; the result computes what the original computes
    with the removed channels zeroed where they enter the next Conv/ConvTranspose/Gemm/MatMul
    (up to float summation order); every static shape on the way is updated;
    ``sparsity=0`` changes no weight. Weights computed from constants by data movement are folded
    to initializers, and Identity nodes removed (onnx_ir's pass), before tracing.
    """

    @dataclass(frozen=True)
    class Options:
        sparsity: float = 0.5
        scope: str = "layer"
        criterion: str = "l1"  # "l1" or "l2" norm of each channel's weights
        exclude: tuple[str, ...] = ()  # producers (node or weight name / glob) that keep their channels
        min_size: int = DEFAULT_MIN_SIZE
        keep_first_last: bool = False

        def __post_init__(self):
            check_sparsity(self.sparsity)
            if self.scope not in SCOPES:
                raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
            if self.criterion not in CRITERIA:
                raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
            check_common(self.exclude, self.min_size)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        o = self.options
        modified = FoldComputedWeights()(model).modified
        if o.sparsity > 0:  # BN parameters behind Identity nodes (legacy exporter) become plain initializers
            modified = common.IdentityEliminationPass()(model).modified or modified
        graph = model.graph
        params_before = float_params(graph)
        before = {v: stats(v.const_value.numpy()) for v in graph.initializers.values() if _is_float(v)}
        targets = weight_targets(graph)
        selection = choose_targets(targets, exclude=o.exclude, min_size=o.min_size, keep_first_last=o.keep_first_last)
        selected = {t.value for t in selection.selected}
        tracer = _Tracer(model)

        plans: list[Plan] = []
        reasons: dict[ir.Value, str] = {}
        for t in targets:
            producer_uses = [u for u in t.uses if u.op_type in PRODUCER_OPS and u.input_index == 1]
            if not producer_uses:
                reasons[t.value] = f"{t.op_type} weights are not channel-pruned"
                continue
            use = producer_uses[0]
            plan = tracer.trace(use.node, t.value, use.out_axis)
            if len(t.uses) > 1:
                plan.blocked = "its weight is shared with other nodes"
            elif t.value not in selected:
                plan.blocked = selection.skipped[t.name]
            plans.append(plan)
            if plan.blocked:
                reasons[t.value] = plan.blocked

        self._choose(plans)
        pruned = [p for p in plans if p.removed]
        copies = self._apply(graph, pruned) if pruned else {}
        if pruned:
            common.RemoveUnusedNodesPass()(model)
            modified = True

        self.report = {
            "pass": self.pass_name,
            "options": asdict(o),
            "channels": [self._channel_row(p) for p in plans],
            "initializers": self._rows(graph, targets, before, reasons, copies),
            "warnings": unmatched_warnings(selection.unmatched),
        }
        self.report["totals"] = totals(self.report["initializers"], params_before, float_params(graph))
        return ir.passes.PassResult(model, modified)

    # ---- ranking ----

    def _scores(self, plan: Plan, per_weight: bool) -> np.ndarray:
        """Score of each channel group of ``plan`` (smaller is pruned first)."""
        w = np.moveaxis(plan.weight.const_value.numpy().astype(np.float64), plan.out_axis, 0).reshape(plan.channels, -1)
        bn = _following_bn_scale(plan)
        if bn is not None:
            w = w * bn[:, None]
        k = plan.group
        w = w.reshape(plan.channels // k, -1)
        if self.options.criterion == "l1":
            s = np.abs(w).sum(axis=1)
            return s / w.shape[1] if per_weight else s
        s = np.sqrt((w * w).sum(axis=1))
        return s / np.sqrt(w.shape[1]) if per_weight else s

    def _choose(self, plans: list[Plan]) -> None:
        s = self.options.sparsity
        live = [p for p in plans if not p.blocked]
        if s == 0 or not live:
            return
        if self.options.scope == "layer":
            for p in live:
                groups = p.channels // p.group
                n = min(round_half_up(s * groups), groups - 1)
                p.removed = sorted(np.argsort(self._scores(p, False), kind="stable")[:n].tolist())
            return
        candidates = []  # (score, plan index, group)
        for i, p in enumerate(live):
            candidates += [(float(v), i, g) for g, v in enumerate(self._scores(p, True))]
        candidates.sort()
        target = round_half_up(s * sum(p.channels for p in live))
        removed = 0
        chosen: dict[int, list[int]] = defaultdict(list)
        for _, i, g in candidates:
            if removed >= target:
                break
            p = live[i]
            if len(chosen[i]) + 1 >= p.channels // p.group:
                continue  # keep at least one group per layer
            chosen[i].append(g)
            removed += p.group
        for i, groups in chosen.items():
            live[i].removed = sorted(groups)

    # ---- rewriting ----

    def _apply(self, graph: ir.Graph, plans: list[Plan]) -> dict:
        removed_on: dict = defaultdict(set)  # (value, axis) -> indices
        edits: dict = defaultdict(lambda: defaultdict(set))  # (node, input index) -> (kind, axis) -> indices
        for p in plans:
            for value, m in p.tensors.items():
                removed_on[(value, m.axis)] |= m.indices(p.removed, p.group)
            for e in p.edits:
                edits[(e.node, e.index)][(e.kind, e.axis)] |= e.cmap.indices(p.removed, p.group)

        by_value: dict = defaultdict(dict)  # input value -> (node, index) -> new array
        for (node, index), changes in edits.items():
            array = const_array(node.inputs[index])
            for (kind, axis), idx in sorted(changes.items(), key=lambda kv: (kv[0][0], kv[0][1])):
                if kind == "slice":
                    array = np.delete(array, sorted(idx), axis=axis)
                else:
                    array = array.copy()
                    array[axis] -= len(idx)
            by_value[node.inputs[index]][(node, index)] = array

        namer = Namer(graph)
        copies = {}  # new value -> (original name, stats of the original)
        for value, new in by_value.items():
            uses = {(u.node, u.idx) for u in value.uses()}
            arrays = list(new.values())
            same = all(a.shape == arrays[0].shape and a.tobytes() == arrays[0].tobytes() for a in arrays)
            if value.is_initializer() and uses == set(new) and same:
                write_array(value, arrays[0])
                continue
            for (node, index), array in new.items():
                name = namer(f"{value.name}_pruned")
                tensor = ir.Tensor(np.ascontiguousarray(array), name=name)
                copy = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
                graph.register_initializer(copy)
                node.replace_input_with(index, copy)
                copies[copy] = (value.name, stats(const_array(value)))

        for (value, axis), idx in removed_on.items():
            if value.shape is None or axis >= len(value.shape) or not isinstance(value.shape[axis], int):
                continue
            dims = list(value.shape)
            dims[axis] -= len(idx)
            value.shape = ir.Shape(dims)
        return copies

    # ---- report ----

    def _channel_row(self, p: Plan) -> dict:
        after = p.channels - len(p.removed) * p.group
        r = {
            "node": p.node.name or f"{p.node.op_type} -> {p.node.outputs[0].name}",
            "op": p.node.op_type,
            "weight": p.weight.name,
            "channels_before": p.channels,
            "channels_after": after,
            "group": p.group,
            "status": "pruned" if p.removed else "kept",
        }
        if p.blocked:
            r["reason"] = p.blocked
        return r

    def _rows(self, graph, targets, before, reasons, copies) -> list[dict]:
        rows, seen = [], set()
        current = set(graph.initializers.values())
        for t in targets:
            seen.add(t.value)
            b = before.get(t.value) or stats(t.array())
            if t.value in current:
                a = stats(t.value.const_value.numpy())
                status = "pruned" if a != b else "dense"
                reason = reasons.get(t.value)
                if status == "pruned" and reason:
                    reason = f"input channels only; output kept: {reason}"
            else:
                a, status, reason = b, "replaced", "by per-node copies"
            rows.append(row(t.name, t.op_type, t.node_names, b, a, status, reason))
        for value, b in before.items():
            if value in seen or value not in current:
                continue
            a = stats(value.const_value.numpy())
            if a != b:
                ops = list(dict.fromkeys(u.node.op_type for u in value.uses()))
                r = row(value.name, "/".join(ops), [u.node.name for u in value.uses()], b, a, "pruned")
                r["weight"] = False
                rows.append(r)
        for copy, (original, b) in copies.items():
            if copy not in current:
                continue
            ops = list(dict.fromkeys(u.node.op_type for u in copy.uses()))
            r = row(copy.name, "/".join(ops), [u.node.name for u in copy.uses()], b, stats(copy.const_value.numpy()), "pruned", f"copy of {original}")
            r["weight"] = False
            rows.append(r)
        return rows


def _is_float(value: ir.Value) -> bool:
    return value.const_value is not None and value.const_value.dtype.is_floating_point()


def _following_bn_scale(plan: Plan) -> np.ndarray | None:
    """|gamma| / sqrt(var + eps) of a BatchNormalization that alone consumes the producer's output."""
    y = plan.node.outputs[0]
    uses = list(y.uses())
    if len(uses) != 1 or uses[0].node.op_type != "BatchNormalization" or uses[0].idx != 0:
        return None
    bn = uses[0].node
    gamma, var = const_array(bn.inputs[1]), const_array(bn.inputs[4])
    if gamma is None or var is None or gamma.shape != (plan.channels,) or var.shape != (plan.channels,):
        return None
    eps = bn.attributes.get_float("epsilon", 1e-5)
    return np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
