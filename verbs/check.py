"""Python API of runtime_check: ``check`` (fidelity), ``bench`` (latency, memory, size), reports.

    import gencompress
    fid = gencompress.check("g.onnx", "g.int8.onnx", samples=256, preview=8)
    lat = gencompress.bench("g.int8.onnx", reference="g.onnx", batches=(1, 64), threads=(2,))

    from gencompress.verbs.check import build_report, write_report
    report = build_report("g.onnx", "g.int8.onnx", fidelity=fid, latency=lat, recipe=recipe,
                          passes=pass_reports, sweep=sweep)
    write_report("out/", report)   # out/report.json + out/report.html

Every function takes model paths, ``onnx.ModelProto`` or ``onnx_ir.Model``. User errors (a missing
file, models with different inputs/outputs, a provider this build lacks, 0 samples) raise
``GencompressError`` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from gencompress.arguments import (
    BENCH_BUDGET_S, MAX_BATCH, MAX_RUNS, MAX_SAMPLES, MAX_THREADS, MAX_WARMUP, MIN_BUDGET_RUNS, in_range, positive_int, positive_ints, seed_value,
)
from gencompress.errors import GencompressError, short
from gencompress.isa import host_isa
from gencompress.runtime_check.report_html import pareto_front, write_report  # noqa: F401  (re-exported)

from gencompress.runtime_check.fidelity import HELD_BACK_SEED  # noqa: E402  (the one protocol)

SCHEMA = "gencompress.report/1"
DEFAULT_PREVIEW_OUTPUT_KINDS = ("image", "sequence")


# --- loading ---------------------------------------------------------------------------------------


def _load(model, role: str, *, header: bool = False):
    """(proto, label) of a path / ModelProto / onnx_ir.Model; ``header``: a path's external data
    is left unread (enough for its inputs, outputs and metadata)."""
    import onnx

    from gencompress.onnx_io import load_header, load_model, to_proto

    if model is None:
        raise GencompressError(f"no {role} model given")
    if isinstance(model, (str, os.PathLike)):
        return (load_header if header else load_model)(model), str(model)
    if isinstance(model, onnx.ModelProto) or type(model).__module__.startswith("onnx_ir"):
        return to_proto(model), f"<{role}>"
    raise GencompressError(f"{role}: expected an .onnx path or an ONNX model, got {type(model).__name__}")


def _weights_in_files(model, proto) -> bool:
    """Whether ``model`` is a path whose weights live in external data files; ``proto``: what
    ``_load(model, ..., header=True)`` read (a self-contained file's header is the whole model)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    from gencompress.onnx_io import external_data_entries

    return bool(external_data_entries(proto, Path(model)))


def _source(model, proto):
    """What to build a session from: the path a model was read from, else the loaded model."""
    return model if isinstance(model, (str, os.PathLike)) else proto


def _describe_specs(specs) -> list[dict]:
    out = []
    for s in specs:
        prior = s.describe_prior()
        out.append({"name": s.name, "shape": ["N", *s.shape[1:]], "dtype": s.dtype, "prior": prior})
    return out


# --- check -----------------------------------------------------------------------------------------


def check(
    reference,
    candidate,
    *,
    samples: int | None = None,
    seed: int = HELD_BACK_SEED,
    batch: int = 64,
    inputs=None,
    features=None,
    peak: float | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    preview: int = 0,
    progress: bool = False,
    allow_nonfinite: bool = False,
) -> dict:
    """Fidelity of ``candidate`` against ``reference`` on one fixed, seeded input set.

    ``samples`` latents are drawn with ``seed`` from the prior the exporter recorded in the
    reference (``gencompress.inputs``; None: ``fidelity.default_samples`` of the reference, 256
    unless the model is large, and ``samples_note`` says why when it is fewer); the defaults are
    the held-back set quantize and compress evaluate on (``fidelity.held_back_inputs``), so all three print the same PSNR; or taken from ``inputs`` (an ``.npz`` path or a dict of
    arrays keyed by input name). Both models run the same inputs, ``batch`` samples per call.
    ``features``: an ONNX model (path) whose first output, flattened, gives the features for the
    Fréchet distance of the first output (default: the built-in seeded conv net).
    ``peak``: override the PSNR/SSIM peak (default: the nominal range the exporter recorded,
    else the reference's observed peak-to-peak). ``preview`` > 0 keeps that many reference and
    candidate samples and a per-element error map as arrays under ``"preview"`` for the HTML
    report (they are left out of report.json). A model with NaN or Inf weights is refused (its
    outputs are garbage, a check must not pass it) unless ``allow_nonfinite``: then measured, with a warning.

    Returns ``{"reference", "candidate", "samples", "seed", "provider", "inputs", "outputs":
    [per-output metrics, see fidelity.compare_output], "preview"?}``.
    """
    from gencompress.batches import fixed_batch
    from gencompress.inputs import specs_of_model
    from gencompress.runtime_check import fidelity as F
    from gencompress.runtime_check.sessions import make_session, resolve_provider

    samples, batch, seed, threads, preview = _checked_check_arguments(samples, batch, seed, threads, preview, peak, provider, inputs, features)
    provider = resolve_provider(provider)
    ref_proto, ref_label = _load(reference, "reference", header=True)
    cand_proto, cand_label = _load(candidate, "candidate", header=True)
    F.check_compatible(ref_proto, cand_proto)
    weight_warnings = _weight_warnings({"reference": ref_proto, "candidate": cand_proto})
    if weight_warnings and not allow_nonfinite:
        raise GencompressError(f"{weight_warnings[0]}; refusing to check it (--allow-nonfinite measures it anyway)")

    specs = specs_of_model(ref_proto)
    note = None
    if inputs is None and samples is None:  # the held-back set's size for this model's compute
        samples, note = F.budgeted_samples(ref_proto)
    feeds, inputs_source, samples = _check_feeds(specs, inputs, samples, seed)

    # a path is read by onnxruntime itself (external data and all), an in-memory model as given;
    # one session alive at a time (a large model's weights are not held twice), outputs kept
    session = make_session(_source(reference, ref_proto), provider=provider, threads=threads, label=f"reference {ref_label}")
    output_names = [o.name for o in session.get_outputs()]
    ref_out = _run_all(session, feeds, output_names, samples, batch, fixed_batch(ref_proto), f"reference {ref_label}", progress)
    del session
    session = make_session(_source(candidate, cand_proto), provider=provider, threads=threads, label=f"candidate {cand_label}")
    cand_out = _run_all(session, feeds, output_names, samples, batch, fixed_batch(cand_proto), f"candidate {cand_label}", progress)
    del session

    outputs = _compare_outputs(ref_proto, output_names, ref_out, cand_out, peak, features)

    result = {
        "reference": ref_label,
        "candidate": cand_label,
        "samples": int(samples),
        "samples_note": note,
        "seed": int(seed),
        "inputs_source": inputs_source,
        "provider": provider,
        "inputs": _describe_specs(specs),
        "outputs": outputs,
        "warnings": weight_warnings,
        "portability": model_portability(candidate),
    }
    if preview:
        result["preview"] = _preview(feeds, specs, ref_out, cand_out, outputs, preview)
    return result


def _timed_rows(data, models, specs, providers, threads, batches, runs, warmup, seed, progress, budget=None) -> list[dict]:
    """One row per provider, thread count and batch size: each model's percentiles and samples/s,
    timed interleaved, and with a reference its ``ratio`` and ``speedup``; ``budget``: seconds per
    row (``_within_budget``), the runs and warm-up each row got in its ``runs`` / ``warmup``."""
    from gencompress.inputs import sample_inputs
    from gencompress.output import progress as bar
    from gencompress.runtime_check import latency as L
    from gencompress.runtime_check.sessions import cast_feeds, make_session

    rows = []
    total = len(providers) * len(threads) * len(batches) * runs
    with bar(total=total, desc="bench", unit="run") if progress else _NullBar() as pbar:
        for provider in providers:
            for t in threads:
                sessions = {k: make_session(data[k], provider=provider, threads=t, label=f"{k} {models[k][1]}") for k in models}
                for b in batches:
                    feeds = sample_inputs(specs, b, seed)
                    feeds = {k: cast_feeds(s, feeds) for k, s in sessions.items()}
                    row_runs, left, round_s = _within_budget(sessions, feeds, runs, int(warmup), budget)
                    times = L.time_interleaved(sessions, feeds, runs=row_runs, warmup=left, tick=lambda: pbar.update(1))
                    pbar.update(runs - row_runs)
                    row = {"provider": provider, "threads": t, "batch": b, "runs": row_runs, "warmup": left + (round_s is not None),
                           "round_s": round_s}
                    for k in models:
                        stats = L.percentiles(times[k])
                        stats["samples_per_s"] = b / (stats["p50_ms"] / 1e3) if stats["p50_ms"] > 0 else None
                        row[k] = stats
                    row["reference"] = row.get("reference")
                    if row["reference"]:
                        r = row["model"]["p50_ms"] / row["reference"]["p50_ms"] if row["reference"]["p50_ms"] > 0 else None
                        row["ratio"] = r
                        row["speedup"] = 1.0 / r if r else None
                    else:
                        row["ratio"] = row["speedup"] = None
                    rows.append(row)
                del sessions
    return rows


def _within_budget(sessions, feeds, runs: int, warmup: int, budget) -> tuple[int, int, float | None]:
    """(timed runs, warm-up runs left, seconds of one warm-up round) for one configuration: as
    asked, unless one warm-up round of every session (timed here, counted as warm-up) shows that
    they would take more than ``budget`` seconds; then as many rounds as fit, at least
    ``MIN_BUDGET_RUNS``, a tenth of them warm-up. No warm-up asked: no round to time, no budget."""
    import time

    from gencompress.runtime_check.sessions import run

    if not budget or not warmup:
        return runs, warmup, None
    start = time.perf_counter()
    for label, session in sessions.items():
        run(session, feeds[label], label)  # the call a warm-up run makes (latency.time_interleaved)
    round_s = time.perf_counter() - start
    if round_s * (runs + warmup) <= budget:
        return runs, warmup - 1, round_s
    rounds = max(MIN_BUDGET_RUNS, int((budget - round_s) / max(round_s, 1e-9)))
    left = min(warmup - 1, rounds // 10)
    return max(MIN_BUDGET_RUNS, min(runs, rounds - left)), left, round_s


def _memory(data, models, specs, providers, batches, threads: int, seed) -> dict:
    """Peak memory of each model's session (created, and running a batch), per provider and batch size."""
    from gencompress.runtime_check import latency as L

    rows = []
    for provider in providers:
        for b in batches:
            entry = {"provider": provider, "batch": b, "threads": threads}
            for k in models:
                probe = L.measure_memory(data[k], specs, provider=provider, batch=b, threads=threads, seed=seed)
                entry[f"{k}_peak_bytes"] = probe["session_peak_bytes"]
                entry[f"{k}_create_peak_bytes"] = probe["create_peak_bytes"]
                entry["probe"] = probe["method"]
            rows.append(entry)
    return {"method": L.MEMORY_METHOD, "results": rows}


def _sizes(data, sources, models) -> dict:
    """Bytes and deflated bytes of each model, and their ratios with a reference."""
    from gencompress.runtime_check import latency as L

    rows = {k: L.sizes(data[k], sources[k] if isinstance(sources[k], (str, os.PathLike)) else None) for k in models}
    sizes = {"model": rows["model"], "reference": rows.get("reference")}
    if sizes["reference"]:
        sizes["ratio"] = sizes["model"]["bytes"] / sizes["reference"]["bytes"]
        sizes["deflate_ratio"] = sizes["model"]["deflate_bytes"] / sizes["reference"]["deflate_bytes"]
    return sizes


def _compare_outputs(ref_proto, output_names, ref_out, cand_out, peak, features) -> list[dict]:
    """Per output, the metrics of ``fidelity.compare_output``: at the given peak, else the output's
    nominal range, else the reference's peak-to-peak; ``features`` for the first output's Fréchet distance."""
    from gencompress.runtime_check import fidelity as F

    if peak is not None and not (np.isfinite(float(peak)) and peak > 0):
        raise GencompressError(f"--peak must be a positive number, got {peak}")
    outputs = []
    for i, name in enumerate(output_names):
        extractor = None
        if features is not None and i == 0:
            from gencompress.runtime_check.features import onnx_extractor

            extractor = onnx_extractor(features, name, ref_out[name])
        peak_value, peak_source = (float(peak), "given") if peak is not None else F.output_peak(ref_proto, ref_out[name])
        outputs.append(F.compare_output(name, ref_out[name], cand_out[name], peak=peak_value, peak_source=peak_source, extractor=extractor))
    return outputs


def _checked_check_arguments(samples, batch, seed, threads, preview, peak, provider, inputs, features):
    """``check``'s counts and argument types checked before any work; (samples, batch, seed, threads, preview)."""
    if inputs is None and samples is not None:
        samples = positive_int(samples, "--samples (the number of latents)", MAX_SAMPLES)
    batch = positive_int(batch, "--batch", MAX_BATCH)
    seed = seed_value(seed)
    if threads is not None:
        threads = positive_int(threads, "--threads", MAX_THREADS)
    preview = 0 if preview is None or preview == 0 else positive_int(preview, "preview", 1024)
    if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float, np.integer, np.floating))
                             or not 1e-30 <= peak <= 1e30):  # PSNR squares it: beyond these, inf or 0 and numpy's warnings
        raise GencompressError(f"--peak must be a positive number in 1e-30..1e30, got {short(peak)}")
    if not isinstance(provider, str):
        raise GencompressError(f"provider must be a name such as 'cpu', got {short(provider)}")
    if inputs is not None and not isinstance(inputs, (str, os.PathLike, dict)):
        raise GencompressError(f"inputs must be an .npz path or a dict of arrays, got {type(inputs).__name__}")
    if features is not None and not isinstance(features, (str, os.PathLike)):
        raise GencompressError(f"features must be an .onnx path, got {type(features).__name__}")
    return samples, batch, seed, threads, preview


