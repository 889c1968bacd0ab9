"""`gencompress sweep` against a serial loop of `compress`: the four zoo models x 6 configurations.

Three ways to run the same 24 trials, each in its own child process, one after another (with
``--repeats 2`` the second round runs in reverse order, so a load change on this shared machine
hits every variant):
  serial   one Python process calling gencompress.compress for each trial in turn (the cheapest
           serial loop: imports paid once)
  local    `gencompress sweep` on a local Ray (all cores, started by the sweep)
  cluster  the same sweep on a two-node ray.cluster_utils.Cluster on this machine (1 CPU each)
Reported per variant: wall time, its ratio to serial's, Ray overhead per trial (the CPU-slot
seconds not spent inside compress: (wall x slots - sum of in-task seconds) / trials), peak memory
(sum of RSS over the child's process tree, sampled every 0.25 s), the load average (1 min, before
and after), and how the sweep's latency figures (float p50 / compressed p50 per batch) agree with
the serial run's (median and max |log ratio| over trials). Then a worked estimate of a 100-model
x 12-configuration nightly on N nodes from the measured per-trial costs.

    python benchmarks/sweep.py [--distill 200] [--runs 20] [--samples 64] [--repeats 1] [--variants serial,local,cluster]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODELS = ["dcgan", "vae", "rvae", "cgan"]


def configs(distill: int) -> list[dict]:
    return [
        {"objective": "size"},
        {"objective": "size", "sparsity": 0.5},
        {"objective": "size", "sparsity": 0.5, "distill": distill},
        {"objective": "size", "mode": "weight-only"},
        {"objective": "size", "mode": "weight-only", "sparsity": 0.5, "distill": distill},
        {"mode": "fp16"},
    ]


SERIAL = """
import json, sys, time
from pathlib import Path
import gencompress
from gencompress.sweeps.spec import load_spec
from gencompress.sweeps.runner import _compress_kwargs
spec, out = sys.argv[1], Path(sys.argv[2])
for trial in load_spec(spec):
    start = time.perf_counter()
    gencompress.compress(**_compress_kwargs(trial, out / trial.key[:16], bench=trial.options["bench"]))
    (out / trial.key[:16] / "seconds").write_text(str(time.perf_counter() - start))
"""

CLUSTER = """
import sys
from ray.cluster_utils import Cluster
import gencompress
node = dict(num_cpus=1, resources={"gencompress_timing": 1}, object_store_memory=200 << 20)
c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
c.add_node(**node)
c.wait_for_nodes()
try:
    gencompress.sweep(sys.argv[1], sys.argv[2], address=c.address)
finally:
    import ray
    ray.shutdown()
    c.shutdown()
"""


def tree_rss(pid: int) -> int:
    """Sum of RSS over ``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_child(cmd: list[str]) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall, "peak_mb": peak[0] / 2**20, "load": f"{load:.1f}-{os.getloadavg()[0]:.1f}"}


def speedups(report: dict) -> dict:
    return {f"b{r['batch']}": r["speedup"] for r in (report.get("latency") or {}).get("results") or []}


