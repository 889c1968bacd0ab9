"""Trials as Ray tasks: builds in parallel anywhere, then timings one per node.

Timing honesty. A latency figure is only worth something when nothing else runs on its node.
Two rules give that:
  1. builds first, timings after: the timing phase starts when the last build has finished, so no
     build (export, distillation, calibration) ever runs beside a timing;
  2. every timing task holds the custom node resource ``gencompress_timing`` (1 per node), so no two
     timings share a node, while different nodes time in parallel.
A custom resource rather than "all the node's CPUs" because it needs no knowledge of each node's
size and Ray queues the waiting timings itself. A trial whose build itself times models (the
``balanced``/``speed`` int8 plan, a PSNR target search) runs whole in the timing phase. Other
trials build with ``bench=False``; their latency is then measured by ``gencompress.bench`` with the
arguments compress would have used, and merged into their report.

Results travel through Ray's object store (the trial's files as bytes), so nodes need no shared
file system: only the driver writes OUT_DIR.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from gencompress.errors import GencompressError
from gencompress.verbs.compress import without_prefix

TIMING_RESOURCE = "gencompress_timing"
BASE_MEMORY = 768 << 20  # a worker with torch and onnxruntime imported
MAX_RETRIES = 3  # a worker that dies (killed, OOM, node lost) is retried this many times
SCRATCH_PREFIX = "gencompress-sweep-"


def scratch_name() -> str:
    """A new name for a sweep's scratch folder (``scratch``) in each node's temp folder."""
    return f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def scratch(name: str):
    """A task's temporary files (its trial folder, compress's scratch) in the sweep's folder ``name``
    of this node's temp folder: a worker the interrupt's ``ray.shutdown()`` kills removes none of
    its own, so the driver removes the folder (``remove_scratch``) once Ray has stopped."""
    folder = Path(tempfile.gettempdir()) / name
    folder.mkdir(exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def remove_scratch(name: str) -> None:
    """The sweep's scratch folder on the driver's node removed (a cluster's other nodes keep what
    a killed worker left in theirs)."""
    shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)


def connect(address: str | None, *, num_cpus: int | None = None, object_store_memory: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local Ray; True if this call connected (the caller then
    disconnects with ``ray.shutdown()``, which also stops a local Ray it started)."""
    import signal

    import ray

    if ray.is_initialized():  # a caller's own Ray session (tests, notebooks): used as it is
        return False
    # Ray's core installs a SIGTERM handler that aborts the process; the CLI's (SIGTERM → the
    # KeyboardInterrupt that cancels trials and writes the results) is put back after init.
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if address is None:  # "local": a new Ray of our own, even when a `ray start` cluster runs on this machine
            ray.init(address="local", num_cpus=num_cpus, resources={TIMING_RESOURCE: 1}, object_store_memory=object_store_memory,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise GencompressError(f"--address {address}: cannot join a Ray cluster ({str(e).splitlines()[0]})") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def check_cluster(needs_timing: bool) -> None:
    import ray

    if needs_timing and not ray.cluster_resources().get(TIMING_RESOURCE):
        raise GencompressError(f"the Ray cluster has no node with the '{TIMING_RESOURCE}' resource; start each node with "
                               f"`ray start ... --resources '{{\"{TIMING_RESOURCE}\": 1}}'`, or set options.bench: false")


def memory_estimate(trial) -> int:
    """Ray's memory reservation for a trial: a worker's imports plus ~12 copies of the model
    (reference, candidate, calibration and distillation copies, the files returned as bytes)."""
    return BASE_MEMORY + 12 * trial.model_bytes


def build_cost(trial) -> tuple:
    """A trial's build cost, for ordering only: distillation steps dominate, then the model's size.
    Builds are submitted longest first (Ray starts tasks of one shape in submission order), so the
    last build to finish is a short one and no core idles long beside it (in the spec's order the
    last model's distillations, 5-10x a plain build on the zoo, come last)."""
    from gencompress.verbs.distill import DEFAULTS

    c = trial.config
    steps = (c.get("distill") or 0) if "recipe" not in c else sum(
        int((s.get("options") or {}).get("steps", DEFAULTS["steps"])) for s in c["recipe"] if s.get("pass") == "distill")
    return (int(steps), trial.model_bytes)


def _compress_kwargs(trial, out: Path, bench: bool) -> dict:
    c, o = trial.config, trial.options
    kwargs = dict(checkpoint=trial.model["checkpoint"], inputs=trial.model["inputs"], batch_size=trial.model["batch_size"],
                  samples=o["samples"], seed=o["seed"], bench=bench, batches=tuple(o["batches"]), threads=tuple(o["threads"]),
                  runs=o["runs"], provider=o["provider"])
    if "recipe" in c:
        kwargs["recipe"] = c["recipe"]
    else:
        flags = {k: v for k, v in c.items() if k != "target_psnr"}
        kwargs["flags"] = {**flags, "exclude": tuple(flags["exclude"]), "seed": o["seed"]}
        kwargs["target_psnr"] = c.get("target_psnr")
    return {"model": trial.model["model"], "out_dir": out, **kwargs}


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def export_model(trial, folder: str) -> bytes | None:
    """The trial's torch model exported once for all its trials, as compress would export it: the
    file's bytes, or None when the export has a side file (each trial then exports it itself).
    ``folder``: the sweep's scratch folder name (``scratch``)."""
    from gencompress.exporter.export import export

    m = trial.model
    with scratch(folder), tempfile.TemporaryDirectory(prefix="gencompress-export-") as tmp:
        export(m["model"], Path(tmp) / "reference.onnx", checkpoint=m["checkpoint"], inputs=m["inputs"], seed=trial.options["seed"],
               batch_size=m["batch_size"])
        files = _files(Path(tmp))
    return files["reference.onnx"] if len(files) == 1 else None


def build_trial(trial, time_later: bool, folder: str, exported: bytes | None = None) -> dict:
    """One compress run in a scratch folder; its files come back as bytes.

    ``exported``: the torch model's export (``export_model``), used as the reference instead of
    exporting it again. ``time_later``: built with ``bench=False``; the fidelity comes back with
    its sample previews (report.json has only their shapes) so that the report can be rendered
    whole once the latency is merged in. ``folder``: the sweep's scratch folder name (``scratch``)."""
    import ray

    import gencompress

    with scratch(folder), tempfile.TemporaryDirectory(prefix="gencompress-trial-") as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        kwargs = _compress_kwargs(trial, out, bench=trial.options["bench"] and not time_later)
        if exported is not None:
            kwargs["exported"] = Path(tmp) / "exported.onnx"
            kwargs["exported"].write_bytes(exported)
        report = gencompress.compress(**kwargs, keep_previews=time_later)
        return {"files": _files(out), "fidelity": report["fidelity"] if time_later else None,
                "build_seconds": time.perf_counter() - start, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def time_trial(trial, built: dict, folder: str) -> dict:
    """compress's timing of a built trial: candidate and reference interleaved in this process.
    ``folder``: the sweep's scratch folder name (``scratch``)."""
    import ray

    import gencompress

    o = trial.options
    with scratch(folder), tempfile.TemporaryDirectory(prefix="gencompress-timing-") as tmp:
        for name, data in built["files"].items():
            if name.startswith(("reference.onnx", "model.onnx")):  # the models and their side files, if any
                (Path(tmp) / name).write_bytes(data)
        start = time.perf_counter()
        latency = gencompress.bench(Path(tmp) / "model.onnx", reference=Path(tmp) / "reference.onnx", providers=(o["provider"],),
                                    batches=tuple(o["batches"]), threads=tuple(o["threads"]), runs=o["runs"], seed=o["seed"], memory=False)
        return {"latency": without_prefix(latency, f"{tmp}{os.sep}"), "time_seconds": time.perf_counter() - start,
                "node": ray.get_runtime_context().get_node_id()}


def run(trials, *, on_done, on_failed, on_progress=lambda done, running, failed: None, folder: str) -> None:
    """Run ``trials``; ``on_done(trial, built, timed|None)`` and ``on_failed(trial, message)`` are
    called in the driver as each finishes. Ctrl-C/SIGTERM (KeyboardInterrupt) propagates at once;
    finished trials have been handed over already. The running tasks are not cancelled: a
    ``ray.cancel`` racing the reply of a task that just finished fails a check in Ray's core
    (task_manager.cc ``it != submissible_tasks_.end()``, Ray 2.60) that kills the driver, exit 1
    and no results written (seen in a loaded test run). ``ray.shutdown()`` ends them instead: a
    local Ray stops with its workers, a cluster ends the tasks of a job whose driver has gone (a
    caller's own Ray session keeps running them; their results are dropped). ``folder``: the
    sweep's scratch folder name (``scratch``), removed by the caller after ``ray.shutdown()``.

    Each torch model is exported once, in the build phase, and its trials' builds take that
    export (Ray passes it when it is ready): a model's 6 configurations export it once, not 6
    times (the export is most of a plain int8 build of a zoo model)."""
    import ray

    build = ray.remote(build_trial)
    timing = ray.remote(time_trial)
    export = ray.remote(export_model)
    common = dict(max_retries=MAX_RETRIES, retry_exceptions=False, num_cpus=1)
    timed_phase = {TIMING_RESOURCE: 1}
    pending: dict = {}  # ObjectRef -> (phase, trial, built); phase: export, build, whole or timing
    later = []  # what the timing phase runs once the builds are done
    counts = {"done": 0, "failed": 0}
    exports: dict = {}  # model name -> ObjectRef of its export

    def exported(trial):
        if str(trial.model["model"]).endswith(".onnx"):
            return None
        name = trial.model["name"]
        if name not in exports:
            exports[name] = export.options(**common, memory=memory_estimate(trial)).remote(trial, folder)
            pending[exports[name]] = ("export", trial, None)
        return exports[name]

    def building() -> bool:
        return any(phase in ("export", "build") for phase, _, _ in pending.values())

    def submit_timing():
        for trial, built in later:
            opts = dict(common, memory=memory_estimate(trial), resources=timed_phase)
            if built is None:  # times inside its build: the whole compress run holds the node's timing slot
                pending[build.options(**opts).remote(trial, False, folder, exports.get(trial.model["name"]))] = ("whole", trial, None)
            else:
                pending[timing.options(**opts).remote(trial, built, folder)] = ("timing", trial, built)
        later.clear()

    for trial in sorted(trials, key=build_cost, reverse=True):  # longest first: no long build left alone at the end
        ref = exported(trial)  # every export belongs to the build phase, a timed-in-build trial's too
        if trial.times_in_build:
            later.append((trial, None))
        else:
            time_later = trial.options["bench"]
            pending[build.options(**common, memory=memory_estimate(trial)).remote(trial, time_later, folder, ref)] = ("build", trial, None)
    if not building():
        submit_timing()
    while pending:
        on_progress(counts["done"], sum(phase != "export" for phase, _, _ in pending.values()), counts["failed"])
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            phase, trial, built = pending.pop(ref)
            if phase == "export":  # its trials' builds take it (a failed export fails them, with its message)
                continue
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the trial failed; the sweep goes on
                counts["failed"] += 1
                on_failed(trial, _message(e))
                continue
            if phase == "build" and trial.options["bench"]:
                later.append((trial, value))
            else:
                counts["done"] += 1
                on_done(trial, built if phase == "timing" else value, value if phase == "timing" else None)
        if later and not building():
            submit_timing()  # the last build is done: nothing else runs beside a timing now
    on_progress(counts["done"], 0, counts["failed"])


def _message(error: Exception) -> str:
    """One line: a user error's own message, else the exception's type and first line."""
    import ray

    cause = getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
    if isinstance(cause, GencompressError):
        return str(cause)
    error = cause or error
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"[:300]
