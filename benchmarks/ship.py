"""What shipping the int8 zoo costs and how fast it runs: bundle size, .ort size, operators in the
reduced build, and batch-1 latency in onnxruntime CPU (1 and 2 intra-op threads, spinning off)
against onnxruntime-web (wasm, 1 thread) in headless Chromium.

Each model is exported, quantized (static int8, gencompress.quantize defaults) and shipped. Then, for
``--rounds`` rounds: the two CPU sessions are timed interleaved in this process (``--runs`` runs each),
then the bundle's page runs in Chromium with ``?runs=RUNS`` (its ``ms_per_run``: the median of RUNS
timed batch-1 runs after 3 warm-up runs; the browser's clock is 0.1 ms coarse). Means are printed
beside the medians: on a loaded machine they show the preemption outliers. Medians over rounds.
The browser is a separate process, so CPU and wasm are alternated round by round, not run by run.

    python benchmarks/ship.py [--models dcgan,vae,rvae,cgan] [--rounds 3] [--runs 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path


def ship_model(name: str, folder: Path) -> Path:
    import gencompress
    from gencompress.exporter.export import export

    export(name, folder / f"{name}.float.onnx")
    gencompress.quantize(folder / f"{name}.float.onnx", folder / name / "model.onnx")
    gencompress.ship(folder / name / "model.onnx", folder / name / "ship")
    return folder / name / "ship"


def measure(name: str, bundle: Path, rounds: int, runs: int, profile: Path) -> dict:
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model
    from gencompress.runtime_check.latency import percentiles, time_interleaved
    from gencompress.runtime_check.sessions import make_session
    from gencompress.ship import browser

    manifest = json.loads((bundle / "manifest.json").read_text())
    model = bundle / "model.onnx"
    feeds = sample_inputs(specs_of_model(load_model(model)), 1, 0)  # = the page's timed sample (latents.bin[0])
    sessions = {"cpu1": make_session(model, threads=1), "cpu2": make_session(model, threads=2)}
    cpu = {"cpu1": [], "cpu2": []}
    cpu_mean = {"cpu1": [], "cpu2": []}
    wasm, wasm_mean = [], []
    with browser.serve(bundle / "web") as base:
        for r in range(rounds):
            times = time_interleaved(sessions, feeds, runs=runs, warmup=20)
            for k in sessions:
                stats = percentiles(times[k])
                cpu[k].append(stats["p50_ms"])
                cpu_mean[k].append(stats["mean_ms"])
            page = browser.run_page(f"{base}index.html?runs={runs}", profile / f"{name}-{r}")
            if "error" in page:
                raise SystemExit(f"{name}: the page failed: {page['error']}")
            wasm.append(page["ms_per_run"])
            wasm_mean.append(page["mean_ms"])
    files = manifest["files"]
    web_runtime = sum(f["bytes"] for n, f in files.items() if n.startswith("web/ort"))
    med = statistics.median
    return {
        "model": name,
        "bundle_bytes": sum(f["bytes"] for f in files.values()) + (bundle / "manifest.json").stat().st_size,
        "web_runtime_bytes": web_runtime,
        "onnx_bytes": files["model.onnx"]["bytes"],
        "ort_bytes": files["model.ort"]["bytes"],
        "operators": manifest["targets"]["ort"]["operator_count"],
        "cpu1_p50_ms": med(cpu["cpu1"]), "cpu2_p50_ms": med(cpu["cpu2"]),
        "cpu1_mean_ms": med(cpu_mean["cpu1"]), "cpu2_mean_ms": med(cpu_mean["cpu2"]),
        "wasm1_p50_ms": med(wasm), "wasm1_mean_ms": med(wasm_mean),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dcgan,vae,rvae,cgan")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import onnxruntime

    from gencompress.output import table
    from gencompress.ship.web import ORT_WEB_VERSION

    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"{name}: export, quantize, ship ...", file=sys.stderr)
            bundle = ship_model(name, tmp)
            rows.append(measure(name, bundle, args.rounds, args.runs, tmp / "profiles"))
    load_end = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"rows": rows, "load_average": [load_start, load_end]}, indent=2))
        return 0
    print(f"onnxruntime {onnxruntime.__version__} CPU vs onnxruntime-web {ORT_WEB_VERSION} (wasm, 1 thread, headless Chromium) | "
          f"{os.cpu_count()} logical CPUs | load avg {load_start:.2f} at start, {load_end:.2f} at end")
    print(f"int8 static QDQ zoo models, batch 1; medians over {args.rounds} rounds of {args.runs} runs; "
          "ms per run: median (mean); CPU: intra-op spinning off\n")
    headers = ["model", "bundle MB", "web runtime MB", ".onnx KB", ".ort KB", "ops", "CPU 1t ms", "CPU 2t ms", "wasm 1t ms", "wasm / CPU 1t (median)"]
    body = [[r["model"], f"{r['bundle_bytes'] / 1e6:.2f}", f"{r['web_runtime_bytes'] / 1e6:.2f}", f"{r['onnx_bytes'] / 1e3:.0f}",
             f"{r['ort_bytes'] / 1e3:.0f}", r["operators"],
             f"{r['cpu1_p50_ms']:.3f} ({r['cpu1_mean_ms']:.3f})", f"{r['cpu2_p50_ms']:.3f} ({r['cpu2_mean_ms']:.3f})",
             f"{r['wasm1_p50_ms']:.2f} ({r['wasm1_mean_ms']:.2f})", f"{r['wasm1_p50_ms'] / r['cpu1_p50_ms']:.1f}x"] for r in rows]
    print(table(headers, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
