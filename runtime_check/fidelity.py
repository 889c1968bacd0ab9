"""Fidelity metrics of a candidate's outputs against its float reference, with plain numpy.

All metrics compare outputs for the *same* inputs (a fixed seeded latent set), sample by sample,
except the Fréchet distance, which compares the two sets as distributions.

- ``max_abs_error``, ``mean_abs_error``, ``mse``, ``rmse`` over every element.
- ``psnr_db`` = 10·log10(peak² / mse) with the pooled mse; ``psnr_worst_sample_db`` the lowest
  per-sample PSNR. ``peak`` is the output's nominal peak-to-peak range (2.0 for tanh, 1.0 for
  sigmoid, recorded by the exporter), else the reference's observed peak-to-peak; the report
  says which (``peak_source``). Identical outputs give ``inf``.
- ``ssim`` (images ``[N, C, H, W]`` only): SSIM of Wang et al. with a 7×7 uniform window (smaller,
  odd, for images under 7 pixels), K1 = 0.01, K2 = 0.03, data range = peak, sample covariances
  (the scikit-image defaults); the SSIM map is averaged over the valid windows and channels of
  each image, then over images; ``ssim_min`` is the worst image.
- ``cosine_similarity``: per-sample cosine of the flattened outputs (1 when both are zero, 0 when
  only one is), averaged; ``cosine_similarity_min`` the worst sample.
- ``diversity_ratio``: mean over output elements of the across-sample std of the candidate
  divided by that of the reference — near 1 unless the candidate has collapsed (→ 0).
- ``frechet_distance``: ‖μr − μc‖² + Tr(Σr + Σc − 2(Σr Σc)^½) of feature statistics (see
  ``features``); ``frechet_distance_relative`` divides it by Tr(Σr), so that a candidate whose
  samples collapse to one point scores 1 or more (Tr(Σr) plus the shift of the mean) and a
  faithful one about 0.
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx

from gencompress.errors import GencompressError

K1, K2 = 0.01, 0.03
SSIM_WINDOW = 7

# ---- the fidelity protocol every verb follows (quantize, sensitivity, check, compress) ---------
# The same held-back sample set: ``DEFAULT_SAMPLES`` draws from the model's input prior with seed
# ``held_back_seed(seed)`` (calibration draws with ``seed`` itself, so the two never coincide);
# the same peak (``output_peak``); the same PSNR (``psnr(mse(ref, cand), peak)``).
EVAL_SEED_OFFSET = 1_000_003
DEFAULT_SAMPLES = 256


def held_back_seed(seed: int = 0) -> int:
    """The seed of the held-back evaluation draws for a run whose calibration uses ``seed``."""
    return int(seed) + EVAL_SEED_OFFSET


HELD_BACK_SEED = held_back_seed(0)  # check's default: what quantize and compress use by default


def held_back_inputs(model, seed: int = 0, samples: int | None = None) -> dict:
    """The held-back evaluation set of ``model`` for a run with ``seed``: ``samples`` draws
    (None: ``default_samples(model)``)."""
    from gencompress.inputs import sample_inputs, specs_of_model

    return sample_inputs(specs_of_model(model), default_samples(model) if samples is None else samples, held_back_seed(seed))


# A large model's default set is smaller, so that its check does not cost more than its quantize:
# ``DEFAULT_SAMPLES`` draws while they take at most ``EVAL_MACS`` multiply-adds, else the largest
# power of two that fits, never under ``MIN_SAMPLES``. From the model's shapes only (never from a
# timing): the same model gets the same set on every machine. 2 TMAC (256 draws up to 7.8 GMAC
# each) keeps 256 for every zoo model, family, Conv family, the standard DCGAN, the 12M and 47M
# DCGANs of benchmarks/scale.py (0.41, 1.6 GMAC a draw) and ResNet-50 (4.1); VGG-19 (19.6) gets 64.
EVAL_MACS = 2_000_000_000_000
MIN_SAMPLES = 32
AUTO_SAMPLES_HELP = (f"auto: {DEFAULT_SAMPLES}, fewer for a model above {EVAL_MACS / DEFAULT_SAMPLES / 1e9:.1f} GMAC per draw "
                     f"(a power of two, at least {MIN_SAMPLES}: from the model's shapes, the same on every machine)")


def default_samples(model) -> int:
    """The number of held-back draws every verb evaluates ``model`` (the float reference: a path,
    proto or onnx_ir model) on when the user gives none."""
    return budgeted_samples(model)[0]


def budgeted_samples(model, default: int | None = None, budget: int | None = None, floor: int | None = None,
                     what: str = "fidelity on {n} held-back draws", option: str = "--samples / --eval-size") -> tuple[int, str | None]:
    """(``default`` draws while they cost at most ``budget`` multiply-adds, else the largest power of
    two within it, at least ``floor``; one line saying why it is under ``default``, else None).
    None: the evaluation set's (``DEFAULT_SAMPLES``, ``EVAL_MACS``, ``MIN_SAMPLES``: ``default_samples``);
    ``calibration.default_calib_size`` gives the calibration set's."""
    default = DEFAULT_SAMPLES if default is None else default
    budget = EVAL_MACS if budget is None else budget
    floor = MIN_SAMPLES if floor is None else floor
    macs, batch = _macs_and_batch(model)
    if macs is None or macs * default <= budget:
        return default, None
    n = max(floor, 1 << (budget // macs).bit_length() - 1)
    n = -(-n // batch) * batch  # whole batches of a fixed-batch model
    return n, f"{what.format(n=n)}, not {default}: the model's {macs / 1e9:.1f} GMAC per draw ({option} to change)"


def macs_per_sample(model) -> int | None:
    """Multiply-adds of one sample through ``model``'s Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU
    and RNN nodes (main graph), from onnx shape inference on inputs of the size the held-back
    draws have (a dynamic batch at 1); None when a shape they need is unknown. Weights are not
    read: their dims are enough."""
    return _macs_and_batch(model)[0]


def _macs_and_batch(model) -> tuple[int | None, int]:
    from gencompress.batches import fixed_batch
    from gencompress.inputs import specs_of_model
    from gencompress.onnx_io import load_header, skeleton

    proto = skeleton(load_header(model) if isinstance(model, (str, os.PathLike)) else model)
    batch = fixed_batch(proto) or 1
    try:
        drawn = {s.name: s.shape for s in specs_of_model(proto)}
    except GencompressError:
        drawn = {}
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:  # every dynamic dim at the size drawn (the batch at 1): data propagation resolves reshapes of them
        shape = drawn.get(vi.name, ())
        for i, d in enumerate(vi.type.tensor_type.shape.dim if vi.name not in inits else ()):
            if not d.HasField("dim_value"):
                d.dim_value = int(shape[i]) if 0 < i < len(shape) else 1
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        return None, batch
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for vi in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    total = 0
    for node in proto.graph.node:
        if node.op_type not in _MAC_OPS:
            continue
        # (X, W, Y), or a recurrent layer's (X, W, R)
        names = list(node.input[:3]) if node.op_type in _RECURRENT else [*node.input[:2], *node.output[:1]]
        if len(names) < 3 or any(name not in shapes for name in names):
            return None, batch
        total += _MAC_OPS[node.op_type](*(shapes[name] for name in names), node)
    return total // batch, batch


def _prod(dims) -> int:
    return math.prod(int(d) for d in dims)


def _gemm_k(x, node) -> int:
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    return x[0] if trans_a else x[-1]


_RECURRENT = ("LSTM", "GRU", "RNN")
_MAC_OPS = {  # (input 0 dims, input 1 dims, output 0 dims (R's for a recurrent layer), node) -> multiply-adds
    "Conv": lambda x, w, y, node: _prod(y) * _prod(w[1:]),
    "ConvTranspose": lambda x, w, y, node: _prod(x) * _prod(w[1:]),  # each input element meets C_out/g x kernel weights
    "Gemm": lambda x, w, y, node: _prod(y) * _gemm_k(x, node),
    "MatMul": lambda x, w, y, node: _prod(y) * x[-1],
    # every step of every sequence (X's first two dims) meets the input (W) and hidden (R) weights
    **{op: (lambda x, w, r, node: _prod(x[:2]) * (_prod(w) + _prod(r))) for op in _RECURRENT},
}


def observed_peak(ref: np.ndarray) -> float:
    """The reference output's observed peak-to-peak over its finite values (1.0 if constant)."""
    refd = _f64(ref)
    finite = refd[np.isfinite(refd)]
    peak = float(finite.max() - finite.min()) if finite.size else 0.0
    return peak if peak > 0 else 1.0


def output_peak(model, ref: np.ndarray) -> tuple[float, str]:
    """(peak, source) of PSNR/SSIM for an output of ``model``: the nominal output range the
    exporter recorded (source ``nominal``), else the reference's observed peak-to-peak
    (``observed``). The one place every verb decides it."""
    from gencompress.inputs import output_range_of_model

    nominal = output_range_of_model(model)
    if nominal:
        return float(nominal), "nominal"
    return observed_peak(ref), "observed"


def output_kind(shape) -> str:
    """``image`` for [N, C, H, W], ``sequence`` for [N, T, F], ``vector`` for [N, D], else ``tensor``."""
    return {4: "image", 3: "sequence", 2: "vector"}.get(len(shape), "tensor")


def mse(ref: np.ndarray, cand: np.ndarray) -> float:
    d = _f64(cand) - _f64(ref)
    return float(np.mean(d * d)) if d.size else 0.0


def psnr(mse_value: float, peak: float) -> float:
    if not np.isfinite(mse_value):
        return float("nan")
    if mse_value == 0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse_value))


def per_sample_psnr(ref: np.ndarray, cand: np.ndarray, peak: float) -> np.ndarray:
    d = (_f64(cand) - _f64(ref)).reshape(len(ref), -1)
    m = np.mean(d * d, axis=1)
    with np.errstate(divide="ignore"):
        return np.where(m == 0, np.inf, 10.0 * np.log10(peak * peak / np.where(m == 0, 1.0, m)))


def cosine_similarity(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per-sample cosine of the flattened outputs."""
    a = _f64(ref).reshape(len(ref), -1)
    b = _f64(cand).reshape(len(cand), -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    denom = np.where((na == 0) | (nb == 0), 1.0, na * nb)
    cos = np.where((na == 0) | (nb == 0), 0.0, dot / denom)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def ssim_window(height: int, width: int) -> int | None:
    w = min(SSIM_WINDOW, height, width)
    if w % 2 == 0:
        w -= 1
    return w if w >= 3 else None


def _box_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every valid w×w window of x [B, H, W] (integral images)."""
    c = np.pad(x, ((0, 0), (1, 0), (1, 0))).cumsum(axis=1).cumsum(axis=2)
    s = c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]
    return s / (w * w)


def ssim(ref: np.ndarray, cand: np.ndarray, peak: float, chunk: int = 64) -> np.ndarray | None:
    """Per-image SSIM of [N, C, H, W] images (mean over channels and valid windows); None if too small."""
    n, c, h, w_ = ref.shape
    w = ssim_window(h, w_)
    if w is None:
        return None
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    cov_norm = w * w / (w * w - 1.0)
    out = np.empty(n)
    for i in range(0, n, chunk):
        x = _f64(ref[i : i + chunk]).reshape(-1, h, w_)
        y = _f64(cand[i : i + chunk]).reshape(-1, h, w_)
        ux, uy = _box_mean(x, w), _box_mean(y, w)
        vx = cov_norm * (_box_mean(x * x, w) - ux * ux)
        vy = cov_norm * (_box_mean(y * y, w) - uy * uy)
        vxy = cov_norm * (_box_mean(x * y, w) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out[i : i + chunk] = s.reshape(-1, c, *s.shape[1:]).mean(axis=(1, 2, 3))
    return out


def frechet_distance(f_ref: np.ndarray, f_cand: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (N ≥ 2)."""
    f_ref, f_cand = _f64(f_ref), _f64(f_cand)
    if len(f_ref) < 2 or len(f_cand) < 2:
        raise GencompressError("the Fréchet distance needs at least 2 samples")
    if not (np.isfinite(f_ref).all() and np.isfinite(f_cand).all()):
        return float("nan")
    mu1, mu2 = f_ref.mean(axis=0), f_cand.mean(axis=0)
    s1 = np.atleast_2d(np.cov(f_ref, rowvar=False))
    s2 = np.atleast_2d(np.cov(f_cand, rowvar=False))
    # Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½): a symmetric PSD matrix, so eigvalsh is exact and stable.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0, None))))
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def compare_output(
    name: str,
    ref: np.ndarray,
    cand: np.ndarray,
    *,
    peak: float | None = None,
    peak_source: str | None = None,
    extractor=None,
) -> dict:
    """Every metric that applies to one output, as a JSON-friendly dict.

    ``peak`` None → the reference's observed peak-to-peak (``peak_source`` = ``observed``).
    ``extractor``: features for the Fréchet distance (default: the built-in seeded net).
    """
    if ref.shape != cand.shape:
        raise GencompressError(
            f"output {name!r}: the reference gives shape {list(ref.shape)}, the candidate {list(cand.shape)}"
        )
    kind = output_kind(ref.shape)
    refd, candd = _f64(ref), _f64(cand)
    nonfinite = int(np.size(candd) - np.count_nonzero(np.isfinite(candd)))
    if peak is None:
        peak, peak_source = observed_peak(refd), "observed"
        finite = refd[np.isfinite(refd)]
        constant = not finite.size or finite.max() == finite.min()
        note = "no nominal range and a constant reference; 1.0 used" if constant else "no nominal range recorded; the reference's observed peak-to-peak"
    else:
        peak = float(peak)
        peak_source = peak_source or "given"
        note = {
            "nominal": "the output's nominal range recorded by the exporter", "given": "given by the user",
            "observed": "no nominal range recorded; the reference's observed peak-to-peak",
        }.get(peak_source, peak_source)
    diff = np.abs(candd - refd)
    m = mse(refd, candd)
    per_psnr = per_sample_psnr(refd, candd, peak)
    cos = cosine_similarity(refd, candd)
    result = {
        "name": name,
        "kind": kind,
        "shape": ["N", *map(int, ref.shape[1:])],
        "dtype": str(ref.dtype),
        "peak": peak,
        "peak_source": peak_source,
        "peak_note": note,
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "mse": m,
        "rmse": float(np.sqrt(m)),
        "psnr_db": psnr(m, peak),
        "psnr_worst_sample_db": float(np.min(per_psnr)) if per_psnr.size else float("inf"),
        "ssim": None,
        "ssim_min": None,
        "ssim_window": None,
        "cosine_similarity": float(np.mean(cos)),
        "cosine_similarity_min": float(np.min(cos)),
        "diversity_ratio": _diversity_ratio(refd, candd),
        "frechet_distance": None,
        "frechet_distance_relative": None,
        "features": None,
        "nonfinite": nonfinite,
    }
    if kind == "image":
        s = ssim(refd, candd, peak)
        if s is not None:
            result.update(ssim=float(np.mean(s)), ssim_min=float(np.min(s)), ssim_window=ssim_window(*ref.shape[2:]))
    if len(ref) >= 2:
        if extractor is None:
            from gencompress.runtime_check.features import builtin_extractor

            extractor = builtin_extractor(refd, peak)
        f_ref, f_cand = extractor(ref), extractor(cand)
        fd = frechet_distance(f_ref, f_cand)
        spread = float(np.trace(np.atleast_2d(np.cov(f_ref, rowvar=False))))
        result["frechet_distance"] = fd
        result["frechet_distance_relative"] = fd / spread if spread > 0 else (0.0 if fd == 0 else float("inf"))
        result["features"] = extractor.describe()
    return result


def _diversity_ratio(ref: np.ndarray, cand: np.ndarray) -> float | None:
    if len(ref) < 2:
        return None
    sr = ref.std(axis=0).mean()
    sc = cand.std(axis=0).mean()
    if not np.isfinite(sc):
        return float("nan")
    return float(sc / sr) if sr > 0 else (1.0 if sc == 0 else float("inf"))


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --- the models' interface -------------------------------------------------------------------------

_ELEM = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


def io_signature(proto) -> dict:
    """``{"inputs": {name: (dtype, rank)}, "outputs": {...}}`` of a model's graph (initializers excluded)."""
    inits = {i.name for i in proto.graph.initializer}

    def sig(vi):
        t = vi.type.tensor_type
        rank = len(t.shape.dim) if t.HasField("shape") else None
        return _ELEM.get(t.elem_type, f"type {t.elem_type}"), rank

    return {
        "inputs": {vi.name: sig(vi) for vi in proto.graph.input if vi.name not in inits},
        "outputs": {vi.name: sig(vi) for vi in proto.graph.output},
    }


# a float16-I/O candidate (``quantize --mode fp16 --fp16-io``) is compared with its float32
# reference: inputs are cast to what each model takes, outputs compared in float64
_COMPARABLE_FLOATS = {"float32", "float16"}


def check_compatible(ref_proto, cand_proto) -> None:
    """Refuse a reference and candidate whose inputs or outputs differ in names, dtypes or ranks
    (float32 against float16 is allowed: see ``sessions.cast_feeds``)."""
    a, b = io_signature(ref_proto), io_signature(cand_proto)
    problems = []
    for side in ("inputs", "outputs"):
        word = side[:-1]
        ra, rb = a[side], b[side]
        if list(ra) != list(rb):
            only_ref = [n for n in ra if n not in rb]
            only_cand = [n for n in rb if n not in ra]
            if only_ref or only_cand:
                problems.append(
                    f"{side} differ (reference: {', '.join(ra) or 'none'}; candidate: {', '.join(rb) or 'none'})"
                )
                continue
        for n, (dt, rank) in ra.items():
            dt2, rank2 = rb[n]
            if dt != dt2 and not {dt, dt2} <= _COMPARABLE_FLOATS:
                problems.append(f"{word} {n!r} is {dt} in the reference, {dt2} in the candidate")
            if rank is not None and rank2 is not None and rank != rank2:
                problems.append(f"{word} {n!r} has rank {rank} in the reference, {rank2} in the candidate")
    if problems:
        raise GencompressError("reference and candidate are not comparable: " + "; ".join(problems[:4]))


# ---- candidates against one reference -----------------------------------------------------------

EVAL_BATCH = 64  # samples per onnxruntime call in evaluation: as ``gencompress check --batch``


COMPARABLE_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def refuse_uncomparable_outputs(header: onnx.ModelProto, label: str = "model") -> None:
    """A PSNR needs numeric outputs: a bool, string or non-tensor output is refused before any
    work (quantize would otherwise write a model it cannot measure, sensitivity rank noise)."""
    for out in header.graph.output:
        kind = out.type.WhichOneof("value")
        elem = out.type.tensor_type.elem_type if kind == "tensor_type" else None
        if kind is not None and (kind != "tensor_type" or (elem and elem not in COMPARABLE_TYPES)):
            what = onnx.TensorProto.DataType.Name(elem).lower() if elem else kind.replace("_type", "")
            raise GencompressError(f"{label}: output {out.name!r} is of type {what}, which cannot be compared "
                                   "(numeric tensors only; bool and string outputs have no PSNR)")


class Evaluator:
    """PSNR of candidate models against the float reference on one fixed input set, by the one
    fidelity protocol (``runtime_check.fidelity``): the same sessions, batches, peak and PSNR
    that ``gencompress check`` uses, so both print the same number for the same pair and set.

    ``reference``: a path (onnxruntime reads it, nothing else is kept), proto or onnx_ir model.
    ``source`` says what the inputs are (for the report). ``header``: the reference's inputs,
    outputs and metadata when the caller has read them (a path's model is then not parsed here
    too: VGG-19's 575 MB of inline weights took 2.2 s).
    """

    def __init__(self, reference, feeds: dict[str, np.ndarray], *, source: str = "held-back seeded latents", header=None):
        from gencompress.onnx_io import load_header, skeleton
        from gencompress.batches import fixed_batch, num_samples
        from gencompress.runtime_check.sessions import make_session, run_all

        if header is None:
            header = load_header(reference) if isinstance(reference, (str, os.PathLike)) else reference

        header = header if isinstance(header, onnx.ModelProto) else skeleton(header)
        refuse_uncomparable_outputs(header, str(reference) if isinstance(reference, (str, os.PathLike)) else "model")
        self.fixed = fixed_batch(header)
        self.feeds, self.samples, self.source = feeds, num_samples(feeds), source
        self.reference = run_all(make_session(reference, label="reference"), feeds, self.samples, EVAL_BATCH, fixed=self.fixed, label="reference")
        peaks = [output_peak(header, r) for r in self.reference]
        self.peaks = [p for p, _ in peaks]
        self.peak_source = peaks[0][1] if peaks else "nominal"

    def psnr(self, candidate, optimization: str = "all") -> float:
        """The lowest PSNR over the outputs (``-inf`` for non-finite outputs)."""
        from gencompress.runtime_check.sessions import make_session, run_all

        session = make_session(candidate, optimization=optimization, label="candidate")
        outputs = run_all(session, self.feeds, self.samples, EVAL_BATCH, fixed=self.fixed, label="candidate")
        values = [psnr(mse(ref, out), peak) for ref, out, peak in zip(self.reference, outputs, self.peaks)]
        return min(-math.inf if math.isnan(v) else v for v in values)

    def describe(self) -> dict:
        return {"samples": self.samples, "source": self.source, "peak": self.peaks[0] if len(self.peaks) == 1 else self.peaks, "peak_source": self.peak_source}