def _check_feeds(specs, inputs, samples: int, seed: int) -> tuple[dict, str, int]:
    """The inputs both models run: ``samples`` seeded prior draws, or the given file or arrays;
    (feeds, where they came from, how many samples)."""
    from gencompress.inputs import load_npz_inputs, sample_inputs

    if inputs is None:
        return sample_inputs(specs, samples, seed), f"seeded prior draws (seed {seed})", samples
    if isinstance(inputs, (str, os.PathLike)):
        feeds, source = load_npz_inputs(inputs, specs), str(inputs)
    else:
        feeds, source = {k: np.asarray(v) for k, v in dict(inputs).items()}, "given arrays"
    counts = {len(v) for v in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise GencompressError("inputs must all have the same, non-zero number of samples")
    return feeds, source, counts.pop()


def _run_all(session, feeds, output_names, n, batch, fixed, label, progress):
    """``sessions.run_all`` keyed by output name."""
    from gencompress.runtime_check.sessions import run_all

    def budget(outs, rows):
        _check_output_budget(outs, rows, n, label)

    return dict(zip(output_names, run_all(session, feeds, n, batch, fixed=fixed, label=label, progress=progress, on_first=budget)))


def _check_output_budget(outs, rows: int, n: int, label: str) -> None:
    """Refuse, with the numbers, outputs of ``n`` samples that would not fit the sampling budget
    (measured on the first batch: an output's size is known only once the model ran)."""
    from gencompress.inputs import sample_budget_bytes

    for arr in outs:
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
            raise GencompressError(f"{label}: an output of type {getattr(arr, 'dtype', type(arr).__name__)} cannot be compared (numeric tensors only; bool and string outputs have no PSNR)")
    per_sample = sum(np.asarray(a).nbytes for a in outs) / max(rows, 1)
    need, budget = per_sample * n, sample_budget_bytes()
    if need > budget:
        raise GencompressError(
            f"{label}: the outputs of {n} samples need {need / 2**20:,.0f} MiB ({per_sample:,.0f} bytes each), above the "
            f"{budget / 2**20:,.0f} MiB budget; use fewer samples (at most {int(budget // max(per_sample, 1)):,}) or raise GENCOMPRESS_SAMPLE_BUDGET_MB"
        )


def _preview(feeds, specs, ref_out, cand_out, outputs, k: int) -> dict | None:
    """Arrays for the report's sample grid: the first image-like output, first ``k`` samples."""
    chosen = next((o for o in outputs if o["kind"] in DEFAULT_PREVIEW_OUTPUT_KINDS), None)
    if chosen is None:
        return None
    name = chosen["name"]
    ref = np.asarray(ref_out[name], dtype=np.float64)
    cand = np.asarray(cand_out[name], dtype=np.float64)
    k = min(k, len(ref))
    err = np.abs(cand - ref)
    err_map = err.mean(axis=(0, 1)) if chosen["kind"] == "image" else err.mean(axis=0)
    finite = ref[np.isfinite(ref)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    labels = {s.name: [int(x) for x in np.asarray(feeds[s.name][:k]).reshape(k, -1)[:, 0]] for s in specs if not s.is_float}
    return {
        "output": name,
        "kind": chosen["kind"],
        "indices": list(range(k)),
        "labels": labels,
        "display_range": [lo, hi],
        "reference": ref[:k],
        "candidate": cand[:k],
        "error_map": err_map,
        "error_map_note": f"mean |candidate - reference| over all {len(ref)} samples" + (" and channels" if chosen["kind"] == "image" else ""),
    }


# --- bench -----------------------------------------------------------------------------------------


def bench(
    model,
    *,
    reference=None,
    providers=("CPUExecutionProvider",),
    batches=(1, 64),
    threads=(2,),
    runs: int = 100,
    warmup: int = 10,
    seed: int = 0,
    memory: bool = True,
    progress: bool = False,
    budget: float | None = BENCH_BUDGET_S,
) -> dict:
    """Latency (p50/p90/p99, samples/s), peak memory and size of ``model`` in onnxruntime.

    ``budget``: seconds each configuration may take (None or 0: no limit); where ``runs`` and
    ``warmup`` would not fit, fewer are timed, each row has the counts it got, and ``notes`` say so.

    With ``reference``, both are timed interleaved in this process (spinning off) and every
    row carries ``ratio`` = model p50 / reference p50. A provider this onnxruntime build does
    not offer is an error, never a CPU fallback. See ``latency`` for what is measured how.
    """
    from gencompress.batches import fixed_batch
    from gencompress.inputs import specs_of_model
    from gencompress.runtime_check import fidelity as F
    from gencompress.runtime_check.sessions import model_bytes, resolve_providers

    if isinstance(providers, str):
        providers = (providers,)
    if not isinstance(providers, (list, tuple)) or not all(isinstance(p, str) for p in providers):
        raise GencompressError(f"providers must be a list of names such as 'cpu', got {short(providers)}")
    batches = positive_ints(batches, "--batch", MAX_BATCH, what="batch size")
    threads = positive_ints(threads, "--threads", MAX_THREADS, what="thread count")
    runs = positive_int(runs, "--runs", MAX_RUNS)
    seed = seed_value(seed)
    warmup = 0 if warmup == 0 else positive_int(warmup, "--warmup", MAX_WARMUP)
    budget = None if budget is None or budget == 0 else float(in_range(budget, "--time-budget", 1e-3, 1e7))
    providers = resolve_providers(providers)
    sources = {"model": model, "reference": reference}
    # each path read once: its header, which for a self-contained file is the whole model
    proto, label = _load(model, "model", header=True)
    models = {"model": (proto, label)}
    if reference is not None:
        ref_proto, ref_label = _load(reference, "reference", header=True)
        F.check_compatible(ref_proto, proto)
        models["reference"] = (ref_proto, ref_label)
    in_files = {k: _weights_in_files(sources[k], p) for k, (p, _) in models.items()}
    # a model keeping its weights in external data (any size, > 2 GB included) is read by
    # onnxruntime from its file; others are serialized once, as given
    data = {k: str(sources[k]) if in_files[k] else model_bytes(p) for k, (p, _) in models.items()}
    for key, (p, lab) in models.items():
        fixed = fixed_batch(p)
        if fixed is not None and any(b != fixed for b in batches):
            raise GencompressError(f"{key} {lab}: its graph fixes the batch size to {fixed}; use --batch {fixed}")
    specs = specs_of_model(models.get("reference", models["model"])[0])

    rows = _timed_rows(data, models, specs, providers, threads, batches, runs, warmup, seed, progress, budget)
    notes = [f"batch {r['batch']}, {r['threads']} thread(s): {r['runs']} timed runs of the {runs} asked, {r['warmup']} warm-up "
             f"(one run of every model took {r['round_s']:.3g} s; time budget {budget:g} s per configuration, --time-budget)"
             for r in rows if r["runs"] < runs]

    mem = _memory(data, models, specs, providers, batches, threads[0], seed) if memory else None
    sizes = _sizes(data, sources, models)
    return {
        "model": label,
        "reference": models["reference"][1] if "reference" in models else None,
        "providers": providers,
        "batches": batches,
        "threads": threads,
        "runs": runs,
        "warmup": int(warmup),
        "seed": int(seed),
        "isa": host_isa(),
        "settings": {"intra_op_spinning": False, "inter_op_spinning": False, "inter_op_threads": 1, "interleaved": "model/reference alternating A B, B A"},
        "results": rows,
        "memory": mem,
        "sizes": sizes,
        "warnings": _weight_warnings({k: sources[k] if in_files[k] else p for k, (p, _) in models.items()}),
        "notes": notes,
    }


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _weight_warnings(protos: dict) -> list[str]:
    """check and bench measure a model as it is: NaN/Inf weights are reported, not refused."""
    from gencompress.onnx_io import nonfinite_weights

    out = []
    for role, proto in protos.items():
        bad = nonfinite_weights(proto)
        if bad:
            out.append(f"the {role} has NaN or Inf in {len(bad)} weight(s), e.g. {short(bad[0])}; its outputs may be NaN")
    return out


# --- per-layer statistics ----------------------------------------------------------------------------

WEIGHT_OPS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (1, 0), "GRU": (1, 2), "LSTM": (1, 2), "RNN": (1, 2), "Gather": (0,)}
_PASSTHROUGH = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}


