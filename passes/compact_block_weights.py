"""Store a pixel-block Conv's quantized weight compactly; constant ops rebuild it when the model loads.

``conv_space_to_depth`` computes a Conv with few output channels on r x r pixel blocks; its weight
``w'`` [r*r*C_out, r*r*C_in, th, tw] holds each tap of the original kernel r*r times, in a
pattern of structural zeros (a 9x9 16->3 kernel with 4x4 blocks: 28x the original's values). In a
quantized model that is ``DequantizeLinear(w'_int8) -> Conv``; this pass stores the original
kernel's int8 values ``k`` [C_out, C_in, kh, kw] instead, and rebuilds ``w'_int8`` from it with
constant ops onnxruntime folds into an initializer at session load (before its QDQ fusion, so
the Conv still runs as an int8 QLinearConv, on the same int8 weight):

    Pad(k, pads [0, 0, r-1-Dh, r-1-Dw, 0, 0, bottom, right], the zero point)
    -> Slice [r-1-a : +r*th, r-1-b : +r*tw] for each block (a, b) -> Concat(axis 0)
    -> Reshape [R, C_in, th, r, tw, r] -> Transpose (0, 3, 5, 1, 2, 4) -> Reshape [R, r*r*C_in, th, tw]

(``Dh = r*t0 + pad_top`` as in ``conv_space_to_depth``: output pixel row ``a`` of a block reads
kernel row ``r*t + al - a + Dh``.) Nothing is inferred on trust: the kernel size and padding
are found from the stored weight's zero pattern, ``k`` is read off ``w'``, and the weight is
replaced only when numpy, doing exactly what those ops do, rebuilds ``w'`` bit for bit; else
it is left, with the reason in the report. Graph inputs and outputs unchanged; the rebuilt
tensor is the stored one, so outputs are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.conv_space_to_depth import BLOCKS, space_to_depth_weight
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import Namer, add_initializer, const_array, is_onnx_domain, onnx_opset

MIN_OPSET = 13  # Pad takes its pads as an input, Slice its starts/ends
PERM = (0, 3, 5, 1, 2, 4)


@dataclass(frozen=True)
class Layout:
    """Where ``w'`` comes from: block ``r``; per axis the block taps' first offset and count and the
    original kernel's size and leading pad."""

    r: int
    t0: int
    th: int
    kh: int
    pad_top: int
    s0: int
    tw: int
    kw: int
    pad_left: int

    def pads(self) -> list[int]:
        """The Pad op's pads for the kernel [C_out, C_in, kh, kw]: every block's window fits."""
        r = self.r
        top, left = r - 1 - (r * self.t0 + self.pad_top), r - 1 - (r * self.s0 + self.pad_left)
        bottom = max(0, r - 1 + r * self.th - top - self.kh)
        right = max(0, r - 1 + r * self.tw - left - self.kw)
        return [0, 0, top, left, 0, 0, bottom, right]

    def windows(self) -> list[tuple[list[int], list[int]]]:
        """(starts, ends) on axes 2, 3 of the padded kernel, block (a, b) in order a*r + b."""
        r = self.r
        return [([r - 1 - a, r - 1 - b], [r - 1 - a + r * self.th, r - 1 - b + r * self.tw]) for a in range(r) for b in range(r)]

    def shapes(self, c_in: int, rows: int) -> tuple[list[int], list[int]]:
        r = self.r
        return [rows, c_in, self.th, r, self.tw, r], [rows, r * r * c_in, self.th, self.tw]


def rebuild(kernel: np.ndarray, layout: Layout, fill) -> np.ndarray:
    """What the constant ops compute from ``kernel``: ``rebuild_ops`` evaluated by ``evaluate``."""
    return rebuild_ops(kernel, layout, fill, lambda suffix, array: array, evaluate)


def rebuild_ops(kernel: np.ndarray, layout: Layout, fill, const, op):
    """The constant ops that rebuild ``w'`` from ``kernel`` (the module docstring), made through
    ``const(suffix, array)`` and ``op(op_type, inputs, attributes)``: written into the graph by the
    pass, evaluated in numpy by ``rebuild`` (the proof), so the proof checks the ops written."""

    def ints(suffix, values):
        return const(suffix, np.asarray(values, dtype=np.int64))

    pad_inputs = [const("kernel", kernel), ints("pads", layout.pads())]
    if fill != 0:
        pad_inputs.append(const("fill", np.asarray(fill, kernel.dtype)))
    padded = op("Pad", pad_inputs, {})
    axes = ints("axes", [2, 3])
    blocks = [op("Slice", [padded, ints("starts", s), ints("ends", e), axes], {}) for s, e in layout.windows()]
    first, last = layout.shapes(kernel.shape[1], layout.r * layout.r * kernel.shape[0])
    joined = op("Concat", blocks, {"axis": 0})
    moved = op("Transpose", [op("Reshape", [joined, ints("shape", first)], {})], {"perm": list(PERM)})
    return op("Reshape", [moved, ints("shape", last)], {})


