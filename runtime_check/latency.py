"""Latency, throughput, peak memory and size of a model in onnxruntime.

Timing: for each execution provider and intra-op thread count, one session per model (spinning
off, one inter-op thread); for each batch size, ``warmup`` untimed runs of each model, then
``runs`` timed runs *interleaved* with the reference's (order alternating A B / B A, so neither
model always runs on a cache the other warmed). Times are wall-clock ``perf_counter`` around
``session.run``, inputs already in memory. Reported: p50/p90/p99/mean/min in milliseconds,
samples/s = batch / p50, and candidate p50 / reference p50 (``ratio``; below 1 is faster).
Absolute numbers on a shared machine are noisy; the interleaved ratio is the figure to quote.

Peak memory (``memory``): measured in a fresh Python process per model, provider and batch size,
so no other session's allocations or the allocator's free lists blur it. The probe imports
onnxruntime, builds the inputs, and creates and runs a trivial one-node session, so that
onnxruntime's one-time environment set-up (about 10 MiB here) is not charged to the model. Then
it resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), records VmRSS, creates the
model's session and runs the batch twice. ``session_peak_bytes`` = VmHWM − that VmRSS: the
resident memory the session costs at its peak — weights as onnxruntime holds them (after its
graph optimizations), its memory arena, intermediate activations, output buffers;
``create_peak_bytes`` is the same up to the end of session creation. Device memory of a GPU
provider is not included. Without /proc (non-Linux) the probe uses ``getrusage`` max RSS
instead, which can only rise, so small sessions may read 0.

Size: the self-contained model's bytes and its deflate-compressed size (zlib, level 6 — what a
zip archive would take), a measure of how much structure (zeros, few distinct values) pruning
and quantization left for a compressor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError

MEMORY_METHOD = (
    "peak RSS growth (VmHWM - VmRSS before session creation) in a fresh process: create the session, "
    "run the batch twice; includes weights as held by onnxruntime, its arena and activations; "
    "excludes the Python/onnxruntime import, onnxruntime's one-time environment set-up (paid by a "
    "trivial session first) and GPU device memory"
)
DEFLATE_LEVEL = 6


def sizes(data, path=None) -> dict:
    """``bytes`` (self-contained model), ``deflate_bytes`` and, for a file, ``file_bytes``.
    ``data``: the serialized model, or the path of one whose weights live in external data
    (then ``bytes`` is the .onnx plus its data files, deflated a chunk at a time)."""
    if isinstance(data, (str, os.PathLike)):
        from gencompress.onnx_io import model_files
        from gencompress.onnx_io import deflate_files

        files = model_files(data)
        return {"bytes": sum(f.stat().st_size for f in files), "deflate_bytes": deflate_files(files, DEFLATE_LEVEL), "file_bytes": os.path.getsize(data)}
    out = {"bytes": len(data), "deflate_bytes": len(zlib.compress(data, DEFLATE_LEVEL))}
    if path is not None and Path(path).is_file():
        out["file_bytes"] = os.path.getsize(path)
    return out


def percentiles(times_s) -> dict:
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "runs": int(t.size),
    }


def time_interleaved(sessions: dict, feeds: dict, *, runs: int, warmup, tick=None, stop=None) -> dict:
    """Warm up, then time ``runs`` calls of each session, interleaved; ``{label: [seconds...]}``.

    ``feeds``: the inputs of every session, or ``{label: inputs}`` per session. ``warmup``: runs
    before timing, for every session or ``{label: runs}``. ``stop(times so far)`` true after a
    round: no more rounds (the comparison is already decided)."""
    from gencompress.runtime_check.sessions import run

    labels = list(sessions)
    if set(feeds) != set(labels) or not all(isinstance(v, dict) for v in feeds.values()):
        feeds = {label: feeds for label in labels}
    for label in labels:
        for _ in range(warmup[label] if isinstance(warmup, dict) else warmup):
            run(sessions[label], feeds[label], label)  # a failing run named by its label
    times = {label: [] for label in labels}
    clock = time.perf_counter
    for i in range(runs):
        order = labels if i % 2 == 0 else labels[::-1]
        for label in order:
            s, f = sessions[label], feeds[label]
            t0 = clock()
            s.run(None, f)
            times[label].append(clock() - t0)
        if tick:
            tick()
        if stop is not None and stop(times):
            break
    return times


# --- peak memory probe (runs in a fresh process) -------------------------------------------------


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _trivial_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "warmup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def _probe(model_path: str, provider: str, batch: int, threads: int | None, seed: int, specs_json: str) -> dict:
    import gc

    import onnxruntime  # noqa: F401  (imported before the baseline: its import is not the session's cost)

    from gencompress.inputs import sample_inputs, specs_from_json
    from gencompress.runtime_check.sessions import cast_feeds, make_session, run

    from gencompress.onnx_io import external_data_files

    # self-contained: the bytes read before the baseline; with external data onnxruntime reads the files
    data = model_path if external_data_files(model_path) else Path(model_path).read_bytes()
    feeds = sample_inputs(specs_from_json(specs_json), batch, seed)
    # One-time set-up of onnxruntime's environment (logging, allocators, kernel registries) is
    # paid by a trivial session first, so that what follows is what this model's session costs.
    warm = make_session(_trivial_model(), provider=provider, threads=threads)
    run(warm, {"x": np.zeros(1, np.float32)})
    del warm
    gc.collect()
    proc = _reset_peak() and _rss_kib("VmRSS") is not None
    before = _rss_kib("VmRSS") * 1024 if proc else _maxrss_bytes()
    session = make_session(data, provider=provider, threads=threads)
    created = _rss_kib("VmHWM") * 1024 if proc else _maxrss_bytes()
    del data
    feeds = cast_feeds(session, feeds)
    for _ in range(2):
        run(session, feeds)
    peak = _rss_kib("VmHWM") * 1024 if proc else _maxrss_bytes()
    return {
        "session_peak_bytes": max(0, peak - before),
        "create_peak_bytes": max(0, created - before),
        "rss_before_bytes": before,
        "rss_peak_bytes": peak,
        "method": "proc" if proc else "getrusage",
    }


def measure_memory(data: bytes, specs, *, provider: str, batch: int, threads: int | None, seed: int = 0) -> dict:
    """Run the probe for a model (its self-contained bytes) in a fresh process."""
    from gencompress.inputs import specs_to_json

    with tempfile.TemporaryDirectory(prefix="gencompress-mem-") as tmp:
        if isinstance(data, (str, os.PathLike)):  # a model with external data: the probe reads its file
            path = Path(data)
        else:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
        cmd = [
            sys.executable,
            "-m",
            "gencompress.runtime_check.latency",
            "probe",
            str(path),
            provider,
            str(batch),
            str(threads or 0),
            str(seed),
            specs_to_json(specs),
        ]
        stdout, stderr, returncode = _run_probe(cmd)
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        tail = " ".join((stderr or stdout).split())[-240:]
        raise GencompressError(f"memory probe failed on {provider} at batch {batch}: {tail}")
    return json.loads(lines[-1])


PARENT_ENV = "GENCOMPRESS_PROBE_PARENT"


def _run_probe(cmd, timeout: float = 600) -> tuple[str, str, int]:
    """Run the probe and kill it on any interrupt (Ctrl-C, SIGTERM). An interrupt that lands
    while Popen is still spawning it leaves no handle to kill: the child then ends itself
    (``_die_with_parent``)."""
    proc = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, PARENT_ENV: str(os.getpid())})
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    return stdout, stderr, proc.returncode


def _die_with_parent() -> None:
    """In the probe: be killed when the tool that started it exits (Linux), or exit now if it
    already has."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if str(os.getppid()) != parent:
        os._exit(1)


def _main(argv) -> int:
    if len(argv) != 7 or argv[0] != "probe":
        print("usage: python -m gencompress.runtime_check.latency probe MODEL PROVIDER BATCH THREADS SEED SPECS_JSON", file=sys.stderr)
        return 2
    _, model, provider, batch, threads, seed, specs_json = argv
    _die_with_parent()
    try:
        result = _probe(model, provider, int(batch), int(threads) or None, int(seed), specs_json)
    except GencompressError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
