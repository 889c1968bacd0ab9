"""Whether a QDQ model computes the same on every CPU: its int8 weights read against the int16
pair bound of onnxruntime's x86 kernels without VNNI (``passes/int8_saturation.py``).

A layer counts when onnxruntime runs it as an int8 kernel (``int8_saturation.unsafe_layers``):
its weight pairs, in the kernel's K order, must keep same-sign magnitudes within 128.

``input_moments`` measures what the saturation-free rounding needs to keep a layer's output error
small: the second moments of the layer's input over the kernel's K, on the calibration set.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from gencompress.isa import host_isa, saturates
from gencompress.passes.int8_saturation import Unfold, moment_blocks, unsafe_layers, worker_threads

# K rows (im2col windows, tokens, samples) kept per layer, and the calibration samples run to find
# them: as many as the layer with the fewest rows per sample needs (a Gemm on a latent: one row
# per sample), within these bounds. Measured on the seeded families (16 held-back inputs): 2048
# rows or 16 samples lost up to 0.17 dB of what 4096 rows gave; attention's Gemm/MatMul layers
# lost 0.4 dB with 32 samples instead of 128
MOMENT_ROWS = 4096
MOMENT_SAMPLES = (32, 256)
ROW_CHUNK = 1 << 24  # floats of unfolded rows held at a time


class _Moments:
    """Running ``Σ x xᵀ`` over sampled rows of one tensor, for each ``(key, Unfold, K, optional)``
    asked of it. Where optional and other asks share the tensor, the optional ones draw their rows
    with a generator of their own, so the others' rows are those they get without them."""

    def __init__(self, asks: list[tuple], seed: int):
        self.asks = [(key, unfold, moment_blocks(k), optional) for key, unfold, k, optional in asks]
        self.spans = {key: blocks for key, _, blocks, _ in self.asks}
        self.sums = {key: [np.zeros((b - a, b - a)) for a, b in blocks] for key, blocks in self.spans.items()}
        self.rows = dict.fromkeys(self.sums, 0)
        self.rng = np.random.default_rng(seed)
        mixed = len({optional for *_, optional in asks}) > 1
        self.optional_rng = np.random.default_rng([seed, 1]) if mixed else self.rng

    def update(self, x: np.ndarray) -> None:
        for key, unfold, blocks, optional in self.asks:
            while self.rows[key] < MOMENT_ROWS:
                want = min(MOMENT_ROWS - self.rows[key], max(64, ROW_CHUNK // blocks[-1][1]))
                rows = unfold.rows(np.asarray(x), want, self.optional_rng if optional else self.rng)
                for total, (a, b) in zip(self.sums[key], blocks):
                    part = rows[:, a:b]
                    with np.errstate(over="ignore", invalid="ignore"):  # Inf from a huge activation: see input_moments
                        total[: part.shape[1], : part.shape[1]] += part.T @ part  # widened to float64 in the add: no copy
                self.rows[key] += len(rows)
                if len(rows) < want:  # the batch holds fewer rows than asked: all taken
                    break

    @property
    def full(self) -> bool:
        """Every ask has its rows: later batches change nothing (``collect_stats`` stops)."""
        return all(n >= MOMENT_ROWS for n in self.rows.values())

    def blocks(self, key) -> list:
        """``[(start, stop, H)]`` of one ask: its sums divided by its rows in place (no second H in
        memory; rrdb's 26 blocks: 0.17 s of fresh pages), so once: the sums are spent."""
        n = max(self.rows[key], 1)
        return [(a, b, np.divide(total, n, out=total)) for total, (a, b) in zip(self.sums.pop(key), self.spans[key])]


def _rows_per_sample(model, name: str, unfold: Unfold) -> int:
    """About how many K rows one sample gives of the tensor ``name`` (its positions: the spatial
    size for a Conv's input, the dims between batch and the last for Gemm/MatMul); 1 if unknown."""
    value = next((v for v in (*model.graph.inputs, *(o for node in model.graph for o in node.outputs)) if v.name == name), None)
    dims = list(value.shape) if value is not None and value.shape is not None else []
    inner = dims[2:] if unfold.kernel else dims[1:-1]
    return int(np.prod(inner)) if inner and all(isinstance(d, int) and d > 0 for d in inner) else 1


def _optional(ask: tuple) -> bool:
    return len(ask) > 3 and bool(ask[3])


def input_moments(model, asks: dict, options) -> dict:
    """``{key: [(start, stop, H)]}`` for ``asks`` ``{key: (input tensor name, Unfold, K[, optional])}``: the
    diagonal blocks (``int8_saturation.moment_blocks``) of ``H = E[x xᵀ]`` over the K rows the
    layer's kernel reads, from the first calibration inputs (``MOMENT_SAMPLES``) that ``options``
    (``InsertQDQPass.Options``) describes, ``MOMENT_ROWS`` rows drawn per layer (seeded). What
    ``InsertQDQPass`` is given as ``moments``. An optional ask (a cheap layer deciding between the
    bound and uint8 weights) is measured on the samples the others need and left out of the answer
    when they give it fewer than ``MOMENT_ROWS`` rows."""
    from gencompress.batches import fixed_batch
    from gencompress.runtime_check.calibration import calibration_inputs, collect_stats, default_calib_size

    by_tensor: dict[str, list] = {}
    for key, ask in asks.items():
        by_tensor.setdefault(ask[0], []).append((key, ask[1], ask[2], _optional(ask)))
    # an optional ask (a 4th element True) does not raise the samples run: it gets what the others need
    needed = [a for a in asks.values() if not _optional(a)] or list(asks.values())
    per_sample = min(_rows_per_sample(model, a[0], a[1]) for a in needed)
    size = int(np.clip(-(-MOMENT_ROWS // per_sample), *MOMENT_SAMPLES))
    # within the calibration set: --calib-size, or the model's default count (a large model's is smaller)
    size = min(options.calib_size or (size if options.calib_data is not None else default_calib_size(model)), size)
    fixed = fixed_batch(model)
    if fixed:  # whole batches only
        size = max(fixed, size - size % fixed)
    feeds = calibration_inputs(model, size=size, seed=options.seed, data=options.calib_data)
    stats = {name: _Moments(tensor_asks, options.seed) for name, tensor_asks in by_tensor.items()}
    # each tensor's moments on a thread of its own where there are cores (one BLAS thread each: the same sums),
    # the costliest first (products of K² per row) so that the threads end together
    costliest = sorted(stats, key=lambda n: -sum((b - a) ** 2 for *_, blocks, _ in stats[n].asks for a, b in blocks))
    collect_stats(model, costliest, feeds, stats=stats, desc="input moments", workers=min(len(stats), worker_threads()))
    out = {}
    for name, tensor_asks in by_tensor.items():
        for key, *_ in tensor_asks:
            if _optional(asks[key]) and stats[name].rows[key] < MOMENT_ROWS:
                continue  # an optional ask that got fewer rows than a layer's moments need: none
            blocks = stats[name].blocks(key)
            if all(np.isfinite(h).all() for _, _, h in blocks):  # else activations whose squares overflow float32 (a damaged
                out[key] = blocks                                  # weight): that layer's weights are changed without moments
    return out


def portability(model) -> dict:
    """For report.json, bench and manifests: the ISA the figures here were measured on, and the
    model's verdict: ``saturation_free`` True/False (None when no layer runs as an int8 kernel)."""
    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    unsafe = unsafe_layers(model.graph)
    # no QuantizeLinear: no activation is int8, so no layer runs as an int8 kernel (weight-only, fp16, float)
    int8_kernels = any(node.op_type == "QuantizeLinear" for node in model.graph)
    isa = host_isa()
    out = {"isa": isa, "isa_saturates_int8": saturates(isa), "saturation_free": (not unsafe) if int8_kernels else None}
    if unsafe:
        out["unsafe_layers"] = unsafe
        out["note"] = ("int8 weight pairs that x86 CPUs without VNNI (AVX2, AVX-512BW) sum into a saturating int16: "
                       "figures measured on a VNNI CPU do not hold there (requantize with --int8-kernels portable)")
    return out