def agreement(mine: dict, ref: dict) -> dict:
    """How far one run's speedups are from another's, per trial and batch: abs(log ratio)."""
    logs = [abs(math.log(mine[k][b] / ref[k][b])) for k in ref if k in mine for b in ref[k] if b in mine[k]]
    return {"median_abs_log": statistics.median(logs), "max_abs_log": max(logs), "pairs": len(logs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", type=int, default=200)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--variants", default="serial,local,cluster")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import yaml

    bin_dir = Path(sys.executable).parent
    cpus = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="gencompress-sweep-bench-"))
    spec = work / "spec.yaml"
    spec.write_text(yaml.safe_dump({"models": MODELS, "configs": configs(args.distill),
                                    "options": {"samples": args.samples, "runs": args.runs, "batches": [1, 64]}}))
    variants = args.variants.split(",")
    rows, latency = [], {}
    for rep in range(args.repeats):
        for name in (variants if rep % 2 == 0 else variants[::-1]):
            out = work / f"{name}-{rep}"
            cmd = {"serial": [sys.executable, "-c", SERIAL, str(spec), str(out)],
                   "local": [str(bin_dir / "gencompress"), "sweep", str(spec), str(out)],
                   "cluster": [sys.executable, "-c", CLUSTER, str(spec), str(out)]}[name]
            result = run_child(cmd)
            if name == "serial":
                task_s = [float(p.read_text()) for p in out.glob("*/seconds")]
                reports = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/report.json")}
                slots = 1
            else:
                metas = [json.loads(p.read_text()) for p in out.glob("trials/*/*/trial.json")]
                task_s = [m["build_seconds"] + (m["time_seconds"] or 0) for m in metas]
                reports = {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/*/report.json")}
                slots = cpus if name == "local" else 2
                result["build_s_mean"] = statistics.mean(m["build_seconds"] for m in metas)
                result["time_s_mean"] = statistics.mean(m["time_seconds"] or 0 for m in metas)
            latency[(name, rep)] = {k: speedups(r) for k, r in reports.items()}
            result.update(variant=name, repeat=rep, trials=len(reports), task_s_sum=sum(task_s),
                          overhead_s_per_trial=(result["wall_s"] * slots - sum(task_s)) / max(len(reports), 1))
            rows.append(result)
            print(f"{name:8s} rep {rep}: {result['wall_s']:7.1f} s wall, {result['trials']} trials, peak {result['peak_mb']:6.0f} MB, "
                  f"load {result['load']}", file=sys.stderr)
    for row in rows:
        serial = [r["wall_s"] for r in rows if r["variant"] == "serial" and r["repeat"] == row["repeat"]]
        row["vs_serial"] = row["wall_s"] / serial[0] if serial else None
        ref = latency.get(("serial", row["repeat"]))
        mine = latency[(row["variant"], row["repeat"])]
        if ref and row["variant"] != "serial":
            row["latency_agreement"] = agreement(mine, ref)
    print("| variant | trials | wall s | x serial | Ray overhead s/trial | peak MB | speedup vs serial's: median, max abs(log ratio) | load 1-min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        agree = r.get("latency_agreement")
        agree_s = f"{agree['median_abs_log']:.3f}, {agree['max_abs_log']:.3f} ({agree['pairs']} pairs)" if agree else "-"
        print(f"| {r['variant']} (rep {r['repeat']}) | {r['trials']} | {r['wall_s']:.1f} | {r['vs_serial'] or float('nan'):.2f} | "
              f"{r['overhead_s_per_trial']:.2f} | {r['peak_mb']:.0f} | {agree_s} | {r['load']} |")
    if ("serial", 1) in latency:  # the noise floor: the serial loop against itself
        floor = agreement(latency[("serial", 1)], latency[("serial", 0)])
        print(f"\nserial rep 1 vs serial rep 0 (the noise the agreement columns are judged against): median {floor['median_abs_log']:.3f}, "
              f"max {floor['max_abs_log']:.3f} abs(log ratio) over {floor['pairs']} pairs")
    sweeps = [r for r in rows if r["variant"] != "serial"]
    if sweeps:  # the nightly estimate from the measured per-trial costs
        build = statistics.mean(r["build_s_mean"] for r in sweeps)
        timing = statistics.mean(r["time_s_mean"] for r in sweeps)
        overhead = statistics.mean(max(r["overhead_s_per_trial"], 0) for r in sweeps)
        trials = 100 * 12
        print(f"\nnightly estimate, 100 models x 12 configurations = {trials} trials; measured per trial: build {build:.1f} s "
              f"(1 CPU), timing {timing:.1f} s (a whole node), Ray overhead {overhead:.1f} CPU-s")
        print("| nodes (2 cores each) | builds h | timings h | total h |")
        print("|---|---|---|---|")
        for n in (1, 2, 4, 8, 16):
            b = trials * (build + overhead) / (n * 2) / 3600
            t = trials * timing / n / 3600
            print(f"| {n} | {b:.2f} | {t:.2f} | {b + t:.2f} |")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    print(f"(work folder: {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
