"""Is the default compressed model ever slower than float? Every zoo model and the standard DCGAN,
float vs ours at each --objective vs onnxruntime's quantize_static, in one interleaved run.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/objective_speed.py                   # zoo + standard DCGAN
    .venv/bin/python benchmarks/objective_speed.py --models vae rvae --rounds 60 --json

Models per family, all from the same exported float graph:
  float         the export as is
  ort-qdq       onnxruntime.quantization.quantize_static (QDQ, per-channel int8, uint8 activations,
                MinMax, our default calibration latents)
  balanced      gencompress.quantize default: per-layer int8 only where timed faster (speed_plan)
  speed         --objective speed
  size          --objective size (every layer int8, untimed: the pre-objective default)
  target40      gencompress compress's --target-psnr 40 --objective speed search (verbs/target_search.py)
Latency as benchmarks/int8_speed.py: CPU EP, 2 intra-op threads, spinning off, every model of a
family timed interleaved in one process (A B C ..., ... C B A), batch 1 slots of 10 runs; speed =
float p50 / model p50. The objectives' own decisions were timed the same way, minutes earlier, on
the same shared machine: a model chosen as "not slower" can read 0.9x here when the load moves.
PSNR vs float on 256 held-back seeded latents (peak = nominal output range).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_speed import (  # noqa: E402  (same timing, sessions and quantize_static settings)
    BATCHES, EVAL_SIZE, RUNS_PER_SLOT, calibration_feeds, export_standard, machine, machine_line, measure_models, ort_quantize,
)

ZOO_NAMES = ("dcgan", "vae", "rvae", "cgan")
OBJECTIVES = ("balanced", "speed", "size")
TARGET_PSNR = 40.0
DONE = {"default_speed": 0.95, "default_size": 0.30}


def export_zoo(name: str, folder: Path) -> tuple[Path, float]:
    from gencompress.exporter.export import export
    from gencompress.models import ZOO

    path = folder / f"{name}.onnx"
    export(name, path)
    return path, ZOO[name].output_range


def measure(title: str, float_path: Path, peak: float, folder: Path, rounds: int, profile: bool) -> dict:
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.target_search import search_target

    stem = float_path.stem
    paths = {"float": float_path, "ort-qdq": folder / f"{stem}_ort.onnx"}
    ort_quantize(float_path, paths["ort-qdq"], calibration_feeds(float_path))
    plans = {}
    for objective in OBJECTIVES:
        paths[objective] = folder / f"{stem}_{objective}.onnx"
        report = quantize(float_path, paths[objective], objective=objective)
        plans[objective] = (report.get("speed_plan") or {}).get("layers")
    search = search_target(float_path, folder / f"{stem}_search", target=TARGET_PSNR, objective="speed")
    paths["target40"] = Path(search["chosen"])

    rows, kernels = measure_models(paths, peak, rounds, folder, profiled=("float", "balanced", "speed") if profile else ())
    for row in rows.values():
        row["size_ratio"] = row["bytes"] / rows["float"]["bytes"]
        for batch in BATCHES:
            row[f"b{batch}"]["speed"] = rows["float"][f"b{batch}"]["p50_ms"] / row[f"b{batch}"]["p50_ms"]
    default = rows["balanced"]
    done = {
        f"default >= {DONE['default_speed']}x float at b1 and b64": all(default[f"b{b}"]["speed"] >= DONE["default_speed"] for b in BATCHES),
        f"default <= {DONE['default_size']}x size": default["size_ratio"] <= DONE["default_size"],
        f"default >= {TARGET_PSNR:g} dB": default["psnr_db"] is None or default["psnr_db"] >= TARGET_PSNR,
        "target40 meets 40 dB": search["met"],
        "target40 at least as fast as default (b1, b64)": all(rows["target40"][f"b{b}"]["speed"] >= default[f"b{b}"]["speed"] * 0.95 for b in BATCHES),
    }
    return {"model": title, "rows": rows, "kernels": kernels, "plans": plans, "search": search["message"], "done": done}


def print_report(facts: dict, results: list[dict], rounds: int) -> None:
    print(machine_line(facts))
    print(f"{rounds} interleaved rounds (batch 1: x{RUNS_PER_SLOT[1]} runs per slot); speed = float p50 / model p50; PSNR vs float on {EVAL_SIZE} held-back latents")
    for res in results:
        print(f"\n{res['model']}")
        print(f"  {'model':9s} {'p50 b1 ms':>9s} {'p50 b64 ms':>10s} {'speed b1':>8s} {'speed b64':>9s} {'PSNR dB':>8s} {'size':>6s}")
        for name, r in res["rows"].items():
            db = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            print(f"  {name:9s} {r['b1']['p50_ms']:9.3f} {r['b64']['p50_ms']:10.2f} {r['b1']['speed']:7.2f}x {r['b64']['speed']:8.2f}x {db:>8s} {r['size_ratio']:6.3f}")
        for objective in ("balanced", "speed"):
            layers = res["plans"].get(objective) or []
            print(f"  {objective} plan: " + ("; ".join(f"{l['node']} {l['choice']}" for l in layers) or "-"))
        print(f"  target40: {res['search']}")
        for name, per_batch in res["kernels"].items():
            for b, ops in per_batch.items():
                print(f"    kernels {name:8s} {b:>3s}: " + ", ".join(f"{op} ×{n} {share:.0%}" for op, n, share in ops))
        print("  done: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in res["done"].items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds per batch size (default 40)")
    parser.add_argument("--models", nargs="+", default=[*ZOO_NAMES, "standard"], choices=[*ZOO_NAMES, "standard"])
    parser.add_argument("--profile", action="store_true", help="also print the kernels onnxruntime ran (float, balanced, speed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    facts = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="gc-objective-") as tmp:
        folder = Path(tmp)
        for name in args.models:
            if name == "standard":
                path, peak = export_standard(folder)
                title = "standard DCGAN (latent 100, ngf 64, 3x64x64)"
            else:
                path, peak = export_zoo(name, folder)
                title = f"zoo {name}"
            results.append(measure(title, path, peak, folder, args.rounds, args.profile))
            print(f"[{title}: done, load avg {os.getloadavg()[0]:.2f}]", file=sys.stderr)
            if not args.json:  # each family as it finishes: the standard DCGAN alone takes minutes on a loaded machine
                print_report({**facts, "load_avg_end": list(os.getloadavg())}, results[-1:], args.rounds)
                sys.stdout.flush()
    facts["load_avg_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps({"machine": facts, "rounds": args.rounds, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
