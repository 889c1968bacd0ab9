"""Does int8 make the standard DCGAN faster? Float vs onnxruntime's quantize_static vs ours, in one process.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/int8_speed.py                 # standard DCGAN (DESIGN.md speed model)
    .venv/bin/python benchmarks/int8_speed.py --rounds 60 --zoo   # + the zoo dcgan; --json: machine-readable

Models, all from the same exported float graph:
  float      the export as is (ConvTranspose layers)
  ort-qdq    onnxruntime.quantization.quantize_static: QDQ, int8 per-channel weights, uint8
             activations, MinMax, on the same seeded calibration latents as ours
  ours       gencompress quantize, default settings plus rewrite=True (ConvTranspose → Gemm /
             Conv + DepthToSpace, then int8 QDQ)
Latency (DESIGN.md, Metrics): CPU EP, 2 intra-op threads, intra/inter-op spinning off, warm-up,
then rounds run interleaved (A B C, C B A, ...); at batch 1 each slot is 10 consecutive timed runs.
p50 over all timed runs; speed = float p50 / model p50. PSNR against float on 256 held-back
seeded latents (peak 2.0, tanh). Kernels: op types onnxruntime executed, from a separate
profiling session (node count, share of kernel time).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = 2
BATCHES = (1, 64)
RUNS_PER_SLOT = {1: 10, 64: 1}
WARMUP_RUNS = 3
CALIB_SEED = 0  # gencompress quantize's default seed (its calibration latents)
EVAL_SEED, EVAL_SIZE = 20_241, 256  # held back: not the calibration seed, not the export seeds
TARGET_SPEED = {1: 1.3, 64: 1.5}
TARGET_PSNR = 40.0


# ---- models -----------------------------------------------------------------------------------


def export_standard(folder: Path) -> tuple[Path, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from standard_dcgan import export_standard_dcgan  # seeded weights, BatchNorm stats from seeded latents

    path = folder / "standard_dcgan.onnx"
    export_standard_dcgan(path)
    return path, 2.0


def export_zoo(folder: Path) -> tuple[Path, float]:
    from gencompress.exporter.export import export
    from gencompress.models import ZOO

    path = folder / "zoo_dcgan.onnx"
    export("dcgan", path)
    return path, ZOO["dcgan"].output_range


def calibration_feeds(float_path: Path) -> dict[str, np.ndarray]:
    """The latents ``gencompress quantize`` calibrates on by default (256 seeded draws, seed 0)."""
    from gencompress.onnx_io import load_model
    from gencompress.runtime_check.calibration import calibration_inputs

    return calibration_inputs(load_model(float_path), seed=CALIB_SEED)


def ort_quantize(float_path: Path, out: Path, feeds: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(feeds.values())))
            self.batches = iter([{k: v[i : i + 64] for k, v in feeds.items()} for i in range(0, n, 64)])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" warnings
    quantize_static(
        str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )


def our_quantize(float_path: Path, out: Path) -> str:
    from gencompress.verbs.quantize import quantize

    # every layer int8, untimed: the quantizer itself, without the speed plan's per-layer choice
    quantize(float_path, out, rewrite=True, objective="size")
    return "gencompress.quantize(rewrite=True, objective='size')"


# ---- onnxruntime ------------------------------------------------------------------------------


def session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(sess, feeds: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)])


def psnr(ref: np.ndarray, out: np.ndarray, peak: float) -> float | None:
    """PSNR in dB; None for identical outputs."""
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(peak * peak / mse)


def time_interleaved(sessions: dict, feed: dict, rounds: int, per_slot: int) -> dict[str, list[float]]:
    """Seconds per run; rounds alternate the order A B C / C B A."""
    names = list(sessions)
    for _ in range(WARMUP_RUNS):
        for name in names:
            sessions[name].run(None, feed)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            s = sessions[name]
            for _ in range(per_slot):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - t0)
    return times


def kernel_profile(path: Path, feed: dict, runs: int, folder: Path) -> list[tuple[str, int, float]]:
    """(op type, nodes, share of kernel time) that onnxruntime executed, most time first.

    Per node the median kernel time over ``runs`` (the first, warm-up run included, does not skew it).
    """
    s = session(path, profile_prefix=str(folder / f"profile_{path.stem}"))
    for _ in range(runs):
        s.run(None, feed)
    profile = Path(s.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(e["dur"])
            op_of[node] = e["args"]["op_name"]
    total = collections.Counter()
    count = collections.Counter()
    for node, durs in per_node.items():
        total[op_of[node]] += float(np.median(durs))
        count[op_of[node]] += 1
    grand = sum(total.values()) or 1.0
    return [(op, count[op], total[op] / grand) for op, _ in total.most_common()]


# ---- one model family -------------------------------------------------------------------------


def measure_models(paths: dict, peak: float, rounds: int, folder: Path, profiled=()) -> tuple[dict, dict]:
    """(per model: bytes, PSNR against ``paths["float"]`` on held-back inputs and p50/p90 per batch
    size, timed interleaved; the kernels onnxruntime ran for the ``profiled`` models)."""
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model

    specs = specs_of_model(load_model(paths["float"]))
    sessions = {name: session(p) for name, p in paths.items()}
    held_back = sample_inputs(specs, EVAL_SIZE, EVAL_SEED)
    outputs = {name: run_all(s, held_back) for name, s in sessions.items()}
    rows = {name: {"bytes": os.path.getsize(p), "psnr_db": psnr(outputs["float"], outputs[name], peak)} for name, p in paths.items()}
    kernels = {}
    for batch in BATCHES:
        feed = sample_inputs(specs, batch, EVAL_SEED + batch)
        times = time_interleaved(sessions, feed, rounds, RUNS_PER_SLOT[batch])
        for name, t in times.items():
            rows[name][f"b{batch}"] = {"p50_ms": 1e3 * float(np.median(t)), "p90_ms": 1e3 * float(np.percentile(t, 90)), "runs": len(t)}
        for name in profiled:
            kernels.setdefault(name, {})[f"b{batch}"] = kernel_profile(paths[name], feed, 6 if batch == 64 else 30, folder)
    return rows, kernels


def measure(title: str, build, folder: Path, rounds: int, targets_apply: bool = True) -> dict:
    float_path, peak = build(folder)
    feeds = calibration_feeds(float_path)
    paths = {"float": float_path, "ort-qdq": folder / f"{float_path.stem}_ort.onnx", "ours": folder / f"{float_path.stem}_ours.onnx"}
    ort_quantize(float_path, paths["ort-qdq"], feeds)
    how = our_quantize(float_path, paths["ours"])

    rows, kernels = measure_models(paths, peak, rounds, folder, profiled=list(paths))
    for name, row in rows.items():
        row["size_ratio"] = row["bytes"] / rows["float"]["bytes"]
        for batch in BATCHES:
            b = f"b{batch}"
            row[b]["speed"] = rows["float"][b]["p50_ms"] / row[b]["p50_ms"]
    ours = rows["ours"]
    targets = {
        **{f"speed_b{b}>={t}": ours[f"b{b}"]["speed"] >= t for b, t in TARGET_SPEED.items()},
        f"psnr>={TARGET_PSNR:g}dB": ours["psnr_db"] is None or ours["psnr_db"] >= TARGET_PSNR,
    }
    return {
        "model": title, "float_file": float_path.name, "ours_via": how, "peak": peak, "rows": rows, "kernels": kernels,
        "targets": targets, "targets_apply": targets_apply,
    }


# ---- report -----------------------------------------------------------------------------------


def machine() -> dict:
    import onnxruntime as ort

    cpu, flags = "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and cpu == "?":
            cpu = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {"onnxruntime": ort.__version__, "cpu": cpu, "isa": isa, "logical_cpus": os.cpu_count(), "intra_op_threads": THREADS, "load_avg": list(os.getloadavg())}


def machine_line(facts: dict) -> str:
    """The first line of every speed benchmark's report: runtime, CPU, threads, load average."""
    return (f"onnxruntime {facts['onnxruntime']} | CPU {facts['cpu']} ({', '.join(facts['isa'])}), {facts['logical_cpus']} logical CPUs"
            f" | {facts['intra_op_threads']} intra-op threads, spinning off | load avg {facts['load_avg'][0]:.2f} at start, {facts['load_avg_end'][0]:.2f} at end")


