"""Trial folders and the sweep's results.json / results.csv.

    OUT_DIR/trials/<model>/<key16>/   one compress run: model.onnx, reference.onnx, report.json,
                                      report.html, and trial.json (model, configuration, options,
                                      tool version, key, where and how long it ran)
A trial folder is written under a hidden temp name beside its final one and renamed when
complete, so a folder that exists is a finished trial; that is what a rerun resumes from.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

TRIALS = "trials"
TEMP_PREFIX = ".partial-"


def trial_path(out: Path, trial) -> Path:
    return out / TRIALS / trial.folder


def finished(out: Path, trial) -> dict | None:
    """The trial.json of a finished trial with this key, else None."""
    path = trial_path(out, trial) / "trial.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("key") == trial.key else None


def clear_partials(out: Path) -> None:
    """Temp folders left by a driver that was killed outright (SIGKILL) between writing and renaming."""
    for folder in (out / TRIALS).glob(f"*/{TEMP_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def write_trial(out: Path, trial, built: dict, timed: dict | None) -> dict:
    """Write one finished trial's folder (temp folder, then rename); returns its trial.json."""
    import gencompress

    final = trial_path(out, trial)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{trial.key[:16]}-", dir=final.parent))
    try:
        for name, data in built["files"].items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        if timed is not None:
            _merge_latency(tmp, built, timed)
        meta = {"key": trial.key, "version": gencompress.__version__, "model": trial.model, "config": trial.config,
                "options": trial.options, "label": trial.label, "build_seconds": round(built["build_seconds"], 3),
                "time_seconds": round(timed["time_seconds"], 3) if timed else None, "build_node": built["node"], "build_pid": built["pid"],
                "timing_node": timed["node"] if timed else None}
        (tmp / "trial.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # a stale folder of the same key (e.g. written by hand): replaced whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _merge_latency(folder: Path, built: dict, timed: dict) -> None:
    """The report compress would have written with bench on: its latency and the slow-model warning.
    The fidelity is the build's own, with its sample previews, so report.html shows the samples
    as compress's does."""
    import onnx

    from gencompress.result_warnings import compression_warnings
    from gencompress.runtime_check.report_html import write_report

    report = json.loads((folder / "report.json").read_text())
    report["fidelity"] = built["fidelity"]
    report["latency"] = timed["latency"]
    candidate = onnx.load_model_from_string(built["files"]["model.onnx"])
    # ratio 0: the size warning is already in the report; only the latency-dependent one is added
    report["warnings"] = [*report.get("warnings", []), *compression_warnings(candidate, 0.0, latency=timed["latency"]["results"])]
    write_report(folder, report)


def row(trial, meta: dict | None, report: dict | None, *, status: str, error: str | None = None) -> dict:
    """One results row: the trial's identity and every figure its compress report has."""
    r = {"model": trial.model["name"], "config": trial.label, "status": status, "error": error, "key": trial.key,
         "folder": f"{TRIALS}/{trial.folder}" if status == "done" else None}
    r.update({f"config.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in trial.config.items()})
    if meta:
        r["build_seconds"], r["time_seconds"] = meta.get("build_seconds"), meta.get("time_seconds")
    if not report:
        return r
    sizes = report.get("sizes") or {}
    r["bytes"] = (sizes.get("candidate") or {}).get("bytes")
    r["reference_bytes"] = (sizes.get("reference") or {}).get("bytes")
    r["deflate_bytes"] = (sizes.get("candidate") or {}).get("deflate_bytes")
    r["ratio"], r["deflate_ratio"] = sizes.get("ratio"), sizes.get("deflate_ratio")
    for out in (report.get("fidelity") or {}).get("outputs") or []:
        for k, v in out.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("peak",):
                r[f"{out['name']}.{k}"] = v
    first = ((report.get("fidelity") or {}).get("outputs") or [{}])[0]
    r["psnr_db"] = first.get("psnr_db")
    for res in (report.get("latency") or {}).get("results") or []:
        tag = f"b{res['batch']}_t{res['threads']}"
        for who in ("model", "reference"):
            for k in ("p50_ms", "p90_ms", "p99_ms"):
                if isinstance(res.get(who), dict) and res[who].get(k) is not None:
                    r[f"{tag}.{who}.{k}"] = res[who][k]
        for k in ("ratio", "speedup"):
            if res.get(k) is not None:
                r[f"{tag}.{k}"] = res[k]
    r["warnings"] = " | ".join(report.get("warnings") or [])
    return r


def write_results(out: Path, rows: list[dict], header: dict) -> None:
    """results.json ({header..., trials: rows}) and results.csv (one row per trial), each atomic."""
    from gencompress.onnx_io import atomic_path

    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps({**header, "trials": rows}, indent=2) + "\n")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out / "results.csv") as tmp:
        tmp.write_text(buf.getvalue())
