"""int8 weights that cannot overflow the int16 pair sums of onnxruntime's non-VNNI x86 kernels.

onnxruntime's x86 int8 kernels without VNNI (AVX2, AVX-512BW: MLAS's U8S8 QGEMM and the
ConvSym kernel) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each
pair of adjacent products along the reduction axis K into a *saturating* int16. With raw uint8
activations up to 255, a weight pair (q1, q2) is exact for every input when

    255 * (max(q1, 0) + max(q2, 0)) <= 32767  and  255 * (min(q1, 0) + min(q2, 0)) >= -32768,

i.e. same-sign magnitudes summing to at most ``PAIR_LIMIT`` = 128 (a pair of opposite signs
never overflows). VNNI, ARM dot-product and wasm kernels accumulate in int32 and need nothing.

Which weights form a pair follows from how MLAS packs them (read in onnxruntime's source,
proved by ``tests/test_int8_portable.py`` on crafted weights under ``qemu-x86_64 -cpu Haswell``):

- Conv (QLinearConv): the filter is reordered ``[C_out, C_in/g, *k] -> [*k, C_in/g, C_out]``
  (channels-last im2col), so per output channel K runs over kernel positions, input channels
  fastest, and pairs are K entries (2j, 2j+1): neighbouring input channels at one kernel
  position (across positions when C_in/g is odd). The ConvSym kernel (C_in % 4 == 0) packs
  input channels in fours per kernel position: the same pairs.
- Depthwise Conv (one input and one output channel per group): widened to int32 before the
  multiply (VPMADDWD): no pairs.
- Gemm / MatMul (QGemm, QLinearMatMul): B is packed in fours along K: pairs (2j, 2j+1) of K.

Pure numpy: no onnxruntime, torch or click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAIR_LIMIT = 128  # largest same-sign |q1| + |q2| with 255 * sum inside int16
QMAX = 127
METHODS = ("best", "scale", "nudge")
# scale factors tried per channel between "no change" and "the scale alone makes it safe"
GRID = 9
CHUNK = 1 << 20  # weight elements handled at a time (bounds the float64 temporaries)


@dataclass(frozen=True)
class Layout:
    """How an int8 kernel reads a weight: ``op`` (Conv, Gemm, MatMul), Gemm's ``trans_b``, Conv's ``group``."""

    op: str
    trans_b: bool = False
    group: int = 1

    def rows(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(rows [R, K] in the kernel's K order, output channel of each row)``, or None when the
        kernel forms no pairs (depthwise Conv)."""
        if self.op == "Conv":
            c_out, c_in = a.shape[0], a.shape[1]
            if c_in == 1 and c_out == self.group:
                return None
            rows = np.moveaxis(a, 1, -1).reshape(c_out, -1)
            return rows, np.arange(c_out)
        if self.op == "Gemm":
            rows = a if self.trans_b else a.T
            return rows, np.arange(rows.shape[0])
        if self.op == "MatMul":
            k, n = a.shape[-2:]
            rows = np.swapaxes(a, -1, -2).reshape(-1, k)
            return rows, np.tile(np.arange(n), rows.shape[0] // n)
        raise ValueError(f"no int8 pairing known for {self.op}")

    def unrows(self, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The inverse of ``rows`` for an array of ``shape``."""
        if self.op == "Conv":
            moved = (shape[0], *shape[2:], shape[1])
            return np.moveaxis(rows.reshape(moved), -1, 1)
        if self.op == "Gemm":
            return rows if self.trans_b else rows.T
        k, n = shape[-2:]
        return np.swapaxes(rows.reshape(*shape[:-2], n, k), -1, -2)


def _pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two members of each K pair, ``[R, ceil(K/2)]`` each (an odd K pads with a zero, as MLAS does)."""
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), rows.dtype)], axis=1)
    return rows[:, 0::2], rows[:, 1::2]


