"""What shipping the int8 zoo costs and how fast the browser runs it: bundle size by web backend,
and latency in onnxruntime CPU (1, 2, 4 intra-op threads, spinning off) against onnxruntime-web in
headless Chromium: wasm on 1, 2, 4 threads (page cross-origin isolated by its service worker) and
WebGPU (SwiftShader's Vulkan adapter: a CPU, not a GPU), at batch 1 and 16.

Each model is exported, quantized (static int8, gencompress.quantize defaults) and shipped with both
web backends; sizes by backend count the bundle without the other backend's runtime files. Then, for
``--rounds`` rounds: the CPU sessions are timed interleaved in this process (``--runs`` runs each) at
both batches, then the page runs once per configuration with ``?runs=RUNS&batch=B&threads=T``
(its ``ms_per_run``: the median of RUNS timed runs after a first run and 3 warm-up runs, and its
``p10_ms``; the clock has 5 us steps in an isolated page). The page runs web/model.onnx, the bundle's
form for wasm (edge/web_form.py); the CPU runs model.onnx. Medians over rounds; ratios are page / CPU with the same
thread count (WebGPU: / CPU 2 threads). The load average is printed with the timings.

    python benchmarks/ship.py [--models dcgan,vae,rvae,cgan] [--rounds 2] [--runs 100] [--threads 1,2,4] [--json]
    python benchmarks/ship.py --tables-from run.json   # the tables of a --json run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

BATCHES = (1, 16)
WEBGPU_RUNS = 20  # SwiftShader runs a generator in tens of ms: fewer runs keep the benchmark short


def ship_model(name: str, folder: Path) -> Path:
    import gencompress
    from gencompress.exporter.export import export

    export(name, folder / f"{name}.float.onnx")
    gencompress.quantize(folder / f"{name}.float.onnx", folder / name / "model.onnx")
    gencompress.ship(folder / name / "model.onnx", folder / name / "ship", web_backends="wasm,webgpu")
    return folder / name / "ship"


def sizes(manifest: dict) -> dict:
    """Bundle bytes with the wasm build only, the webgpu build only, and both (manifest.json included in none)."""
    from gencompress.edge.web import BACKEND_FILES, shipped_name

    files = manifest["files"]
    runtime = {b: {f"web/{shipped_name(n)}" for n in names} for b, names in BACKEND_FILES.items()}
    total = sum(f["bytes"] for f in files.values())
    out = {"both": total}
    for backend, other in (("wasm", "webgpu"), ("webgpu", "wasm")):
        out[backend] = total - sum(files[n]["bytes"] for n in runtime[other] - runtime[backend])
        out[f"{backend}_runtime"] = sum(files[n]["bytes"] for n in runtime[backend])
    return out


def measure(name: str, bundle: Path, rounds: int, runs: int, threads: list[int], profile: Path) -> dict:
    import numpy as np

    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model
    from gencompress.runtime_check.fidelity import mse, psnr
    from gencompress.runtime_check.latency import percentiles, time_interleaved
    from gencompress.runtime_check.sessions import make_session
    from gencompress.edge import browser

    manifest = json.loads((bundle / "manifest.json").read_text())
    model = bundle / "model.onnx"
    latents = sample_inputs(specs_of_model(load_model(model)), 16, 0)  # = latents.bin, the page's timed samples
    feeds = {b: {k: v[:b] for k, v in latents.items()} for b in BATCHES}
    sessions = {t: make_session(model, threads=t) for t in threads}
    configs = [("wasm", t) for t in threads] + [("webgpu", 2)]
    cpu = {(t, b): [] for t in threads for b in BATCHES}
    page = {(k, t, b): [] for k, t in configs for b in BATCHES}
    page10, cpu10 = {k: [] for k in page}, {k: [] for k in cpu}
    init, info = {}, {}
    out = manifest["outputs"][0]
    want = dict(zip([o.name for o in sessions[threads[0]].get_outputs()], sessions[threads[0]].run(None, latents)))[out["name"]]
    peak = out["nominal_range"] or float(np.ptp(want))
    with browser.serve(bundle / "web") as base:
        for r in range(rounds):
            for b in BATCHES:
                times = time_interleaved({t: sessions[t] for t in threads}, feeds[b], runs=runs, warmup=10)
                for t in threads:
                    cpu[(t, b)].append(percentiles(times[t])["p50_ms"])
                    cpu10[(t, b)].append(1000 * sorted(times[t])[len(times[t]) // 10])
            for backend, t in configs:
                for b in BATCHES:
                    n = runs if backend == "wasm" else min(runs, WEBGPU_RUNS)
                    url = f"{base}index.html?runs={n}&batch={b}&threads={t}&backend={backend}"
                    res = browser.run_page(url, profile / f"{name}-{r}-{backend}-{t}-{b}", webgpu=backend == "webgpu", timeout=600)
                    if "error" in res:
                        raise SystemExit(f"{name}: the page failed ({url}): {res['error']}")
                    key = (backend if res["backend"] == backend else f"{backend}->{res['backend']}", t)
                    if res["threads"] != t and backend == "wasm":
                        raise SystemExit(f"{name}: asked {t} threads, the page ran {res['threads']} ({res['isolation']})")
                    page[(backend, t, b)].append(res["ms_per_run"])
                    page10[(backend, t, b)].append(res["p10_ms"])
                    init.setdefault(f"{backend} {t}t", []).append(res["init_ms"])
                    got = np.asarray(res["outputs"][out["name"]]["data"], np.float32).reshape(want.shape)
                    info[f"{key[0]} {t}t"] = {"psnr_db_vs_cpu": psnr(mse(want, got), peak),
                                              "verify_db": res["verify"]["min_psnr_db"], "isolation": res["isolation"]}
    med = statistics.median
    return {"model": name, "sizes": sizes(manifest), "operators": manifest["targets"]["ort"]["operator_count"],
            "cpu_ms": {f"{t}t b{b}": med(v) for (t, b), v in cpu.items()},
            "page_ms": {f"{k} {t}t b{b}": med(v) for (k, t, b), v in page.items()},
            "cpu_p10_ms": {f"{t}t b{b}": med(v) for (t, b), v in cpu10.items()},
            "page_p10_ms": {f"{k} {t}t b{b}": med(v) for (k, t, b), v in page10.items()},
            "model_form": manifest["targets"]["web"]["model_form"],
            "init_ms": {k: med(v) for k, v in init.items()}, "pages": info}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dcgan,vae,rvae,cgan")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tables-from", metavar="FILE.json", help="print the tables of an earlier --json run")
    args = parser.parse_args(argv)
    if args.tables_from:
        saved = json.loads(Path(args.tables_from).read_text())
        print_tables(saved["rows"], saved["threads"], saved["load_average"], saved["rounds"], saved["runs"], saved["isa"], saved["versions"])
        return 0

    import onnxruntime

    from gencompress.isa import host_isa
    from gencompress.edge.web import ORT_WEB_VERSION

    threads = [int(t) for t in args.threads.split(",")]
    load_start = open("/proc/loadavg").read().split()[:3]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"{name}: export, quantize, ship ...", file=sys.stderr)
            bundle = ship_model(name, tmp)
            print(f"{name}: timing ...", file=sys.stderr)
            rows.append(measure(name, bundle, args.rounds, args.runs, threads, tmp / "profiles"))
    load_end = open("/proc/loadavg").read().split()[:3]
    load = {"start": load_start, "end": load_end}
    versions = {"onnxruntime": onnxruntime.__version__, "onnxruntime-web": ORT_WEB_VERSION, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"rows": rows, "load_average": load, "isa": host_isa(), "threads": threads, "rounds": args.rounds,
                          "runs": args.runs, "versions": versions}, indent=2))
        return 0
    print_tables(rows, threads, load, args.rounds, args.runs, host_isa(), versions)
    return 0


def print_tables(rows: list, threads: list, load: dict, rounds: int, runs: int, isa: str, versions: dict) -> None:
    from gencompress.output import table

    print(f"onnxruntime {versions['onnxruntime']} CPU ({isa}) vs onnxruntime-web {versions['onnxruntime-web']} in headless Chromium | "
          f"{versions['cpus']} logical CPUs | /proc/loadavg {' '.join(load['start'])} at start, {' '.join(load['end'])} at end")
    print(f"int8 static QDQ zoo models; medians over {rounds} rounds of {runs} runs; CPU: intra-op spinning off; "
          "WebGPU: SwiftShader (software Vulkan)\n")
    print(table(["model", "bundle MB wasm", "webgpu", "both", "wasm runtime MB", "webgpu runtime MB", "ops", "page init ms (wasm 2t)"],
                [[r["model"], f"{r['sizes']['wasm'] / 1e6:.2f}", f"{r['sizes']['webgpu'] / 1e6:.2f}", f"{r['sizes']['both'] / 1e6:.2f}",
                  f"{r['sizes']['wasm_runtime'] / 1e6:.2f}", f"{r['sizes']['webgpu_runtime'] / 1e6:.2f}", r["operators"],
                  f"{r['init_ms'].get('wasm 2t', float('nan')):.0f}"] for r in rows]))
    for b in BATCHES:
        headers = ["model", *(f"CPU {t}t" for t in threads), *(f"wasm {t}t" for t in threads), "webgpu",
                   *(f"wasm/CPU {t}t" for t in threads), "webgpu/CPU 2t"]
        body = []
        for r in rows:
            c, w = r["cpu_ms"], r["page_ms"]
            body.append([r["model"], *(f"{c[f'{t}t b{b}']:.3f}" for t in threads), *(f"{w[f'wasm {t}t b{b}']:.3f}" for t in threads),
                         f"{w[f'webgpu 2t b{b}']:.2f}", *(f"{w[f'wasm {t}t b{b}'] / c[f'{t}t b{b}']:.2f}x" for t in threads),
                         f"{w[f'webgpu 2t b{b}'] / c[f'2t b{b}']:.1f}x"])
        print(f"\nbatch {b}: median ms per run")
        print(table(headers, body))
        best = []
        for r in rows:
            c, w = r["cpu_p10_ms"], r["page_p10_ms"]
            ratios = {t: w[f"wasm {t}t b{b}"] / c[f"{t}t b{b}"] for t in threads}
            fastest = min(threads, key=lambda t: w[f"wasm {t}t b{b}"])
            best.append([r["model"], *(f"{c[f'{t}t b{b}']:.3f}" for t in threads), *(f"{w[f'wasm {t}t b{b}']:.3f}" for t in threads),
                         *(f"{ratios[t]:.2f}x" for t in threads), f"{fastest}"])
        print(f"batch {b}: p10 ms per run (the less load-sensitive figure), and the page's fastest thread count")
        print(table(["model", *(f"CPU {t}t" for t in threads), *(f"wasm {t}t" for t in threads), *(f"wasm/CPU {t}t" for t in threads),
                     "fastest wasm threads"], best))
    print("\nthe page's model form: " + "; ".join(f"{r['model']}: {', '.join(r['model_form'].get('nodes', [])) or 'model.onnx as it is'}" for r in rows))
    print("\nPSNR of the page's outputs (latents.bin, 16 samples) against onnxruntime CPU, dB:")
    print(table(["model", *rows[0]["pages"]], [[r["model"], *(f"{v['psnr_db_vs_cpu']:.1f}" for v in r["pages"].values())] for r in rows]))


if __name__ == "__main__":
    sys.exit(main())