def layer_stats(model) -> list[dict]:
    """Per weight of every Conv/ConvTranspose/Gemm/MatMul/GRU/LSTM (and embedding tables read by
    Gather): shape, sparsity, precision.

    A weight is an initializer feeding the op directly or through DequantizeLinear (QDQ, then its
    stored integer type is the precision and the scale's shape the granularity), Cast (e.g. fp16
    storage) and shape-only ops. ``sparsity`` = fraction of stored values that are zero (for
    quantized weights: equal to the zero point); ``zero_channels`` = fraction of output channels
    that are entirely zero (structured pruning). A path's weights in side files (external data)
    are read a slice at a time, never whole (a 2.4 GB float model: 6250 MiB peak read whole, 136
    MiB so).
    """
    proto, files, base_dir = _weights_header(model)
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    rows = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_OPS:
            continue
        if node.op_type == "Gather" and any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        for index in WEIGHT_OPS[node.op_type]:
            if index >= len(node.input) or not node.input[index]:
                continue
            found = _trace_weight(node.input[index], inits, producer, consts)
            if found is None:
                continue
            tensor, dq, cast_to = found
            read = _slices(tensor, files.get(tensor.name) if tensor.data_location == tensor.EXTERNAL else None, base_dir)
            if read is None:
                continue
            shape, rows_of = read
            if len(shape) < 2:
                continue
            precision, granularity, zero_point = _precision(shape, tensor, dq, cast_to, inits, consts, producer, base_dir)
            sparsity, zero_channels = _zero_stats(rows_of, shape, zero_point, _out_axis(node, index, len(shape)))
            rows.append(
                {
                    "node": node.name or f"{node.op_type}_{len(rows)}",
                    "op_type": node.op_type,
                    "weight": tensor.name,
                    "shape": [int(d) for d in shape],
                    "params": int(np.prod(shape)),
                    "sparsity": sparsity,
                    "zero_channels": zero_channels,
                    "precision": precision,
                    "granularity": granularity,
                    "bytes": int(len(tensor.raw_data)) if tensor.raw_data else _stored_bytes(tensor, shape),
                }
            )
    return rows


