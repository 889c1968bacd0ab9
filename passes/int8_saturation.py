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

With the layer input's second moments ``H = E[x xᵀ]`` over K (``Unfold`` says how a layer's input
becomes K rows; the layer that runs models measures them: ``runtime_check/saturation.input_moments``),
the rows ``saturation_free`` changes are rounded again with error feedback (GPTQ's update, the pairs
kept on the bound): the error one pair's rounding leaves is carried onto the weights not yet rounded
so that the layer's *output* error ``(w - s q) H (w - s q)ᵀ`` stays small; each row keeps whichever
rounding gives the smaller output error. Only layers whose feedback fits ``FEEDBACK_MACS``.

uint8 weights (zero point 128) run in MLAS's u8×u8 kernels, which widen both operands to int16
and add products in int32 (VPMADDWD): exact, at about half the u8×s8 speed on a VNNI host. The
cheapest layers (``uint8_layers``) keep their full 8-bit weights that way; the others get
int8 weights changed by ``saturation_free``.

Pure numpy: no onnxruntime, torch or click.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

PAIR_LIMIT = 128  # largest same-sign |q1| + |q2| with 255 * sum inside int16
QMAX = 127
METHODS = ("best", "scale", "nudge")
# scale factors tried per channel between "no change" and "the scale alone makes it safe"
GRID = 9
CHUNK = 1 << 20  # weight elements handled at a time (bounds the float32 temporaries)
# The cheapest int8 layers, together at most this share of the int8 layers' multiply-adds, keep
# full 8-bit weights stored as uint8 with zero point 128 where they hold an unsafe pair: onnxruntime
# runs them with its u8×u8 kernels, which widen both operands to int16 and add the products in
# int32 (VPMADDWD): nothing saturates. They cost speed (a 128-channel 3×3 QLinearConv: 2.2× the
# u8×s8 time on an AVX-512 VNNI host), so only where little compute runs; there they keep the
# fidelity the bound costs most often: the first layer (a latent projection) and the last (the
# few channels that draw the image).
# 0.06 rather than 0.05: the zoo cgan's latent projection (4.3% of its multiply-adds, beside its last
# Conv's 1.2%) cost it 0.38 dB against full 8-bit weights on 64 inputs
UINT8_SHARE = 0.06
# and any layer this small (multiply-adds per sample), whatever its share: the kernel's speed is lost
# in the op's fixed cost (a latent projection, an LSTM decoder's output head; 1 << 16 rather than
# 1 << 14 for the attention family's 48-output head: -0.35 dB against full 8-bit weights on 64 inputs)
UINT8_MACS = 1 << 16
UINT8_ZERO_POINT = 128
# such a cheap layer keeps its uint8 weights only where the bound costs it: its output error with the
# saturation-free weights (error feedback included) over its output error with full 8-bit weights
# (``bound_cost``, on the layer input's moments) above this; else it gets the bounded int8 weights
# and runs in the u8×s8 kernels (session 4's uint8 layers cost dcgan and cgan 9-10% of their speed
# at batch 64). Measured costs: 0.002-0.96 on the Convs of the zoo and families (bounded: within
# 0.12 dB of uint8 or above), 1.47 / 2.51 on attention's in-projection / head (-0.04 / -0.21 dB
# against full 8-bit weights on 64 inputs with the first / both bounded)
UINT8_COST = 2.0
# error feedback: H's damping (share of its mean diagonal, as GPTQ), the K entries handled as one
# block of H (larger K: H is kept block-diagonal, feedback stays within a block; bounds H's memory
# and cost on wide layers), and the columns updated at once inside a block (GPTQ's lazy batch)
DAMP = 0.01
MOMENT_BLOCK = 1152
FEEDBACK_COLUMNS = 128
# a layer gets error feedback when its unsafe rows × K × block width stay within this (about the
# multiply-adds of the feedback and of H's factorizations): every layer of the zoo and the seeded
# families (at most 1.7e8: conv:gan's 128-channel 3×3 Conv) but not the wide layers of the large
# DCGANs (12M: 5.3e8), whose build time stays what the search alone costs (they keep the search's
# weights, and no moments are measured for them)
FEEDBACK_MACS = 1 << 28
# threads for the moments and the feedback: each holds its own temporaries (a layer's unfolded rows, up
# to runtime_check.saturation.ROW_CHUNK floats, and a channels-last copy of its input batch)
MAX_WORKERS = 4