def print_report(facts: dict, results: list[dict], rounds: int) -> None:
    print(machine_line(facts))
    print(f"{rounds} interleaved rounds (batch 1: x{RUNS_PER_SLOT[1]} runs per slot); speed = float p50 / model p50; PSNR vs float on {EVAL_SIZE} held-back latents")
    for res in results:
        print(f"\n{res['model']} ({res['float_file']}; ours = {res['ours_via']}; PSNR peak {res['peak']:g})")
        print(f"  {'model':8s} {'p50 b1 ms':>9s} {'p50 b64 ms':>10s} {'speed b1':>8s} {'speed b64':>9s} {'PSNR dB':>8s} {'size':>6s}")
        for name, r in res["rows"].items():
            db = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            print(
                f"  {name:8s} {r['b1']['p50_ms']:9.2f} {r['b64']['p50_ms']:10.1f} {r['b1']['speed']:7.2f}x {r['b64']['speed']:8.2f}x"
                f" {db:>8s} {r['size_ratio']:6.3f}"
            )
        print("  kernels onnxruntime executed (nodes, share of kernel time):")
        for name, per_batch in res["kernels"].items():
            for b, ops in per_batch.items():
                text = ", ".join(f"{op} ×{n} {share:.0%}" for op, n, share in ops)
                print(f"    {name:8s} {b:>3s}: {text}")
        verdict = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in res["targets"].items())
        print(f"  targets (ours{'' if res['targets_apply'] else '; the standard model’s targets, for reference only'}): {verdict}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds per batch size (default 40)")
    parser.add_argument("--zoo", action="store_true", help="also measure the zoo dcgan (trained checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be positive")

    facts = machine()
    with tempfile.TemporaryDirectory(prefix="gc-int8-speed-") as tmp:
        folder = Path(tmp)
        results = [measure("standard DCGAN (latent 100, ngf 64, 3x64x64)", export_standard, folder, args.rounds)]
        if args.zoo:
            results.append(measure("zoo dcgan (latent 100, ngf 32, 1x16x16)", export_zoo, folder, args.rounds, targets_apply=False))
    facts["load_avg_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps({"machine": facts, "rounds": args.rounds, "results": results}, indent=1))
    else:
        print_report(facts, results, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