def _weights_header(model):
    """(proto, {initializer name: (file, offset)} of its weights in side files, base folder): a
    path read by ``load_header`` (a self-contained file, under 2 GB, is read whole: ``load_mapped``
    would copy its int8 weights out of the mapped file, 2367 against 1998 MiB on a 606 MB one)."""
    proto, _ = _load(model, "model", header=True)
    if not isinstance(model, (str, os.PathLike)):
        return proto, {}, ""
    from gencompress.onnx_io import external_data_entries

    names = {t.name for t in proto.graph.initializer}
    files = {t.name: (file, offset) for t, file, offset, _ in external_data_entries(proto, Path(model)) if t.name in names}
    return proto, files, str(Path(model).parent)


# tensor types whose stored bytes are numpy's items (no packed 4-bit types): read a slice at a time
_SLICED_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16,
                 11: np.float64, 12: np.uint32, 13: np.uint64}
_SLICE_ITEMS = 1 << 24


def _slices(tensor, where, base_dir):
    """(shape, rows(i, j) -> the weight's rows i..j along axis 0) of a weight, read from its file a
    slice at a time when it is in one (``where``: (file, offset)); None when it cannot be read."""
    from onnx import numpy_helper

    shape = tuple(int(d) for d in tensor.dims)
    if where is not None and tensor.data_type in _SLICED_TYPES:
        file, offset = where
        dtype = np.dtype(_SLICED_TYPES[tensor.data_type]).newbyteorder("<")
        row = int(np.prod(shape[1:])) if shape else 1

        def rows(i, j):
            data = np.fromfile(file, dtype=dtype, count=(j - i) * row, offset=offset + i * row * dtype.itemsize)
            return data.reshape((j - i, *shape[1:]))

        return shape, rows
    try:
        arr = numpy_helper.to_array(tensor, base_dir=base_dir)
    except Exception:
        return None
    return arr.shape, lambda i, j: arr[i:j]


