"""Calibration: run the float model in onnxruntime over a calibration set, collect tensor statistics.

Not a pass: it reads a model and returns numbers. ``collect_stats`` runs the model once per
batch with every requested tensor added as a graph output, and keeps for each tensor its exact
min/max and (for the histogram methods) its count of exact zeros and a signed histogram whose
range doubles as larger values arrive, so one pass over the data suffices. ``TensorStats.range``
turns the statistics into a quantization range for one of the methods:

- ``minmax``: the observed range.
- ``percentile``: keep ``percentile`` % of the values, clip the rest (of ``|x|`` for symmetric
  ranges; split between both tails for asymmetric ones).
- ``entropy``: the clipping threshold minimising the KL divergence between the histogram and
  its quantized version (TensorRT's method), on ``|x|``, or on ``x`` for non-negative tensors.
- ``mse``: the range, shrunk from the observed one, minimising the expected squared error of
  quantize-dequantize (rounding error inside, clipping error outside).

Every range contains 0, so that zero (padding, ReLU) is exactly representable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx

from gencompress.errors import GencompressError
from gencompress.batches import batches, fixed_batch, num_samples
from gencompress.passes.insert_qdq import CALIBRATION_METHODS as METHODS, DEFAULT_PERCENTILE

DEFAULT_CALIB_SIZE = 256
# A large model calibrates on fewer draws (``default_calib_size``): 256 while they cost at most 4 TMAC
# (15.6 GMAC a draw: every zoo model, family, the large DCGANs and ResNet-50 keep 256), else the
# largest power of two within that, at least 64 (VGG-19's 19.6 GMAC: 128; its 256 draws were half
# of its default quantize, 31 of 60 s on 2 cores). From the model's shapes: the same on every machine.
CALIB_MACS = 4_000_000_000_000
MIN_CALIB_SIZE = 64
AUTO_CALIB_HELP = (f"default {DEFAULT_CALIB_SIZE}, fewer for a model above {CALIB_MACS / DEFAULT_CALIB_SIZE / 1e9:.1f} GMAC per draw "
                   f"(a power of two, at least {MIN_CALIB_SIZE})")
BATCH_SIZE = 64
# the calibration run returns every calibrated tensor of a batch at once: a large model gets
# smaller batches, so that one batch's tensors stay below this (statistics are the same for
# minmax; the histograms of the other methods start from the first batch's range)
ACTIVATION_BUDGET = 128 * 2**20
HALF_BINS = 2048  # histogram bins on each side of zero


# ---- statistics -------------------------------------------------------------------------------


@dataclass
class TensorStats:
    """Running statistics of one tensor over the calibration set."""

    name: str
    histogram: bool = True
    lo: float = math.inf
    hi: float = -math.inf
    count: int = 0
    zeros: int = 0
    half_range: float = 0.0  # the histogram covers [-half_range, half_range]
    counts: np.ndarray | None = field(default=None, repr=False)  # 2 * HALF_BINS bins

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())  # exact in float32; NaN propagates, Inf shows
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise GencompressError(
                f"calibration: tensor {self.name!r} has NaN or Inf values on the calibration inputs"
            )
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)
        self.count += x.size
        if not self.histogram:
            return  # minmax needs no more (and no float64 copy of a large batch)
        x = x.astype(np.float64, copy=False).ravel()
        self.zeros += int(np.count_nonzero(x == 0))
        peak = max(abs(self.lo), abs(self.hi))
        if self.counts is None:
            self.counts = np.zeros(2 * HALF_BINS, dtype=np.float64)
            # a little above the peak, so that no value sits on the upper edge
            self.half_range = peak * (1.0 + 1.0 / HALF_BINS) if peak > 0 else 1.0
        while peak >= self.half_range:
            self._double()
        width = self.half_range / HALF_BINS
        index = np.floor(x / width).astype(np.int64) + HALF_BINS
        np.clip(index, 0, 2 * HALF_BINS - 1, out=index)
        self.counts += np.bincount(index, minlength=2 * HALF_BINS)

    def _double(self) -> None:
        """Double the histogram's range by merging bin pairs (exact: edges stay aligned)."""
        merged = self.counts.reshape(HALF_BINS, 2).sum(axis=1)
        counts = np.zeros_like(self.counts)
        counts[HALF_BINS // 2 : HALF_BINS // 2 + HALF_BINS] = merged
        self.counts = counts
        self.half_range *= 2.0

    # ---- ranges ---------------------------------------------------------------------------

    def range(self, method: str = "minmax", *, symmetric: bool = False, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """The quantization range ``(lo, hi)`` for ``method``; always contains 0.

        ``symmetric``: the range will be used as ``[-t, t]`` (int8 symmetric); otherwise
        as an asymmetric uint8 range.
        """
        if self.count == 0:
            raise GencompressError(f"calibration: tensor {self.name!r} was never computed")
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if method == "minmax" or hi == lo:
            return lo, hi
        if self.counts is None:
            raise ValueError(f"{self.name}: method {method!r} needs a histogram")
        nonneg = self.lo >= 0
        if method == "percentile":
            lo2, hi2 = self._percentile_range(percentile, symmetric, nonneg)
        elif method == "entropy":
            t = self._entropy_threshold(symmetric, nonneg)
            lo2, hi2 = (0.0, t) if nonneg else (-t, t)
        elif method == "mse":
            lo2, hi2 = self._mse_range(symmetric, nonneg)
        else:
            raise GencompressError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        # never wider than what was observed, never excluding 0
        return max(lo, min(lo2, 0.0)), min(hi, max(hi2, 0.0))

    @property
    def _width(self) -> float:
        return self.half_range / HALF_BINS

    def _abs_hist(self) -> np.ndarray:
        """Counts of |x| over [0, half_range] (HALF_BINS bins)."""
        return self.counts[HALF_BINS:] + self.counts[:HALF_BINS][::-1]

    def _percentile_range(self, percentile: float, symmetric: bool, nonneg: bool) -> tuple[float, float]:
        keep = percentile / 100.0
        w = self._width
        if symmetric or nonneg:
            hist = self.counts[HALF_BINS:] if nonneg else self._abs_hist()
            cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
            i = int(np.searchsorted(cdf, keep))
            t = (i + 1) * w
            return (0.0, t) if nonneg else (-t, t)
        tail = (1.0 - keep) / 2.0
        cdf = np.cumsum(self.counts) / max(self.counts.sum(), 1.0)
        i_lo = int(np.searchsorted(cdf, tail))
        i_hi = int(np.searchsorted(cdf, 1.0 - tail))
        return (i_lo - HALF_BINS) * w, (i_hi + 1 - HALF_BINS) * w

    def _entropy_threshold(self, symmetric: bool, nonneg: bool) -> float:
        hist = (self.counts[HALF_BINS:] if nonneg else self._abs_hist()).copy()
        # exact zeros (ReLU, padding) are exact at any threshold: a spike in the first bin would
        # otherwise dominate the divergence and pull the threshold towards 0
        hist[0] = max(hist[0] - self.zeros, 0.0)
        levels = 255 if (nonneg and not symmetric) else 127
        return _kl_threshold(hist, levels) * self._width

    def _mse_range(self, symmetric: bool, nonneg: bool) -> tuple[float, float]:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if symmetric:
            t = max(-lo, hi)
            lo, hi = -t, t
        centers = (np.arange(-HALF_BINS, HALF_BINS) + 0.5) * self._width
        counts = self.counts
        # exact zeros cost nothing (0 is on the grid); remove them from the zero-adjacent bins
        zeros_left = float(self.zeros)
        counts = counts.copy()
        for i in (HALF_BINS, HALF_BINS - 1):
            take = min(counts[i], zeros_left)
            counts[i] -= take
            zeros_left -= take
        w2 = self._width**2 / 12.0
        best, best_err = (lo, hi), math.inf
        for c in np.linspace(1.0, 0.05, 96):
            clo, chi = lo * c, hi * c
            if symmetric:
                scale = chi / 127.0
            else:
                scale = (chi - clo) / 255.0
            if scale <= 0:
                continue
            inside = (centers >= clo) & (centers <= chi)
            over = np.where(centers > chi, centers - chi, 0.0) + np.where(centers < clo, clo - centers, 0.0)
            err = float(np.sum(counts[inside]) * scale * scale / 12.0 + np.sum(counts * (over * over + w2 * (~inside))))
            if err < best_err:
                best, best_err = (clo, chi), err
        return best


def _kl_threshold(hist: np.ndarray, levels: int) -> int:
    """Bin count ``i`` (threshold = i bins) minimising KL(P || Q) of the clipped histogram."""
    n = hist.size
    total = hist.sum()
    if total <= 0:
        return n
    nonzero = np.nonzero(hist)[0]
    last = int(nonzero[-1]) + 1 if nonzero.size else n
    if last <= levels:
        return last
    cumsum = np.cumsum(hist)
    step = max(1, (last - levels) // 512)
    candidates = list(range(levels, last + 1, step))
    if candidates[-1] != last:
        candidates.append(last)
    best_i, best_kl = last, math.inf
    for i in candidates:
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += total - cumsum[i - 1]  # clipped outliers land in the last bin
        # Q: merge the i bins into `levels` groups, spread each group's mass over its non-empty bins
        edges = np.linspace(0, i, levels + 1).round().astype(np.int64)
        group = np.repeat(np.arange(levels), np.diff(edges))
        src = hist[:i]
        nz = (src > 0).astype(np.float64)
        mass = np.bincount(group, weights=src, minlength=levels)
        nnz = np.bincount(group, weights=nz, minlength=levels)
        q = np.where(nz > 0, (mass / np.maximum(nnz, 1.0))[group], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs <= 0:
        return math.inf
    q = q / qs
    mask = p > 0
    qm = np.where(q[mask] > 0, q[mask], 1e-12)  # smoothing: p>0 where q==0 (the outlier bin)
    return float(np.sum(p[mask] * np.log(p[mask] / qm)))



# ---- running the float model ------------------------------------------------------------------


def float_tensors(model) -> list[str]:
    """Names of every float32 tensor computed by the top-level graph (and its float inputs)."""
    import onnx

    from gencompress.onnx_io import skeleton

    proto = skeleton(model)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers and types.get(i.name) == onnx.TensorProto.FLOAT]
    for node in proto.graph.node:
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT:
                names.append(out)
    return names


def collect_stats(
    model,
    names: Iterable[str],
    feeds: Mapping[str, np.ndarray],
    *,
    histogram: bool = True,
    batch_size: int = BATCH_SIZE,
    desc: str = "calibrating",
    stats=None,
    workers: int = 1,
) -> dict[str, TensorStats]:
    """Run ``model`` (float; onnx_ir or proto) over ``feeds`` once per batch; statistics of each
    tensor in ``names``. The tensors are made graph outputs of the model for the run and the
    model is restored after (no copy of its weights is made). ``stats``: other statistics to
    keep, ``{name: object with update(batch of the tensor)}`` (then ``names`` are its keys).
    ``workers``: threads taking a batch's statistics, tensor by tensor (each tensor's batches
    still in order: a batch's statistics are all taken before the next batch's start)."""
    import onnx_ir as ir

    from gencompress.output import progress
    from gencompress.runtime_check.sessions import cast_feeds, make_session

    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)  # wraps the proto's tensors, no copy
    names = list(dict.fromkeys(names))
    graph = model.graph
    values = {v.name: v for v in graph.inputs}
    values.update({v.name: v for node in graph for v in node.outputs})
    added, typed = [], []
    existing = {v.name for v in graph.outputs}
    for name in names:
        value = values.get(name)
        if value is None:
            raise GencompressError(f"calibration: tensor {name!r} is not computed by the graph")
        if name not in existing:
            if value.type is None:
                value.type = ir.TensorType(ir.DataType.FLOAT)
                typed.append(value)
            graph.outputs.append(value)
            added.append(value)
    try:
        # extended, not all: the layout transform of level all copies every Conv weight into
        # onnxruntime's blocked format. Spinning on (onnxruntime's default): the calibration
        # session is the only one running. Weights pre-packed: without, onnxruntime re-packs a
        # ConvTranspose weight on every run. (benchmarks/scale.py measures these choices.)
        session = make_session(model, label="calibration", lean=True, optimization="extended", spinning=True)
    finally:
        for _ in added:  # pop, not del: onnx_ir's del leaves the values marked as graph outputs
            graph.outputs.pop()
        for value in typed:
            value.type = None
    out_names = [o.name for o in session.get_outputs()]
    wanted = [out_names.index(n) for n in names]
    stats = stats if stats is not None else {n: TensorStats(n, histogram=histogram) for n in names}
    n = num_samples(feeds)
    fixed = fixed_batch(model)

    def run(batch):
        try:
            return session.run(None, cast_feeds(session, batch))  # float32 draws for float16 inputs
        except Exception as e:
            msg = " ".join(str(e).split())[:300]
            raise GencompressError(f"calibration: the model fails on the calibration inputs ({type(e).__name__}: {msg})") from None

    if fixed:
        batch_size = fixed
    elif n > 1:  # one sample first, to size the batches within ACTIVATION_BUDGET
        per_sample = sum(np.asarray(o).nbytes for o in run({k: v[:1] for k, v in feeds.items()}))
        batch_size = max(1, min(batch_size, ACTIVATION_BUDGET // max(per_sample, 1)))
    total = n // batch_size if fixed else math.ceil(n / batch_size)

    def taken(pending):  # the batch's statistics taken (its errors raised here, the first tensor's first)
        for future in pending:
            future.result()

    # a batch's statistics are taken in other threads while onnxruntime runs the next batch (both
    # let go of the GIL): DenseNet-121's min/max updates were a quarter of its calibration, now hidden
    # (24 draws: 10.4 s -> 7.1 s, the runs alone 7.0 s; load 5). Two batches' outputs alive at most,
    # each tensor updated in batch order (the same statistics as one thread)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="calibration") as pool:
        pending = []
        for batch in progress(batches(feeds, batch_size, exact=fixed is not None), total=total, desc=desc, unit="batch"):
            if pending and all(hasattr(s, "full") for s in stats.values()):
                taken(pending)  # statistics that can be full (input_moments' rows): the other batches
                if all(s.full for s in stats.values()):  # would change nothing once they are
                    break
            outputs = run(batch)
            taken(pending)
            pending = [pool.submit(stats[name].update, outputs[i]) for name, i in zip(names, wanted)]
            del outputs
        taken(pending)
    return stats


def calibration_inputs(model, *, size: int | None = None, seed: int = 0, data=None) -> dict[str, np.ndarray]:
    """The calibration set: ``size`` seeded draws from the model's input prior, or a user ``.npz``.

    With ``data`` every sample of the file is used, or the first ``size`` if ``size`` is given.
    """
    from gencompress.inputs import load_npz_inputs, sample_inputs, specs_of_model

    from gencompress.onnx_io import skeleton

    specs = specs_of_model(model if isinstance(model, onnx.ModelProto) else skeleton(model))
    if size is not None and size <= 0:
        raise GencompressError(f"--calib-size must be positive, got {size}")
    if data is not None:
        feeds = load_npz_inputs(data, specs)
        if size is not None:
            feeds = {k: v[:size] for k, v in feeds.items()}
        return feeds
    return sample_inputs(specs, size or default_calib_size(model), seed)


def default_calib_size(model) -> int:
    """The number of seeded calibration draws when the user gives none (``CALIB_MACS``)."""
    return calib_size_note(model)[0]


def calib_size_note(model) -> tuple[int, str | None]:
    """(``default_calib_size(model)``, one line saying why it is under ``DEFAULT_CALIB_SIZE``, else None)."""
    from gencompress.runtime_check.fidelity import budgeted_samples

    return budgeted_samples(model, DEFAULT_CALIB_SIZE, CALIB_MACS, MIN_CALIB_SIZE, "calibration on {n} seeded draws", "--calib-size")


def calibrate_ranges(model, names: list[str], options) -> dict[str, tuple[float, float]]:
    """The activation ranges of ``names`` in ``model`` (onnx_ir), measured on the calibration set
    ``options`` (``InsertQDQPass.Options``) describes: what ``InsertQDQPass`` asks for when its
    ``ranges`` lack some."""
    # the model itself, not a serialized copy: its weights may be memory-mapped from the scratch
    # folder (onnx_io.spill), references a proto would carry without their folder
    feeds = calibration_inputs(model, size=options.calib_size, seed=options.seed, data=options.calib_data)
    stats = collect_stats(model, names, feeds, histogram=options.calib != "minmax")
    symmetric = options.activations == "int8"
    return {n: stats[n].range(options.calib, symmetric=symmetric, percentile=options.percentile) for n in names}


def calibrating_in_place_of(before):
    """A calibrator like ``calibrate_ranges`` for a model the int8 rewrites made from ``before``
    (onnx_ir, the model right before them): it calibrates ``before`` and carries its ranges onto the
    tensors the rewrites made (``passes/carry_ranges``), as quantize does (``static_quantizer``), and
    measures on the rewritten model only what cannot be carried. Calibrating the rewritten graph
    itself would also count values nobody reads: a sub-pixel Conv computes border pixels its Slice
    then drops (unet on image crops: the last Conv's range 2% wider, its int8 scale differing from
    quantize's)."""
    from gencompress.passes.carry_ranges import carry_ranges

    def calibrate(model, names: list[str], options) -> dict[str, tuple[float, float]]:
        found = calibrate_ranges(before, float_tensors(before), options)
        found.update(carry_ranges(model.graph, before.graph, found))
        rest = [n for n in names if n not in found]
        if rest:
            found.update(calibrate_ranges(model, rest, options))
        return {n: found[n] for n in names}

    return calibrate
