"""Where the browser page's batch-1 time goes, against onnxruntime CPU on the same thread count.

For each zoo model (exported, quantized with gencompress.quantize defaults, shipped): a bench page (the
bundle's onnxruntime-web wasm build, served cross-origin isolated) and onnxruntime CPU (intra-op
spinning off) each time, interleaved in rounds of ``--runs`` runs (median of single runs timed with
``performance.now()`` / ``perf_counter``, median over rounds; p10 as well, the less load-sensitive
figure):

1. the fixed cost of one ``session.run`` (a one-Relu model on the latent: tensor in, promise, copy out);
2. the model forms: ``shipped`` (model.onnx), ``web`` (web/model.onnx, see edge/web_form.py), ``size``
   (every layer int8), ``no-rewrite`` (every layer int8, ConvTranspose left as it is: float in
   onnxruntime), ``float``, ``fp16``;
3. per operator type, onnxruntime-web's own profiler against onnxruntime CPU's (``--profile``): both
   profilers add their own cost, so compare the columns, not the totals with (2);
4. the page's form under other session options (``--options``: memory arena and pattern, the batch
   dimension fixed, spinning off, lower optimization levels).

    python benchmarks/web_breakdown.py [--models dcgan,vae,rvae,cgan] [--threads 1,2] [--runs 300] [--rounds 5] [--profile] [--options]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body><pre id="result"></pre>
<script>
"use strict";
const LOGS = [];  // onnxruntime-web's profiler prints its JSON through console.log
for (const k of ["log", "info"]) { const f = console[k].bind(console); console[k] = (...a) => { LOGS.push(a.map(String).join(" ")); f(...a); }; }
const ARRAYS = {float32: Float32Array, int64: BigInt64Array, float16: Uint16Array};
const sorted = v => v.slice().sort((a, b) => a - b), median = v => { const s = sorted(v), m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
function load(src) { return new Promise((ok, bad) => { const s = document.createElement("script"); s.src = src; s.onload = ok; s.onerror = bad; document.head.appendChild(s); }); }
async function inflate(url) { const r = await fetch(url); return new Uint8Array(await new Response(r.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer()); }
async function main() {
  const cfg = await (await fetch("bench.json")).json();
  await load("ort.wasm.min.js");
  ort.env.wasm.wasmBinary = await inflate("ort-wasm-simd-threaded.wasm.gz");
  ort.env.wasm.wasmPaths = new URL("./", location.href).href;
  ort.env.wasm.proxy = false;
  ort.env.wasm.numThreads = cfg.threads;
  const all = [];
  for (const m of cfg.models) {
    const s = await ort.InferenceSession.create(m.file, {executionProviders: ["wasm"], graphOptimizationLevel: "all", enableProfiling: !!cfg.profile, ...(m.options || {})});
    const feeds = {};
    for (const i of m.inputs) feeds[i.name] = new ort.Tensor(i.dtype, new ARRAYS[i.dtype](i.values), i.shape);
    for (let k = 0; k < 10; k++) await s.run(feeds);
    all.push({m, s, feeds, medians: [], times: []});
  }
  for (let r = 0; r < cfg.rounds; r++) for (const x of all) {
    const t = [];
    for (let i = 0; i < cfg.runs; i++) { const t0 = performance.now(); await x.s.run(x.feeds); t.push(performance.now() - t0); }
    x.medians.push(median(t)); x.times.push(...t);
  }
  const out = {threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated, models: {}, profiles: {}};
  for (const x of all) {
    out.models[x.m.label] = {median_ms: median(x.medians), p10_ms: sorted(x.times)[Math.floor(x.times.length / 10)]};
    if (cfg.profile) { LOGS.length = 0; x.s.endProfiling(); await new Promise(r => setTimeout(r, 50)); out.profiles[x.m.label] = LOGS.join("\\n"); }
  }
  document.getElementById("result").textContent = JSON.stringify(out);
}
main().catch(e => { document.getElementById("result").textContent = JSON.stringify({error: String(e && e.stack || e)}); });
</script></body></html>
"""
FORMS = ("shipped", "web", "size", "no-rewrite", "float", "fp16")
# session options tried on the page's form (--options); the page itself uses graphOptimizationLevel "all" and the defaults
OPTIONS = {"arena+mem pattern": {"enableCpuMemArena": True, "enableMemPattern": True}, "batch fixed to 1": {"freeDimensionOverrides": {"batch": 1}},
           "spinning off": {"extra": {"session": {"intra_op.allow_spinning": "0"}}}, "level extended": {"graphOptimizationLevel": "extended"},
           "level basic": {"graphOptimizationLevel": "basic"}}