def _zero_stats(rows_of, shape, zero_point, out_axis) -> tuple[float, float | None]:
    """(sparsity, zero_channels) of a weight read ``rows_of(i, j)`` a slice of axis 0 at a time:
    the fraction of values equal to the zero point, and of output channels all zero."""
    n = int(np.prod(shape))
    if n == 0:
        return 0.0, None
    step = max(1, _SLICE_ITEMS // max(1, n // shape[0]))
    per_channel = out_axis is not None and shape[out_axis] > 0
    channels = (np.empty(shape[0], bool) if out_axis == 0 else np.ones(shape[out_axis], bool)) if per_channel else None
    other = tuple(a for a in range(len(shape)) if a != out_axis)
    zeros = 0
    for i in range(0, shape[0], step):
        block = rows_of(i, min(i + step, shape[0]))
        zp = zero_point if zero_point is None or np.ndim(zero_point) == 0 or np.shape(zero_point)[0] == 1 else zero_point[i : i + step]
        zero = np.broadcast_to(block == (zp if zp is not None else 0), block.shape)
        zeros += int(np.count_nonzero(zero))
        if per_channel:
            found = np.all(zero, axis=other)
            if out_axis == 0:
                channels[i : i + len(block)] = found
            else:
                channels &= found
        del block, zero
    return zeros / n, float(np.mean(channels)) if per_channel else None


def _stored_bytes(tensor, shape) -> int:
    from onnx import helper

    try:
        return int(np.prod(shape)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:
        return 0


def _trace_weight(name, inits, producer, consts, hops: int = 6):
    dq = None
    cast_to = None
    for _ in range(hops):
        if name in inits:
            return inits[name], dq, cast_to
        if name in consts:
            for a in consts[name].attribute:
                if a.name == "value":
                    t = a.t
                    t.name = t.name or name
                    return t, dq, cast_to
            return None
        node = producer.get(name)
        if node is None or not node.input:
            return None
        if node.op_type == "DequantizeLinear" and dq is None:
            dq = node
        elif node.op_type == "Cast" and cast_to is None:
            cast_to = node
        elif node.op_type == "Mul" and dq is None and cast_to is None:
            pass  # Cast(int8) * scale: int8 weights onnxruntime folds at load (verbs/int8_plan.py)
        elif node.op_type not in _PASSTHROUGH:
            return None
        name = node.input[0]
    return None


def _value(name, inits, consts, producer=None, depth: int = 4, base_dir: str = ""):
    """A constant's value: an initializer, a Constant, or (quantizers store repeated per-channel
    vectors once and rebuild them in the graph) Expand/Reshape/Tile/Mul/Cast of constants."""
    from onnx import helper, numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name], base_dir=base_dir)  # a per-channel scale may be left in the file
    if name in consts:
        for a in consts[name].attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None
    node = (producer or {}).get(name)
    if node is None or depth == 0 or node.op_type not in ("Expand", "Reshape", "Tile", "Mul", "Cast", "Identity"):
        return None
    args = [_value(i, inits, consts, producer, depth - 1, base_dir) for i in node.input]
    if any(a is None for a in args):
        return None
    x = np.asarray(args[0])
    if node.op_type == "Expand":
        return x * np.ones(tuple(int(d) for d in args[1]), dtype=x.dtype)
    if node.op_type == "Reshape":
        shape = [int(d) if d != 0 else x.shape[i] for i, d in enumerate(args[1])]
        return x.reshape(shape)
    if node.op_type == "Tile":
        return np.tile(x, tuple(int(d) for d in args[1]))
    if node.op_type == "Mul":
        return x * np.asarray(args[1])
    if node.op_type == "Cast":
        to = next(a.i for a in node.attribute if a.name == "to")
        return x.astype(helper.tensor_dtype_to_np_dtype(to))
    return x


