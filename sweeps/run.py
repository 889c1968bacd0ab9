"""`gencompress sweep SPEC OUT_DIR`: every model × configuration of a spec as one compress trial, on Ray.

    OUT_DIR/trials/<model>/<key>/   one folder per finished trial (see sweeps.results)
    OUT_DIR/results.json, .csv      one row per trial: status and every figure compress reports
    OUT_DIR/report.html             per-model Pareto charts, best configuration per objective

Trials already in OUT_DIR with the same content key (model bytes, configuration, options, tool
version) are not run again. Ctrl-C / SIGTERM stops the running trials (Ray is shut down, their
temporary files removed: ``runner.scratch``); finished ones stay and the results files are written
for them. See sweeps.runner for how timings are kept apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from gencompress.errors import GencompressError

OUTPUTS = ("results.json", "results.csv", "report.html")


def sweep(spec, out_dir, *, address: str | None = None, num_cpus: int | None = None, object_store_memory: int | None = None,
          progress: bool = False, log=None) -> dict:
    """Run the spec's trials (local Ray, or the cluster at ``address``: ``auto`` or HOST:PORT).

    Returns {"trials", "done", "failed", "resumed", "executed": [keys run now], "results": path}.
    ``num_cpus`` / ``object_store_memory``: for the local Ray this starts (ignored with ``address``).
    """
    from gencompress.arguments import out_dir_path
    from gencompress.onnx_io import refuse_overwrite
    from gencompress.output import progress as bar

    from . import report as page
    from . import results as R
    from . import runner
    from .spec import load_spec

    log = log or (lambda msg: None)
    trials = load_spec(spec)  # everything validated before Ray starts or anything is written
    out = out_dir_path(out_dir)  # a path, new or a folder (gencompress/arguments.py)
    if isinstance(spec, (str, Path)):
        for name in OUTPUTS:
            refuse_overwrite(out / name, [Path(spec)])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GencompressError(f"{out}: cannot create output folder ({e.strerror})") from None
    R.clear_partials(out)

    rows: dict[str, dict] = {}
    executed = []

    def done_row(trial, meta):
        report = json.loads((R.trial_path(out, trial) / "report.json").read_text())
        return R.row(trial, meta, report, status="done")

    def done(trial, built, timed):
        executed.append(trial.key)
        rows[trial.key] = done_row(trial, R.write_trial(out, trial, built, timed))

    todo = []
    for t in trials:
        meta = R.finished(out, t)
        if meta is None:
            todo.append(t)
            rows[t.key] = R.row(t, None, None, status="pending")
        else:
            rows[t.key] = done_row(t, meta)
    resumed = len(trials) - len(todo)
    log(f"{len(trials)} trials: {resumed} already done, {len(todo)} to run")

    def failed(trial, message):
        rows[trial.key] = R.row(trial, None, None, status="failed", error=message)
        log(f"trial {trial.model['name']} [{trial.label}] failed: {message}")

    header = {"spec": str(spec) if isinstance(spec, (str, Path)) else "<dict>", "version": _version()}
    bars = bar(total=len(trials), desc="trials", unit="trial") if progress else None

    def tick(n_done, running, n_failed):
        if bars is not None:
            bars.n = resumed + n_done + n_failed
            bars.set_postfix(running=running, failed=n_failed, refresh=False)
            bars.refresh()

    started = False
    folder = runner.scratch_name()
    try:
        if todo:
            started = runner.connect(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
            runner.check_cluster(any(t.times_in_build or t.options["bench"] for t in todo))
            runner.run(todo, on_done=done, on_failed=failed, on_progress=tick, folder=folder)
    finally:
        if bars is not None:
            bars.close()
        for t in trials:  # a trial interrupted between its folder's rename and its row: the folder decides
            if rows[t.key]["status"] == "pending" and (meta := R.finished(out, t)) is not None:
                rows[t.key] = done_row(t, meta)
        ordered = [rows[t.key] for t in trials]
        R.write_results(out, ordered, header)
        page.write(out, ordered, header)
        if started:
            import ray

            ray.shutdown()
        runner.remove_scratch(folder)  # what the workers ray.shutdown() stopped left behind
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("done", "failed")}
    return {"trials": len(trials), **counts, "resumed": resumed, "executed": executed, "results": str(out / "results.json")}


def _version() -> str:
    import gencompress

    return gencompress.__version__