def build(name: str, folder: Path) -> dict:
    """label -> model path: the forms of one zoo model (and its bundle's two)."""
    import onnx
    from onnx import TensorProto, helper

    import gencompress
    from gencompress.exporter.export import export

    d = folder / name
    d.mkdir(parents=True)
    export(name, d / "float.onnx")
    gencompress.quantize(d / "float.onnx", d / "int8" / "model.onnx")
    gencompress.ship(d / "int8" / "model.onnx", d / "ship", targets="python,web")
    gencompress.quantize(d / "float.onnx", d / "size.onnx", objective="size")
    gencompress.quantize(d / "float.onnx", d / "no-rewrite.onnx", objective="size", rewrite=False)
    gencompress.quantize(d / "float.onnx", d / "fp16.onnx", mode="fp16")
    forms = {"shipped": d / "ship" / "model.onnx", "web": d / "ship" / "web" / "model.onnx", "size": d / "size.onnx",
             "no-rewrite": d / "no-rewrite.onnx", "float": d / "float.onnx", "fp16": d / "fp16.onnx"}
    latent = onnx.load(str(forms["shipped"])).graph.input[0]
    dims = [d.dim_value or 1 for d in latent.type.tensor_type.shape.dim]
    relu = helper.make_graph([helper.make_node("Relu", [latent.name], ["y"])], "one_relu",
                             [helper.make_tensor_value_info(latent.name, TensorProto.FLOAT, dims)],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "one_relu.onnx")
    return {"one Relu": d / "one_relu.onnx", **forms}


def batch1_feeds(path: Path) -> dict:
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model

    model = load_model(path)
    specs = specs_of_model(model)
    if specs:
        return sample_inputs(specs, 1, 0)
    i = model.graph.input[0]  # the one-Relu model: the latent's shape
    return {i.name: np.random.default_rng(0).standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim]).astype(np.float32)}