def _precision(shape, tensor, dq, cast_to, inits, consts, producer=None, base_dir: str = ""):
    from onnx import TensorProto

    stored = TensorProto.DataType.Name(tensor.data_type).lower()
    stored = {"float": "float32", "double": "float64"}.get(stored, stored)
    if dq is None:
        return stored, None, None
    scale = _value(dq.input[1], inits, consts, producer, base_dir=base_dir) if len(dq.input) > 1 else None
    zp = _value(dq.input[2], inits, consts, producer, base_dir=base_dir) if len(dq.input) > 2 and dq.input[2] else None
    rank = len(shape)
    attrs = {a.name: a for a in dq.attribute}
    if "block_size" in attrs and attrs["block_size"].i > 0:
        granularity = f"blockwise ({attrs['block_size'].i})"
    elif scale is not None and np.size(scale) > 1:
        axis = attrs["axis"].i if "axis" in attrs else 1
        granularity = f"per-channel (axis {axis % max(rank, 1)})"
    else:
        granularity = "per-tensor"
    zero_point = None
    if zp is not None and np.size(zp) >= 1:
        zpa = np.asarray(zp)
        if zpa.size == 1:
            zero_point = zpa.reshape(()).item()
        elif "axis" in attrs or zpa.ndim == 1:
            axis = (attrs["axis"].i if "axis" in attrs else 1) % rank
            where = [1] * rank
            where[axis] = zpa.size
            if zpa.size == shape[axis]:
                zero_point = zpa.reshape(where)
    return stored, granularity, zero_point