def _axis_candidates(r: int, t0: int, taps: int) -> list[tuple[int, int]]:
    """(kernel size, leading pad) of a "same" Conv whose r-blocks give ``taps`` taps from offset t0, smallest first."""
    out = []
    for pad in range(max(0, -r * t0 - r + 1), -r * t0 + 1):
        for k in range(pad + 1, r * taps + 1):
            if -pad // r == t0 and (r - 1 + k - 1 - pad) // r == taps - 1 + t0:
                out.append((k, pad))
    return sorted(out)


def _fits(nonzero: np.ndarray, r: int, t0: int, taps: int, k: int, pad: int) -> bool:
    """Every (a, al, t) position that maps outside a k-tap kernel holds the fill value only."""
    a, al, t = np.meshgrid(np.arange(r), np.arange(r), np.arange(taps), indexing="ij")
    i = r * (t + t0) + al - a + pad
    return not np.any(nonzero & ((i < 0) | (i >= k)))


def find_compact(w: np.ndarray, r: int, conv_pads: list[int], fill) -> tuple[np.ndarray, Layout] | str:
    """(kernel, layout) whose rebuild is ``w`` exactly, else why not."""
    rows, cols, th, tw = w.shape
    c_out, c_in = rows // (r * r), cols // (r * r)
    t0, s0 = -conv_pads[0], -conv_pads[1]
    if conv_pads[2] != th - 1 + t0 or conv_pads[3] != tw - 1 + s0 or t0 > 0 or s0 > 0:
        return "pads not those of a pixel-block Conv"
    nonzero = w.reshape(r, r, c_out, r, r, c_in, th, tw) != fill
    rows_nz, cols_nz = nonzero.any(axis=(1, 2, 4, 5, 7)), nonzero.any(axis=(0, 2, 3, 5, 6))  # [a, al, t], [b, be, s]
    hs = [c for c in _axis_candidates(r, t0, th) if _fits(rows_nz, r, t0, th, *c)]
    ws = [c for c in _axis_candidates(r, s0, tw) if _fits(cols_nz, r, s0, tw, *c)]
    for kh, pad_top in hs[:4]:
        for kw, pad_left in ws[:4]:
            layout = Layout(r, t0, th, kh, pad_top, s0, tw, kw, pad_left)
            where = space_to_depth_weight(np.arange(1, c_out * c_in * kh * kw + 1, dtype=np.int64).reshape(c_out, c_in, kh, kw),
                                          [pad_top, pad_left, kh - 1 - pad_top, kw - 1 - pad_left], r).ravel() - 1
            kernel = np.full(c_out * c_in * kh * kw, fill, w.dtype)
            kernel[where[where >= 0]] = w.ravel()[where >= 0]
            kernel = kernel.reshape(c_out, c_in, kh, kw)
            if np.array_equal(rebuild(kernel, layout, fill), w):
                return kernel, layout
    return "not rebuilt exactly from a kernel" if hs and ws else "zero pattern of no pixel-block kernel"


def _block_size(value: ir.Value | None) -> int | None:
    """The blocksize of the SpaceToDepth ``value`` comes from, through QuantizeLinear/DequantizeLinear."""
    for _ in range(4):
        node = value.producer() if value is not None else None
        if node is None or not is_onnx_domain(node):
            return None
        if node.op_type == "SpaceToDepth":
            return node.attributes.get_int("blocksize", 0)
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return None
        value = node.inputs[0]
    return None


def folded_weight(value: ir.Value | None, _memo: dict | None = None) -> np.ndarray | None:
    """The array ``value`` holds when it is a constant or the output of this pass's constant ops
    (what onnxruntime folds at load), else None: for checks that read a layer's stored int8 weight."""
    memo = {} if _memo is None else _memo
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value.numpy()
    node = value.producer()
    if node is None or not is_onnx_domain(node) or node.op_type not in ("Pad", "Slice", "Concat", "Reshape", "Transpose") or len(memo) > 64:
        return None
    if id(node) not in memo:
        args = [folded_weight(v, memo) for v in node.inputs]
        known = all(a is not None for a, v in zip(args, node.inputs) if v is not None)
        memo[id(node)] = evaluate(node.op_type, args, {k: a.value for k, a in node.attributes.items()}) if known else None
    return memo[id(node)]