def _excess(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far each pair's same-sign magnitude sum exceeds ``PAIR_LIMIT`` (<= 0: safe)."""
    a = a.astype(np.int32)
    b = b.astype(np.int32)
    pos = np.maximum(a, 0) + np.maximum(b, 0)
    neg = -(np.minimum(a, 0) + np.minimum(b, 0))
    return np.maximum(pos, neg) - PAIR_LIMIT


def unsafe_pairs(q: np.ndarray, layout: Layout) -> int:
    """How many weight pairs of ``q`` can overflow int16 in a non-VNNI x86 kernel."""
    found = layout.rows(q)
    if found is None:
        return 0
    return int((_excess(*_pairs(found[0])) > 0).sum())


def _nudge(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``q`` (rows, int) with each unsafe pair moved to the nearest integer pair on the bound
    (least squares to the ideal values ``t``); other pairs unchanged."""
    qa, qb = (x.copy() for x in _pairs(q))
    ta, tb = _pairs(t)
    bad = _excess(qa, qb) > 0
    if bad.any():
        sign = np.where(qa[bad] + qb[bad] >= 0, 1, -1)  # an unsafe pair has one sign
        ma, mb = np.abs(ta[bad]), np.abs(tb[bad])
        a = np.clip(np.rint(ma - (ma + mb - PAIR_LIMIT) / 2), PAIR_LIMIT - QMAX, QMAX)  # the projection, rounded
        qa[bad] = sign * a
        qb[bad] = sign * (PAIR_LIMIT - a)
    out = np.empty((q.shape[0], qa.shape[1] * 2), q.dtype)
    out[:, 0::2], out[:, 1::2] = qa, qb
    return out[:, : q.shape[1]]


def _row_worst(t: np.ndarray) -> np.ndarray:
    """Per row, the largest same-sign magnitude sum of a pair."""
    ta, tb = _pairs(t)
    return np.maximum(np.maximum(ta, 0) + np.maximum(tb, 0), -(np.minimum(ta, 0) + np.minimum(tb, 0))).max(axis=1)


def _quantized(t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Rows ``t`` divided by their factor ``f``, rounded, clipped, then nudged where still unsafe."""
    scaled = t / f[:, None]
    return _nudge(scaled, np.clip(np.rint(scaled), -QMAX, QMAX))


def _by_group(values: np.ndarray, group: np.ndarray, n: int, reduce) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    reduce.at(out, group, values)
    return out


def _factors(t: np.ndarray, group: np.ndarray, n: int, method: str) -> np.ndarray:
    """``[n, C]`` scale factors tried per scale group, ascending, from 1 (keep the scale, nudge) to
    the smallest that makes every pair safe by itself (worst pair / 128, or / 127 where rounding
    still breaks the bound: two roundings add at most 1)."""
    worst = _by_group(_row_worst(t), group, n, np.maximum)
    top = np.maximum(1.0, worst / PAIR_LIMIT)
    still = _by_group((_excess(*_pairs(np.clip(np.rint(t / top[group][:, None]), -QMAX, QMAX))) > 0).any(axis=1).astype(float), group, n, np.maximum)
    top = np.where(still > 0, np.maximum(1.0, worst / (PAIR_LIMIT - 1)), top)
    if method == "nudge":
        return np.ones((n, 1))
    if method == "scale":
        return top[:, None]
    # a geometric grid, and factors just under the safe one (a few pairs then nudged a step or two)
    grid = top[:, None] ** np.linspace(0.0, 1.0, GRID)[None, :]
    near = np.clip(worst[:, None] / (PAIR_LIMIT + np.arange(1, GRID))[None, :], 1.0, top[:, None])
    return np.sort(np.concatenate([grid, near], axis=1), axis=1)


def saturation_free(w: np.ndarray, q: np.ndarray, scale: np.ndarray, out_axis: int | None, layout: Layout, *, block: int = 1, method: str = "best"):
    """``(q, scale, report)``: the int8 weights ``q`` of float weights ``w`` (``q ~ w / scale``,
    one scale per slice of ``out_axis``, shared by ``block`` consecutive slices, or one scale for
    all with None) changed so that no weight pair can overflow int16.

    Only scale groups (output channels, blocks) with an unsafe pair change. ``method``: "scale"
    gives such a group the smallest larger scale that makes it safe; "nudge" keeps its scale and
    moves each unsafe pair onto the bound; "best" (default) tries scale factors between the two
    (each followed by nudging what is still unsafe) and keeps the one with the least squared
    weight error. Deterministic. ``report``: None when nothing changed, else what changed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    found = layout.rows(q)
    if found is None:
        return q, scale, None
    q_rows, channel = found
    bad_rows = (_excess(*_pairs(q_rows)) > 0).any(axis=1)
    if not bad_rows.any():
        return q, scale, None
    scale = np.array(scale, dtype=np.float32, copy=True)
    flat_scale = scale.reshape(-1)
    per_tensor = out_axis is None or scale.size == 1
    group_of_row = np.zeros(len(channel), dtype=np.int64) if per_tensor else channel // block
    groups = np.unique(group_of_row[bad_rows])  # the scale groups that change
    rows = np.flatnonzero(np.isin(group_of_row, groups))
    local = np.searchsorted(groups, group_of_row[rows])
    old_s = flat_scale[0] if per_tensor else flat_scale[groups * block]
    old_s = np.broadcast_to(np.asarray(old_s, dtype=np.float32), groups.shape)
    w_rows = layout.rows(np.asarray(w, dtype=np.float32))[0][rows]
    t = w_rows / old_s[local][:, None]  # the ideal integer weights at the current scales
    factors = _factors(t, local, len(groups), method)
    step = max(1, CHUNK // max(1, t.shape[1]))
    errors = np.zeros(factors.shape)
    for c in range(factors.shape[1]):
        for i in range(0, len(rows), step):
            part, f = t[i : i + step], factors[local[i : i + step], c]
            err = ((_quantized(part, f) * f[:, None] - part) ** 2).sum(axis=1)
            errors[:, c] += _by_group(err, local[i : i + step], len(groups), np.add)
    chosen = factors[np.arange(len(groups)), errors.argmin(axis=1)]  # ties: the smaller factor
    new_s = np.where(chosen > 1.0, (old_s * chosen).astype(np.float32), old_s).astype(np.float32)
    # requantized with the float32 scales that are stored
    t = w_rows / new_s[local][:, None]
    plain = np.clip(np.rint(t), -QMAX, QMAX)
    nudged = int((_excess(*_pairs(plain)) > 0).sum())
    new_rows = q_rows.copy()
    new_rows[rows] = _nudge(t, plain).astype(q.dtype)
    if per_tensor:
        flat_scale[:] = new_s[0]
    else:
        flat_scale.reshape(-1, block)[groups] = new_s[:, None]
    n = int(q.shape[out_axis] if out_axis is not None else q.shape[0])
    report = {
        "channels": n if per_tensor else int(len(groups) * block),
        "of": n,
        "rescaled": int((new_s != old_s).sum()) * (1 if per_tensor else block),
        "nudged_pairs": nudged,
    }
    return np.ascontiguousarray(layout.unrows(new_rows, q.shape).astype(q.dtype)), scale, report


def unsafe_layers(graph) -> list[dict]:
    """The int8 layers of a QDQ graph (an ``onnx_ir.Graph``) that can overflow int16 on x86
    without VNNI: a Conv/Gemm/MatMul whose input and weight are both DequantizeLinear outputs
    (onnxruntime fuses it into an int8 kernel) with an unsafe int8 weight pair. ``[]``: the
    model is saturation-free by the bound. Each entry: node, op_type, unsafe_pairs."""
    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        x, w = (v.producer() if v is not None else None for v in node.inputs[:2])
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        q = w.inputs[0].const_value if w.inputs[0] is not None else None
        if q is None or q.dtype.name != "INT8":
            continue
        if node.op_type == "Conv":
            layout = Layout("Conv", group=node.attributes.get_int("group", 1))
        else:
            layout = Layout(node.op_type, trans_b=bool(node.attributes.get_int("transB", 0)) if node.op_type == "Gemm" else False)
        n = unsafe_pairs(q.numpy(), layout)
        if n:
            found.append({"node": node.name or "", "op_type": node.op_type, "unsafe_pairs": n})
    return found