def worker_threads() -> int:
    """Threads the moments and the error feedback of several layers run on (one BLAS thread each:
    the same sums in any order): the cores this process may use, at most ``MAX_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


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

    def count(self, shape: tuple[int, ...]) -> int | None:
        """How many rows ``rows`` gives for an array of ``shape`` (None: no pairs)."""
        if self.op == "Conv":
            return None if shape[1] == 1 and shape[0] == self.group else int(shape[0])
        if self.op == "Gemm":
            return int(shape[0] if self.trans_b else shape[1])
        if self.op == "MatMul":
            return int(np.prod(shape[:-2], dtype=np.int64)) * int(shape[-1])
        raise ValueError(f"no int8 pairing known for {self.op}")

    def ranged(self, ndim: int) -> bool:
        """Row r is output channel r and ``row_range`` reads only its rows' weights (Conv, Gemm,
        2-D MatMul; not a batched MatMul)."""
        return self.op != "MatMul" or ndim == 2

    def row_range(self, a: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``rows(a)[0][start:stop]``, reading only those rows of a Conv/Gemm/2-D MatMul weight."""
        if self.op == "Conv":
            return np.moveaxis(a[start:stop], 1, -1).reshape(stop - start, -1)
        return self.rows(a)[0][start:stop]

    def put_rows(self, out: np.ndarray, start: int, stop: int, rows: np.ndarray) -> None:
        """Writes ``rows`` (rows start:stop, in K order) into the weight array ``out`` (a batched
        MatMul: all rows at once)."""
        if self.op == "Conv":
            out[start:stop] = self.unrows(rows, (stop - start, *out.shape[1:]))
        elif self.ranged(out.ndim):
            self.rows(out)[0][start:stop] = rows  # a view of ``out``
        else:
            out[...] = self.unrows(rows, out.shape)

    def spans(self, shape: tuple[int, ...], block: int = 1, whole: bool = False) -> list[tuple[int, int]]:
        """Row ranges of about ``CHUNK`` weights (a multiple of ``block`` rows each) covering the rows
        of an array of ``shape``; one range for all when ``whole`` or the layout cannot read a range."""
        count = self.count(shape) or 0
        if whole or not self.ranged(len(shape)) or not count:
            return [(0, count)]
        k = int(np.prod(shape, dtype=np.int64)) // count
        step = max(block, CHUNK // max(k, 1) // block * block)
        return [(i, min(i + step, count)) for i in range(0, count, step)]


def _pair_sums(rows: np.ndarray) -> np.ndarray:
    """Each K pair's sum ``rows[:, 2j] + rows[:, 2j+1]``, ``[R, ceil(K/2)]`` (an odd K pairs its
    last entry with a zero, as MLAS pads). A pair is unsafe exactly when ``|sum| > PAIR_LIMIT``:
    same-sign magnitudes add up, and a pair of opposite signs stays within max(|q1|, |q2|) <= 127."""
    k = rows.shape[1]
    dtype = np.int16 if rows.dtype.kind in "iu" else rows.dtype
    sums = np.add(rows[:, 0 : k - 1 : 2], rows[:, 1::2], dtype=dtype)
    if k % 2:
        sums = np.concatenate([sums, rows[:, -1:].astype(dtype)], axis=1)
    return sums


def _unsafe_per_row(q: np.ndarray, layout: Layout) -> np.ndarray | None:
    """How many unsafe pairs each row of ``q`` holds (``CHUNK`` weights at a time), or None when the
    kernel forms no pairs."""
    count = layout.count(q.shape)
    if count is None:
        return None
    out = np.empty(count, dtype=np.int64)
    for start, stop in layout.spans(q.shape):
        out[start:stop] = np.count_nonzero(np.abs(_pair_sums(layout.row_range(q, start, stop))) > PAIR_LIMIT, axis=1)
    return out


def feedback_cost(q: np.ndarray, layout: Layout) -> int:
    """What error feedback on the int8 weights ``q`` would cost (compared with ``FEEDBACK_MACS``):
    rows holding an unsafe pair × K × the width of H's blocks."""
    per_row = _unsafe_per_row(q, layout)
    if per_row is None or not per_row.size:
        return 0
    k = q.size // per_row.size
    k += k % 2
    return int(np.count_nonzero(per_row)) * k * min(k, MOMENT_BLOCK)


def unsafe_pairs(q: np.ndarray, layout: Layout) -> int:
    """How many weight pairs of ``q`` can overflow int16 in a non-VNNI x86 kernel."""
    per_row = _unsafe_per_row(q, layout)
    return 0 if per_row is None else int(per_row.sum())


def _nudge(s: np.ndarray, q: np.ndarray, bad: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The unsafe pairs ``bad`` (row, pair index) of the rounded rows ``q`` (even K) moved onto the
    bound: the integer pair with magnitudes summing to ``PAIR_LIMIT`` nearest (least squares) to the
    ideal values ``s``; in place, returns ``q``."""
    r, j = bad
    sa, sb = s[r, 2 * j], s[r, 2 * j + 1]
    a, b = _on_bound(np.abs(sa), np.abs(sb))
    sign = np.where(sa + sb >= 0, 1, -1)  # an unsafe pair has one sign
    q[r, 2 * j], q[r, 2 * j + 1] = sign * a, sign * b
    return q


def _on_bound(ma: np.ndarray, mb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer magnitudes ``(a, PAIR_LIMIT - a)`` nearest to ``(ma, mb)`` (the projection onto the
    bound, rounded)."""
    a = np.clip(np.rint(ma - (ma + mb - PAIR_LIMIT) / 2), PAIR_LIMIT - QMAX, QMAX)
    return a, PAIR_LIMIT - a


def _rounded(t: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, q)``: rows ``t`` divided by their factor ``f``, and rounded (clipped to QMAX)."""
    s = t / f[:, None]
    q = np.rint(s)
    np.clip(q, -QMAX, QMAX, out=q)
    return s, q


def _candidates(t: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``(|pair sums|, (row, pair index))`` of the rows ``t`` (even K): the pairs that can be unsafe
    once divided by a factor f >= 1 and rounded. Such a pair has one sign and ``|q1| + |q2| >= 129``
    with ``|q| <= |t / f| + 1/2 <= |t| + 1/2``, so ``|t1 + t2| >= 128``; every other pair is safe
    for every factor the search tries (all >= 1) and for the stored scales (never below the old)."""
    sums = np.abs(_pair_sums(t))
    return sums, np.nonzero(sums >= PAIR_LIMIT - 1)


def _over(q: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ``pairs`` (row, pair index) of the rounded rows ``q`` that break the bound, in order."""
    r, j = pairs
    over = np.abs(q[r, 2 * j] + q[r, 2 * j + 1]) > PAIR_LIMIT
    return r[over], j[over]


def _errors(t: np.ndarray, f: np.ndarray, pairs: tuple, buf: np.ndarray, clip: bool) -> np.ndarray:
    """Per row of ``t`` (even K), the squared weight error (in units of the old scale) of factor
    ``f``: rounding, then the unsafe pairs moved onto the bound. ``pairs``: ``_candidates`` of ``t``
    (no other pair can break the bound); ``buf``: two scratch arrays of at least ``t``'s rows;
    ``clip``: whether rounding can pass QMAX."""
    s = np.divide(t, f[:, None], out=buf[0, : len(t)])
    d = np.rint(s, out=buf[1, : len(t)])
    if clip:
        np.clip(d, -QMAX, QMAX, out=d)
    r, j = _over(d, pairs)
    np.subtract(d, s, out=d)
    err = np.einsum("ij,ij->i", d, d)
    if r.size:
        sa, sb = s[r, 2 * j], s[r, 2 * j + 1]
        a, b = _on_bound(np.abs(sa), np.abs(sb))
        change = (a - np.abs(sa)) ** 2 + (b - np.abs(sb)) ** 2 - d[r, 2 * j] ** 2 - d[r, 2 * j + 1] ** 2
        err += np.bincount(r, weights=change, minlength=len(err))
    return err * f.astype(np.float64) ** 2


def _factors(t: np.ndarray, sums: np.ndarray, pairs: tuple, group: np.ndarray, n: int, method: str) -> np.ndarray:
    """``[n, C]`` scale factors tried per scale group, ascending, from 1 (keep the scale, nudge) to
    the smallest that makes every pair safe by itself (worst pair / 128, or / 127 where rounding
    still breaks the bound: two roundings add at most 1). ``sums``, ``pairs``: ``_candidates``."""
    if method == "nudge":
        return np.ones((n, 1))
    worst = np.zeros(n, dtype=np.float64)
    np.maximum.at(worst, group, sums.max(axis=1))
    top = np.maximum(1.0, worst / PAIR_LIMIT)
    r, j = pairs
    f = top[group].astype(np.float32)[r]
    qa, qb = (np.clip(np.rint(t[r, 2 * j + i] / f), -QMAX, QMAX) for i in (0, 1))
    still = np.zeros(n, dtype=bool)
    still[group[r[np.abs(qa + qb) > PAIR_LIMIT]]] = True
    top = np.where(still, np.maximum(1.0, worst / (PAIR_LIMIT - 1)), top)
    if method == "scale":
        return top[:, None]
    # a geometric grid, and factors just under the safe one (a few pairs then nudged a step or two)
    grid = top[:, None] ** np.linspace(0.0, 1.0, GRID)[None, :]
    near = np.clip(worst[:, None] / (PAIR_LIMIT + np.arange(1, GRID))[None, :], 1.0, top[:, None])
    return np.sort(np.concatenate([grid, near], axis=1), axis=1)


def _search(t: np.ndarray, sums: np.ndarray, pairs: tuple, local: np.ndarray, n: int, method: str) -> np.ndarray:
    """Per scale group, the factor of ``_factors`` with the least squared weight error (ties: the
    smaller). Vectorized over rows: the only loops are over factors and row chunks; two scratch
    arrays of a chunk are reused for every factor."""
    factors = _factors(t, sums, pairs, local, n, method)
    if factors.shape[1] == 1:
        return factors[:, 0]
    step = max(1, CHUNK // max(1, t.shape[1]))
    errors = np.zeros(factors.shape)
    clip = max(t.max(initial=0.0), -t.min(initial=0.0)) >= QMAX + 0.5  # else rounding stays within QMAX
    buf = np.empty((2, min(step, len(t)), t.shape[1]), dtype=np.float32)
    r, j = pairs
    for i in range(0, len(t), step):
        part, g = t[i : i + step], local[i : i + step]
        lo, hi = np.searchsorted(r, [i, i + step])  # the candidates of these rows (row-major order)
        here = (r[lo:hi] - i, j[lo:hi])
        for c in range(factors.shape[1]):
            errors[:, c] += np.bincount(g, weights=_errors(part, factors[g, c].astype(np.float32), here, buf, clip), minlength=n)
    return factors[np.arange(n), errors.argmin(axis=1)]


def saturation_free(w: np.ndarray, q: np.ndarray, scale: np.ndarray, out_axis: int | None, layout: Layout, *, block: int = 1, method: str = "best",
                    moments: list | None = None):
    """``(q, scale, report)``: the int8 weights ``q`` of float weights ``w`` (``q ~ w / scale``,
    one scale per slice of ``out_axis``, shared by ``block`` consecutive slices, or one scale for
    all with None) changed so that no weight pair can overflow int16.

    Only scale groups (output channels, blocks) with an unsafe pair change. ``method``: "scale"
    gives such a group the smallest larger scale that makes it safe; "nudge" keeps its scale and
    moves each unsafe pair onto the bound; "best" (default) tries scale factors between the two
    (each followed by nudging what is still unsafe) and keeps the one with the least squared
    weight error. ``moments`` (``[(start, stop, H)]``, ``moment_blocks`` of the layer input's K): the
    changed rows are then rounded again with error feedback (``_feedback``) where that lowers their
    output error. Deterministic. ``report``: None when nothing changed, else what changed.

    Streamed: output channels of about ``CHUNK`` weights at a time (``Layout.spans``), their float
    weights read only where a group changes, so the temporaries stay a few chunks whatever the
    layer's size; all rows at once for one scale over all rows, a batched MatMul or error feedback
    (small layers: ``FEEDBACK_MACS``). The chunks change nothing: every group's error sums its rows
    in order, and each row is computed alone."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if layout.count(q.shape) is None:
        return q, scale, None
    per_tensor = out_axis is None or np.size(scale) == 1
    old = np.asarray(scale, dtype=np.float32).reshape(-1)
    n_out = q.shape[-1] if layout.op == "MatMul" else layout.count(q.shape)
    new_q = new_scale = None
    report = {"channels": 0, "of": int(q.shape[out_axis] if out_axis is not None else q.shape[0]), "rescaled": 0, "nudged_pairs": 0}
    fed = 0
    for start, stop in layout.spans(q.shape, 1 if per_tensor else block, whole=per_tensor or moments is not None):
        q_rows = layout.row_range(q, start, stop)
        bad_rows = (np.abs(_pair_sums(q_rows)) > PAIR_LIMIT).any(axis=1)
        if not bad_rows.any():
            continue
        group_of_row = np.zeros(len(q_rows), dtype=np.int64) if per_tensor else np.arange(start, stop) % n_out // block
        groups = np.unique(group_of_row[bad_rows])  # the scale groups that change
        rows = np.flatnonzero(np.isin(group_of_row, groups))
        local = np.searchsorted(groups, group_of_row[rows])
        old_s = np.broadcast_to(old[0] if per_tensor else old[groups * block], groups.shape)
        new_s, changed, nudged, f = _changed_rows(np.asarray(layout.row_range(w, start, stop)[rows], dtype=np.float32), local, old_s, method, moments)
        if new_q is None:
            new_q, new_scale = q.copy(), np.array(scale, dtype=np.float32, copy=True)
        q_rows = q_rows.copy()
        q_rows[rows] = changed.astype(q.dtype)
        layout.put_rows(new_q, start, stop, q_rows)
        if per_tensor:
            new_scale.reshape(-1)[:] = new_s[0]
        else:
            new_scale.reshape(-1, block)[groups] = new_s[:, None]
        report["channels"] += report["of"] if per_tensor else int(len(groups) * block)
        report["rescaled"] += int((new_s != old_s).sum()) * (1 if per_tensor else block)
        report["nudged_pairs"] += nudged
        fed += f
    if new_q is None:
        return q, scale, None
    if moments is not None:
        report["error_feedback_channels"] = fed
    return new_q, new_scale, report


def _changed_rows(w_rows: np.ndarray, local: np.ndarray, old_s: np.ndarray, method: str, moments: list | None) -> tuple:
    """``(new scales, rows, nudged pairs, rows fed back)`` for the float rows ``w_rows`` of the
    changing scale groups (row i in group ``local[i]``, whose scale was ``old_s``): the search,
    requantization with the float32 scales that are stored, nudging, error feedback."""
    k = w_rows.shape[1]
    if k % 2:  # MLAS pairs an odd K's last entry with a zero
        w_rows = np.concatenate([w_rows, np.zeros((len(w_rows), 1), np.float32)], axis=1)
    t = w_rows / old_s[local][:, None]  # ideal integers at the current scales
    sums, pairs = _candidates(t)
    chosen = _search(t, sums, pairs, local, len(old_s), method)
    del t, sums
    new_s = np.where(chosen > 1.0, (old_s * chosen).astype(np.float32), old_s).astype(np.float32)
    s, plain = _rounded(w_rows, new_s[local])
    bad = _over(plain, pairs)
    nudged = _nudge(s, plain, bad)
    fed = 0
    if moments is not None:
        nudged, fed = _feedback(s, nudged, moments)
    return new_s, nudged[:, :k], int(bad[0].size), fed


def _damped_factor(h: np.ndarray) -> np.ndarray:
    """``R / diag(R)`` (each column divided by its diagonal entry) for the upper triangular ``R``
    with ``H = R Rᵀ``, ``H`` damped as GPTQ does; inputs that are always 0 (a zero diagonal) get 1
    (their weights' errors cost nothing). One Cholesky factorization of ``H`` reversed: GPTQ's
    upper factor of ``H⁻¹`` is ``R⁻¹``, and carrying the errors through ``R``'s columns gives the
    same roundings without the inverse (about 7× less time on a 1152-wide block, one thread)."""
    diag = np.array(np.diag(h), dtype=np.float64)
    diag[diag <= 0] = 1.0
    diag += DAMP * float(np.mean(diag))  # the mean in H's order (the same damping bits)
    reversed_h = np.array(h[::-1, ::-1], dtype=np.float64, order="C")  # the one copy of H
    reversed_h[np.diag_indices_from(reversed_h)] = diag[::-1]
    r = np.linalg.cholesky(reversed_h)[::-1, ::-1]
    return r / np.diag(r)[None, :]


def _feedback_block(t: np.ndarray, q0: np.ndarray, h: np.ndarray) -> np.ndarray:
    """GPTQ over one block of K (even width): the ideal integers ``t`` [R, B] rounded pair by pair in
    K order, each rounding error ``t - q`` carried onto the columns after it (column j moves by
    ``(t_i - q_i) R_ij / R_jj``: the greedy choice that keeps ``(t - q) R`` small, ``H = R Rᵀ``,
    which is GPTQ's update), a pair whose rounding breaks the bound moved onto it (least squares,
    as ``_nudge``; the second weight of a pair then rounded within what the first leaves). ``q0``:
    the rounding without feedback, kept for rows where feedback does not lower ``e H eᵀ``."""
    rs = _damped_factor(h)
    # the columns as rows (contiguous) and clipped by ufuncs, no np.clip / np.outer wrappers: the same
    # arithmetic in the same order (identical roundings); rrdb's feedback 1.16 -> 0.61 s CPU (cProfile)
    tt = t.T.astype(np.float64)
    w = tt.copy()
    q = np.empty_like(w)
    width = w.shape[0]
    for c0 in range(0, width, FEEDBACK_COLUMNS):
        c1 = min(c0 + FEEDBACK_COLUMNS, width)
        for a in range(c0, c1, 2):
            b = a + 1
            wa = w[a]
            qa = np.rint(wa)
            np.maximum(qa, -QMAX, out=qa)
            np.minimum(qa, QMAX, out=qa)
            ea = tt[a] - qa
            wb = w[b] + ea * rs[a, b]
            qb = np.rint(wb)
            np.maximum(qb, -QMAX, out=qb)
            np.minimum(qb, QMAX, out=qb)
            over = np.abs(qa + qb) > PAIR_LIMIT
            if over.any():
                pa, _ = _on_bound(np.abs(wa[over]), np.abs(wb[over]))
                qa[over] = np.where(wa[over] + wb[over] >= 0, pa, -pa)
                ea = tt[a] - qa
                w[a + 1 : c1] += rs[a, a + 1 : c1, None] * ea
                qb = np.minimum(np.maximum(np.minimum(np.maximum(np.rint(w[b]), -QMAX), QMAX), -PAIR_LIMIT - qa), PAIR_LIMIT - qa)
            else:  # w[b] becomes wb (the same product and sum) and qb, within the bound, stands
                w[a + 1 : c1] += rs[a, a + 1 : c1, None] * ea
            w[b + 1 : c1] += rs[b, b + 1 : c1, None] * (tt[b] - qb)
            q[a], q[b] = qa, qb
        # the product of the rows' layout (C-contiguous errors), so that BLAS sums as it did
        w[c1:] += (np.ascontiguousarray((tt[c0:c1] - q[c0:c1]).T) @ rs[c0:c1, c1:]).T
    q = np.ascontiguousarray(q.T)
    better = _output_error(t - q, h) < _output_error(t - q0, h)
    return np.where(better[:, None], q, q0), better


def _output_error(e: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per row of the weight errors ``e``, ``e H eᵀ`` (one matrix product)."""
    return np.einsum("ij,ij->i", e @ h, e)


def _feedback(s: np.ndarray, q: np.ndarray, moments: list) -> tuple[np.ndarray, int]:
    """``(q, rows changed)``: the rows ``q`` (ideal integers ``s``, even K) rounded again with error
    feedback within each block ``(start, stop, H)`` of ``moments`` (``_feedback_block``)."""
    out = q.copy()
    changed = np.zeros(len(q), dtype=bool)
    for start, stop, h in moments:
        out[:, start:stop], better = _feedback_block(s[:, start:stop], q[:, start:stop], h)
        changed |= better
    return out, int(changed.sum())


@dataclass(frozen=True)
class Unfold:
    """How a layer's input ``x`` becomes the rows its int8 kernel multiplies with the weight rows,
    in the kernel's K order (``Layout.rows``): a Conv's windows (``kernel``, ``pads`` begin+end,
    ``strides``, ``dilations``; input channels fastest), or the last axis (Gemm, MatMul: empty
    ``kernel``)."""

    kernel: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()

    def rows(self, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` rows of ``x`` (or all, if fewer), drawn with ``rng``, ``[n, K]`` float32."""
        if not self.kernel:
            flat = x.reshape(-1, x.shape[-1])
            if len(flat) > count:
                flat = flat[np.sort(rng.choice(len(flat), count, replace=False))]
            return np.asarray(flat, dtype=np.float32)
        d = len(self.kernel)
        # channels last first (one copy of the batch): each window is then gathered in K order as runs
        # of C contiguous floats, with no second copy to reorder it (rrdb's 20 layers, cProfile: 1.37 -> 0.21 s)
        x = np.pad(np.moveaxis(np.asarray(x, dtype=np.float32), 1, -1), [(0, 0)] + [(self.pads[i], self.pads[i + d]) for i in range(d)] + [(0, 0)])
        span = tuple((k - 1) * dl + 1 for k, dl in zip(self.kernel, self.dilations))
        win = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(1, 1 + d)))  # [N, *positions, C, *span]
        win = np.moveaxis(win, 1 + d, -1)  # [N, *positions, *span, C]
        win = win[(slice(None), *(slice(None, None, st) for st in self.strides), *(slice(None, None, dl) for dl in self.dilations))]
        grid = win.shape[: 1 + d]  # sample, output positions
        total = int(np.prod(grid))
        picked = np.sort(rng.choice(total, count, replace=False)) if total > count else np.arange(total)
        windows = win[np.unravel_index(picked, grid)]  # [n, *kernel, C]
        return windows.reshape(len(picked), -1)


def moment_blocks(k: int) -> list[tuple[int, int]]:
    """The diagonal blocks ``(start, stop)`` of ``H`` kept for K = ``k`` (an odd K padded by one, as
    MLAS pairs it): even widths of at most ``MOMENT_BLOCK``, so that no pair is split."""
    k += k % 2
    return [(i, min(i + MOMENT_BLOCK, k)) for i in range(0, k, MOMENT_BLOCK)]


def uint8_layers(macs: dict, share: float = UINT8_SHARE, small: int = UINT8_MACS) -> set:
    """The keys of ``macs`` (layer -> multiply-adds per sample, None when unknown) whose weights
    are kept full 8-bit as uint8: layers of at most ``small`` multiply-adds, and the cheapest
    others, in ascending order (ties by key), while their sum stays within ``share`` of the total
    (unknown when any count is None: then only the small ones)."""
    chosen = {key for key, m in macs.items() if m is not None and m <= small}
    if not macs or any(m is None for m in macs.values()):
        return chosen
    budget = share * sum(macs.values()) - sum(macs[key] for key in chosen)
    for key, m in sorted(macs.items(), key=lambda kv: (kv[1], str(kv[0]))):
        if key in chosen:
            continue
        if m > budget:
            break
        budget -= m
        chosen.add(key)
    return chosen


def bound_cost(w: np.ndarray, full: tuple, bounded: tuple, out_axis: int | None, layout: Layout, moments: list) -> float:
    """How much the pair bound costs a layer: ``Σ e H eᵀ`` over its rows for the ``bounded`` int8
    weights ``(q, scale)`` over the same for the ``full`` 8-bit ones, ``e = w - q·scale`` in the
    kernel's K order, ``moments`` the blocks of H (``moment_blocks``). inf when full 8-bit weights
    have no output error."""
    errors = []
    for q, scale in (full, bounded):
        s = np.asarray(scale, dtype=np.float64)
        if out_axis is not None and s.size > 1:
            s = s.reshape([-1 if i == out_axis else 1 for i in range(w.ndim)])
        e = layout.rows(np.asarray(w, dtype=np.float64) - q.astype(np.float64) * s)[0]
        if e.shape[1] % 2:  # an odd K padded, as the moments are
            e = np.concatenate([e, np.zeros((len(e), 1))], axis=1)
        errors.append(sum(float(_output_error(e[:, a:b], h).sum()) for a, b, h in moments))
    return errors[1] / errors[0] if errors[0] > 0 else float("inf")


def as_uint8(q: np.ndarray) -> np.ndarray:
    """int8 weights as uint8 with zero point ``UINT8_ZERO_POINT``: the same dequantized values."""
    return (q.astype(np.int16) + UINT8_ZERO_POINT).astype(np.uint8)


def unsafe_layers(graph) -> list[dict]:
    """The int8 layers of a QDQ graph (an ``onnx_ir.Graph``) that can overflow int16 on x86
    without VNNI: a Conv/Gemm/MatMul whose input and weight are both DequantizeLinear outputs
    (onnxruntime fuses it into an int8 kernel) with an unsafe int8 weight pair. uint8 weights run
    in u8×u8 kernels, which do not saturate. ``[]``: the model is saturation-free by the bound.
    Each entry: node, op_type, unsafe_pairs."""
    from gencompress.passes.compact_block_weights import folded_weight

    found = []
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        x, w = (v.producer() if v is not None else None for v in node.inputs[:2])
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        q = folded_weight(w.inputs[0])  # an initializer, or a pixel-block weight stored compactly
        if q is None or q.dtype != np.int8:
            continue
        if node.op_type == "Conv":
            layout = Layout("Conv", group=node.attributes.get_int("group", 1))
        else:
            layout = Layout(node.op_type, trans_b=bool(node.attributes.get_int("transB", 0)) if node.op_type == "Gemm" else False)
        n = unsafe_pairs(q, layout)
        if n:
            found.append({"node": node.name or "", "op_type": node.op_type, "unsafe_pairs": n})
    return found
