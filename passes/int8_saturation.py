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
CHUNK = 1 << 20  # weight elements handled at a time (bounds the float64 copies)


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


def _worst(t: np.ndarray) -> float:
    """The largest same-sign magnitude sum of a pair of ``t``."""
    ta, tb = _pairs(t)
    return float(np.maximum(np.maximum(ta, 0) + np.maximum(tb, 0), -(np.minimum(ta, 0) + np.minimum(tb, 0))).max())


def _safe_factor(t: np.ndarray) -> float:
    """The smallest scale factor (tried: worst pair / 128, then / 127) after which rounding ``t``
    leaves no unsafe pair; / 127 always does (two roundings add at most 1)."""
    worst = _worst(t)
    for limit in (PAIR_LIMIT, PAIR_LIMIT - 1):
        f = max(1.0, worst / limit)
        if not (_excess(*_pairs(np.clip(np.rint(t / f), -QMAX, QMAX))) > 0).any():
            return f
    return max(1.0, worst / (PAIR_LIMIT - 1))


def _candidates(t: np.ndarray, method: str) -> list[float]:
    if method == "nudge":
        return [1.0]
    top = _safe_factor(t)
    if method == "scale" or top == 1.0:
        return [top]
    # a coarse grid, and factors just under the safe one (a few pairs then nudged by a step or two)
    worst = _worst(t)
    near = [worst / (PAIR_LIMIT + d) for d in range(1, GRID)]
    return sorted({float(f) for f in [*np.geomspace(1.0, top, GRID), *near] if 1.0 <= f <= top})


def _quantized(t: np.ndarray, f: float) -> np.ndarray:
    q = np.clip(np.rint(t / f), -QMAX, QMAX)
    return _nudge(t / f, q)


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
    group_of_row = channel // block if out_axis is not None else np.zeros(len(channel), dtype=np.int64)
    w_rows = layout.rows(np.asarray(w, dtype=np.float32))[0]
    new_rows = q_rows.copy()
    groups = np.unique(group_of_row[bad_rows])
    rescaled = nudged = 0
    for g in groups:
        rows = np.flatnonzero(group_of_row == g)
        s = np.float32(flat_scale[g * block] if out_axis is not None else flat_scale[0])
        t = w_rows[rows].astype(np.float64) / float(s)
        best = None
        step = max(1, CHUNK // max(1, t.shape[1]))
        for f in _candidates(t, method):
            err = sum(float(((_quantized(t[i : i + step], f) * f - t[i : i + step]) ** 2).sum()) for i in range(0, len(rows), step))
            if best is None or err < best[0]:
                best = (err, f)
        new_s = np.float32(float(s) * best[1]) if best[1] != 1.0 else s
        # requantized with the float32 scale that is stored
        t = w_rows[rows].astype(np.float64) / float(new_s)
        plain = np.clip(np.rint(t), -QMAX, QMAX)
        nudged += int((_excess(*_pairs(plain)) > 0).sum())
        new_rows[rows] = _nudge(t, plain).astype(q.dtype)
        if new_s != s:
            rescaled += 1
            if out_axis is None:
                flat_scale[:] = new_s
            else:
                flat_scale[g * block : (g + 1) * block] = new_s
    report = {
        "channels": int(len(groups) * block if out_axis is not None else q.shape[0]),
        "of": int(q.shape[out_axis] if out_axis is not None else q.shape[0]),
        "rescaled": rescaled * block if out_axis is not None else rescaled,
        "nudged_pairs": nudged,
    }
    return np.ascontiguousarray(layout.unrows(new_rows, q.shape).astype(q.dtype)), scale, report