def page_times(models: dict, feeds: dict, threads: int, runs: int, rounds: int, profile: bool, folder: Path, options=None) -> dict:
    from gencompress.edge import browser
    from gencompress.edge.web import BACKEND_FILES, runtime_files, shipped_name

    site = Path(tempfile.mkdtemp(prefix=f"site-{threads}-", dir=folder))
    src = runtime_files()
    for n in BACKEND_FILES["wasm"]:
        shutil.copyfile(src / shipped_name(n), site / shipped_name(n))
    (site / "index.html").write_text(PAGE)
    entries = []
    for k, (label, path) in enumerate(models.items()):
        shutil.copyfile(path, site / f"m{k}.onnx")
        entries.append({"label": label, "file": f"m{k}.onnx", "inputs": [
            {"name": n, "dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist() if a.dtype != np.int64 else None}
            for n, a in feeds[label].items()], "options": (options or {}).get(label)})
    for e in entries:  # BigInt64Array takes BigInts: int64 inputs are fed as zeros (class 0)
        for i in e["inputs"]:
            if i["values"] is None:
                i["values"] = int(np.prod(i["shape"]))
    (site / "bench.json").write_text(json.dumps({"threads": threads, "runs": runs, "rounds": rounds, "profile": profile, "models": entries}))
    with browser.serve(site, isolate=True) as base:
        result = browser.run_page(base + "index.html", site / "chromium-profile", timeout=1800)
    if "error" in result:
        raise SystemExit(f"the bench page failed: {result['error']}")
    return result


def cpu_times(models: dict, feeds: dict, threads: int, runs: int, rounds: int) -> dict:
    from gencompress.runtime_check.latency import time_interleaved
    from gencompress.runtime_check.sessions import make_session

    sessions = {label: make_session(path, threads=threads) for label, path in models.items()}
    medians, every = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(rounds):
        times = time_interleaved(sessions, feeds, runs=runs, warmup=10)
        for label, t in times.items():
            medians[label].append(1000 * statistics.median(t))
            every[label] += t
    return {label: {"median_ms": statistics.median(medians[label]), "p10_ms": 1000 * sorted(every[label])[len(every[label]) // 10]}
            for label in sessions}


def by_op(events: list) -> dict:
    """Median microseconds per node over the profiled runs, summed by operator type."""
    per_node, op = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node[e["name"]].append(e["dur"])
            op[e["name"]] = e["args"].get("op_name")
    totals = collections.Counter()
    for node, durs in per_node.items():
        totals[op[node]] += statistics.median(durs)
    return dict(totals)


def page_events(text: str) -> list:
    text = text[text.index("["):].strip().rstrip(",")
    return json.loads(text if text.endswith("]") else text + "]")


def cpu_profile(path: Path, feeds: dict, runs: int, folder: Path) -> list:
    from gencompress.runtime_check.sessions import make_session

    session = make_session(path, threads=1, profile_prefix=str(folder / "cpu-profile"))
    for _ in range(runs):
        session.run(None, feeds)
    return json.loads(Path(session.end_profiling()).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dcgan,vae,rvae,cgan")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--profile", action="store_true", help="also per operator type, both profilers, 1 thread")
    parser.add_argument("--options", action="store_true", help="also the page's form under other session options, 1 thread")
    args = parser.parse_args(argv)

    import onnxruntime

    from gencompress.edge.web import ORT_WEB_VERSION
    from gencompress.isa import host_isa
    from gencompress.output import table

    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    print(f"onnxruntime {onnxruntime.__version__} CPU ({host_isa()}, spinning off) vs onnxruntime-web {ORT_WEB_VERSION} wasm in headless "
          f"Chromium (cross-origin isolated); batch 1; {args.rounds} rounds x {args.runs} runs; /proc/loadavg at start "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            every = build(name, tmp)
            models = {k: v for k, v in every.items() if k == "one Relu" or k in forms}
            feeds = {label: batch1_feeds(path) for label, path in models.items()}
            for t in [int(x) for x in args.threads.split(",")]:
                page = page_times(models, feeds, t, args.runs, args.rounds, False, tmp / name)
                cpu = cpu_times(models, feeds, t, args.runs, args.rounds)
                rows = [[label, f"{cpu[label]['median_ms']:.4f}", f"{page['models'][label]['median_ms']:.4f}",
                         f"{page['models'][label]['median_ms'] / cpu[label]['median_ms']:.2f}x",
                         f"{cpu[label]['p10_ms']:.4f}", f"{page['models'][label]['p10_ms']:.4f}",
                         f"{page['models'][label]['p10_ms'] / cpu[label]['p10_ms']:.2f}x"] for label in models]
                print(f"\n{name}, {t} thread{'s' if t > 1 else ''} (page ran {page['threads']}; load {open('/proc/loadavg').read().split()[0]}): ms per run")
                print(table(["form", "CPU median", "page median", "page/CPU", "CPU p10", "page p10", "page/CPU p10"], rows))
            if args.options:
                variants = {"web": models["web"], **{f"web, {k}": models["web"] for k in OPTIONS}}
                page = page_times(variants, {k: feeds["web"] for k in variants}, 1, args.runs, args.rounds, False, tmp / name,
                                  options={f"web, {k}": v for k, v in OPTIONS.items()})
                rows = [[k, f"{v['median_ms']:.4f}", f"{v['p10_ms']:.4f}", f"{v['median_ms'] / page['models']['web']['median_ms']:.2f}x"]
                        for k, v in page["models"].items()]
                print(f"\n{name}: the page's form under session options, 1 thread (load {open('/proc/loadavg').read().split()[0]}): ms per run")
                print(table(["page", "median", "p10", "vs defaults"], rows))
            if args.profile:
                profiled = {k: v for k, v in models.items() if k in ("shipped", "web")}
                page = page_times(profiled, feeds, 1, 100, 1, True, tmp / name)
                for label, path in profiled.items():
                    wasm, cpu = by_op(page_events(page["profiles"][label])), by_op(cpu_profile(path, feeds[label], 300, tmp / name))
                    ops = sorted(set(wasm) | set(cpu), key=lambda o: -wasm.get(o, 0))
                    rows = [[o, f"{cpu.get(o, 0):.0f}", f"{wasm.get(o, 0):.0f}", f"{wasm.get(o, 0) / cpu[o]:.1f}x" if cpu.get(o) else "-"] for o in ops]
                    rows.append(["all nodes", f"{sum(cpu.values()):.0f}", f"{sum(wasm.values()):.0f}", f"{sum(wasm.values()) / sum(cpu.values()):.1f}x"])
                    print(f"\n{name} {label}: profiled, 1 thread, median us per run by operator type (load {open('/proc/loadavg').read().split()[0]})")
                    print(table(["op", "CPU us", "wasm us", "wasm/CPU"], rows))
    print(f"\n/proc/loadavg at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
