"""What distillation wins back after pruning (and quantization) on the zoo.

Each row is ONE `gencompress.compress` run on the exported zoo model: cleanup → prune →
distill (against the float model; quantization-aware when a quantization follows) → int8
rewrites + static int8 QDQ, or int4 weight-only, or nothing. Columns:

- raw dB: the pruned student against float, before distillation (the distill step measures it);
- distilled dB: the float student after distillation;
- final dB: the compressed model against float (held-back latents, as `compress` reports it);
- size: the compressed file over the float file; b1/b64: float p50 / compressed p50 latency,
  interleaved in one process, 2 intra-op threads, spinning off;
- distill s: the distill step's training time; load 1-min: the load average before and after the row
  (the machine is shared: seconds grow with it);
- lr, best step: the learning rate the step picked and the step whose weights it kept (the best
  evaluation on its held-out set).

    python benchmarks/distill.py --families [--steps 2000]   (the families: benchmarks/distill_families.py)
    python benchmarks/distill.py --step-cost [--batches 64,128] [--steps 100] [--rounds 3]
                                 (ms per training step of dcgan unstructured 50%, batches interleaved)
    python benchmarks/distill.py [--models dcgan,vae,rvae,cgan] [--settings u50,u75,nm,ch25,ch50]
                                 [--quant none,int8] [--steps 2000] [--runs 50] [--objective balanced] [--json]

Settings: u50/u75 unstructured 50/75% (per weight), u50g unstructured 50% with one global threshold, nm 2:4, ch25/ch50 channel 25/50%, dense (no pruning).
Quant: none, int8 (static QDQ with the int8 rewrites), int4 (weight-only, blocks of 64).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "u50": ("unstructured 50%", {"sparsity": 0.5, "prune_mode": "unstructured"}),
    "u50g": ("unstructured 50%, global", {"sparsity": 0.5, "prune_mode": "unstructured", "prune_scope": "global"}),
    "u75": ("unstructured 75%", {"sparsity": 0.75, "prune_mode": "unstructured"}),
    "nm": ("2:4", {"prune_mode": "nm", "nm": "2:4"}),
    "ch25": ("channel 25%", {"sparsity": 0.25, "prune_mode": "channel"}),
    "ch50": ("channel 50%", {"sparsity": 0.5, "prune_mode": "channel"}),
    "dense": ("dense", {}),
}
QUANT = {"none": {"mode": "none"}, "int8": {"mode": "static"}, "int4": {"mode": "weight-only", "bits": 4}}


def run_one(model: Path, setting: str, quant: str, steps: int, runs: int, folder: Path, objective: str = "balanced") -> dict:
    from gencompress.verbs.compress import compress

    flags = {**SETTINGS[setting][1], **QUANT[quant], "distill": steps, "objective": objective}
    out = folder / f"{model.stem}-{setting}-{quant}"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    report = compress(str(model), out, flags=flags, bench=True, batches=(1, 64), threads=(2,), runs=runs)
    total = time.perf_counter() - start
    step = next(p for p in report["passes"] if p["pass"] == "distill")["summary"]
    lat = {r["batch"]: r["speedup"] for r in report["latency"]["results"]}
    return {
        "model": model.stem,
        "setting": SETTINGS[setting][0],
        "quant": quant if objective == "balanced" or quant == "none" else f"{quant} ({objective})",
        "steps": steps,
        "raw_db": step["psnr_before_db"],
        "distilled_db": step["psnr_after_db"],
        "final_db": report["fidelity"]["outputs"][0]["psnr_db"],
        "size": report["sizes"]["ratio"],
        "speed_b1": lat.get(1),
        "speed_b64": lat.get(64),
        "distill_s": step["wall_s"],
        "best_step": step.get("best_step"),
        "lr": step.get("lr"),
        "load": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}",
        "total_s": round(total, 1),
    }


def step_cost(argv) -> int:
    """Milliseconds per distillation step (int8-aware, as compress trains) of the zoo dcgan pruned 50%
    with one global threshold, per batch size: rounds of ``--steps`` steps, the batch sizes interleaved
    in one process, the median round per batch and its ratio to the first."""
    import statistics

    from gencompress.distillation.train import Batches, train
    from gencompress.exporter.export import export
    from gencompress.inputs import specs_of_model
    from gencompress.onnx_io import load_ir, load_model
    from gencompress.verbs.recipe import run_recipe

    parser = argparse.ArgumentParser(description=step_cost.__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dcgan.onnx"
        export("dcgan", path)
        teacher = load_model(path)
        pruned, _ = run_recipe(load_ir(path), [{"pass": "cleanup"}, {"pass": "magnitude_prune", "options": {"sparsity": 0.5, "scope": "global"}}])
    specs = specs_of_model(teacher)
    times = {b: [] for b in batches}
    load_start = os.getloadavg()[0]
    for r in range(args.rounds):
        for b in batches:
            student = pruned.clone()
            info = train(teacher, student, Batches(specs, b, r), steps=args.steps, lr=2e-3, seed=r, threads=1, quantize="int8", keep_best=False)
            times[b].append(1000 * info["wall_s"] / args.steps)
    base = statistics.median(times[batches[0]])
    for b in batches:
        ms = statistics.median(times[b])
        print(f"batch {b}: {ms:.1f} ms/step (rounds {', '.join(f'{t:.1f}' for t in times[b])}), {ms / base:.2f}x batch {batches[0]}; "
              f"2000 steps ~ {2 * ms:.0f} s")
    print(f"load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (2 cores, shared); 1 torch thread, "
          "the teacher in onnxruntime on a second thread")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--step-cost" in argv:
        return step_cost([a for a in argv if a != "--step-cost"])
    if "--families" in argv:  # the generator families users bring: benchmarks/distill_families.py
        sys.path.insert(0, str(Path(__file__).parent))
        from distill_families import main as families_main

        return families_main([a for a in argv if a != "--families"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dcgan,vae,rvae,cgan")
    parser.add_argument("--settings", default="u50,u75,nm,ch25,ch50")
    parser.add_argument("--quant", default="none,int8")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model and batch size")
    parser.add_argument("--objective", default="balanced", help="compress --objective: balanced (default), speed or size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from gencompress.exporter.export import export
    from gencompress.output import table

    models = [m for m in args.models.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    quants = [q for q in args.quant.split(",") if q]
    for s in settings:
        if s not in SETTINGS:
            parser.error(f"unknown setting {s!r}; one of {', '.join(SETTINGS)}")
    for q in quants:
        if q not in QUANT:
            parser.error(f"unknown quant {q!r}; one of {', '.join(QUANT)}")
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in models:
            model = folder / f"{name}.onnx"
            export(name, model)
            for s in settings:
                for q in quants:
                    row = run_one(model, s, q, args.steps, args.runs, folder, args.objective)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"rows": rows, "load_start": load_start, "load_end": load_end}, indent=2))
        return 0
    print(f"load average {load_start:.2f} at start, {load_end:.2f} at end (2 cores, shared); distill on 1 torch thread, "
          f"timing with 2 onnxruntime threads, interleaved; PSNR vs float on 256 held-back latents")
    headers = ["model", "setting", "quant", "steps", "lr", "best step", "raw dB", "distilled dB", "final dB", "size", "speed b1", "speed b64",
               "distill s", "load 1-min"]
    keys = ["model", "setting", "quant", "steps", "lr", "best_step", "raw_db", "distilled_db", "final_db", "size", "speed_b1", "speed_b64",
            "distill_s", "load"]
    print(table(headers, [[_fmt(r[k]) for k in keys] for r in rows]))
    return 0


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3f}" if abs(v) >= 0.01 else f"{v:.2g}"
    return v


if __name__ == "__main__":
    sys.exit(main())