def _out_axis(node, index, rank):
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if rank >= 2 else None
    if op == "Gemm" and rank == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul":
        return rank - 1 if index == 1 else rank - 2
    if op in ("GRU", "LSTM", "RNN") and rank == 3:
        return 1
    if op == "Gather":
        return 0  # an embedding table: one row per class
    return None


# --- the report ------------------------------------------------------------------------------------


def model_sizes(model) -> dict:
    from gencompress.runtime_check.latency import sizes
    from gencompress.runtime_check.sessions import model_bytes

    proto, _ = _load(model, "model", header=True)  # a self-contained file's header is the whole model
    if _weights_in_files(model, proto):
        return sizes(str(model), model)
    return sizes(model_bytes(proto), model if isinstance(model, (str, os.PathLike)) else None)


def sweep_entry(label: str, candidate, fidelity: dict, **extra) -> dict:
    """One row of a sweep for ``build_report(sweep=[...])``: size and the first output's metrics."""
    out = (fidelity.get("outputs") or [{}])[0]
    row = {
        "label": str(label),
        "bytes": model_sizes(candidate)["bytes"],
        "psnr_db": out.get("psnr_db"),
        "ssim": out.get("ssim"),
        "frechet_distance_relative": out.get("frechet_distance_relative"),
    }
    row.update(extra)
    return row