def evaluate(op: str, args: list, attributes: dict) -> np.ndarray | None:
    """``op`` (Pad, Slice, Concat, Reshape or Transpose, as ONNX defines them) on numpy ``args``; None
    for a form it does not cover (a non-constant Pad, steps, a Reshape with 0 or -1, ...)."""
    x = args[0]
    if op == "Pad" and attributes.get("mode", "constant") == "constant" and len(args) < 4:
        p = [int(v) for v in args[1]]
        fill = args[2] if len(args) > 2 and args[2] is not None else 0
        return np.pad(x, [(p[i], p[i + x.ndim]) for i in range(x.ndim)], constant_values=fill) if min(p, default=0) >= 0 else None
    if op == "Slice" and len(args) == 4:
        index = [slice(None)] * x.ndim
        for axis, start, end in zip(args[3], args[1], args[2]):
            index[int(axis)] = slice(int(start), int(end))
        return x[tuple(index)]
    if op == "Concat":
        return np.concatenate(args, axis=attributes.get("axis", 0))
    if op == "Reshape" and np.all(args[1] > 0):
        return x.reshape([int(d) for d in args[1]])
    if op == "Transpose":
        return x.transpose(attributes.get("perm"))  # no perm: the axes reversed, as numpy and ONNX both do
    return None


def reads_pixel_blocks(node: ir.Node) -> bool:
    """A Conv on SpaceToDepth's output (``conv_space_to_depth``): its weight's copies of each tap must
    stay equal and its structural zeros zero for this pass to store it compactly."""
    return node.op_type == "Conv" and bool(node.inputs) and _block_size(node.inputs[0]) in BLOCKS


@register("compact_block_weights")
class CompactBlockWeightsPass(GencompressPass):
    """See the module docstring. Graph inputs and outputs unchanged; outputs bit-identical."""

    @dataclass(frozen=True)
    class Options:
        pass

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        done, left = [], []
        if onnx_opset(model) >= MIN_OPSET:
            namer = Namer(model.graph)
            for node in list(model.graph):
                found = self._candidate(node)
                if found is None:
                    continue
                dq, w, fill, conv_pads, r = found
                result = find_compact(w, r, conv_pads, fill) if w.shape[0] % (r * r) == 0 and w.shape[1] % (r * r) == 0 else "channels not a multiple of r*r"
                if isinstance(result, str):
                    left.append({"node": node.name, "reason": result})
                else:
                    done.append(self._replace(model.graph, namer, node, dq, w, fill, *result))
        self.report = {"compacted": done, "left_alone": left}
        return ir.passes.PassResult(model, bool(done))

    @staticmethod
    def _candidate(node: ir.Node):
        """(DequantizeLinear, int8 weight, its zero point, Conv pads, r) for a Conv reading SpaceToDepth's
        output (through Q/DQ) and a quantized constant weight."""
        if not (is_onnx_domain(node) and node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] is not None):
            return None
        r = _block_size(node.inputs[0])
        if r not in BLOCKS:
            return None
        if node.attributes.get_int("group", 1) != 1 or node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return None
        attr = node.attributes.get("pads")
        dq = node.inputs[1].producer()
        if attr is None or dq is None or not is_onnx_domain(dq) or dq.op_type != "DequantizeLinear":
            return None
        stored = dq.inputs[0]
        if stored is None or stored.const_value is None or stored.is_graph_input() or len(list(stored.uses())) != 1:
            return None
        w = stored.const_value.numpy()
        if w.dtype not in (np.int8, np.uint8) or w.ndim != 4 or min(w.shape[:2]) < 4:
            return None
        zero = const_array(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] is not None else np.zeros((), w.dtype)
        if zero is None or zero.size == 0 or np.any(zero != zero.flat[0]):
            return None  # one fill value for every row (Pad has one)
        return dq, w, zero.flat[0], list(attr.as_ints()), r

    @staticmethod
    def _replace(graph: ir.Graph, namer: Namer, conv: ir.Node, dq: ir.Node, w: np.ndarray, fill, kernel: np.ndarray, layout: Layout) -> dict:
        base = f"{conv.name or 'Conv'}/compact_weight"
        old = dq.inputs[0]
        nodes = []

        def const(suffix, array):
            return add_initializer(graph, namer, f"{base}.{suffix}", array)

        def op(op_type, inputs, attributes):
            node = ir.node(op_type, inputs, attributes, name=namer(f"{base}/{op_type}"))
            node.outputs[0].name = namer(f"{base}/{op_type}_output")
            node.outputs[0].type = ir.TensorType(old.dtype)
            nodes.append(node)
            return node.outputs[0]

        out = rebuild_ops(kernel, layout, fill, const, op)
        out.shape = ir.Shape(w.shape)
        graph.insert_before(dq, nodes)
        dq.replace_input_with(0, out)
        del graph.initializers[old.name]
        return {"node": conv.name, "block": layout.r, "kernel": [layout.kh, layout.kw], "stored": list(kernel.shape), "was": list(w.shape),
                "bytes_saved": int(w.nbytes - kernel.nbytes)}