def build_report(
    reference,
    candidate,
    *,
    fidelity: dict | None = None,
    latency: dict | None = None,
    recipe=None,
    passes: list | None = None,
    sweep: list | None = None,
    layers: list | None = None,
    title: str | None = None,
    **extra,
) -> dict:
    """The report dict ``write_report`` renders; sizes and per-layer stats read off the models.

    See ``report_html`` for the schema. Extra keyword arguments are kept as top-level keys
    (shown in the report's "details" section).
    """
    ref_sizes, cand_sizes = model_sizes(reference), model_sizes(candidate)
    report = {
        "schema": SCHEMA,
        "title": title or f"gencompress report: {Path(str(candidate)).name}",
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "reference": str(reference) if isinstance(reference, (str, os.PathLike)) else "<reference>",
        "candidate": str(candidate) if isinstance(candidate, (str, os.PathLike)) else "<candidate>",
        "sizes": {
            "reference": ref_sizes,
            "candidate": cand_sizes,
            "ratio": cand_sizes["bytes"] / ref_sizes["bytes"],
            "deflate_ratio": cand_sizes["deflate_bytes"] / ref_sizes["deflate_bytes"],
        },
        "recipe": recipe,
        "passes": passes,
        "layers": layers if layers is not None else layer_stats(candidate),
        "fidelity": fidelity,
        "latency": latency,
        "sweep": sweep,
        # check measured the same candidate: its verdict is reused, not computed from the weights again
        "portability": (fidelity or {}).get("portability") or model_portability(candidate),
    }
    report.update(extra)
    return report


def model_portability(model) -> dict:
    """The ISA figures are measured on here and whether ``model`` (path, proto or onnx_ir) is
    saturation-free on x86 CPUs without VNNI (``runtime_check/saturation.py``)."""
    from gencompress.onnx_io import load_mapped, mapped_ir
    from gencompress.runtime_check.saturation import portability

    # a path's large float weights stay in their file (memory-mapped): the verdict reads int8 weights only
    return portability(mapped_ir(load_mapped(model), model) if isinstance(model, (str, os.PathLike)) else model)
