"""Is our int8 at least as fast as onnxruntime's own on Conv-only generators? (issue 14)

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/int8_speed_conv.py                     # three families + zoo dcgan + standard DCGAN
    .venv/bin/python benchmarks/int8_speed_conv.py --only rrdb gan --rounds 20 --repeats 3 --kernels

Models, all from the same exported float graph:
  float      the export as is
  ort-qdq    onnxruntime's recipe: quant_pre_process (shape inference + optimisation), then
             quantize_static: QDQ, int8 per-channel weights, uint8 activations, MinMax, on the same
             256 seeded calibration latents as ours
  ours       gencompress.quantize(..., objective=OBJECTIVE): --objective balanced (the default: a layer
             computes in int8 only where that timed faster) or size (every layer int8, like quantize_static)
Families (models/conv_families.py, seeded weights): rrdb (super-resolution, residual-in-residual
dense blocks), gan (Linear → (Upsample → Conv → BN → LeakyReLU) ×2 → Conv → Tanh), style
(InstanceNorm residual blocks), srgan (SRResNet: BN + PReLU residual blocks, pixel-shuffle
upsampling, a 9x9 Conv to 3 channels), espcn (PyTorch's super-resolution example: four Convs, a 3x
pixel shuffle); plus the zoo dcgan and the standard DCGAN (DESIGN.md).

Latency as in int8_speed.py: CPU EP, 2 intra-op threads, spinning off, all three sessions in one
process, rounds interleaved (A B C, C B A, ...; batch 1: 10 runs per slot). The timing block is
repeated ``--repeats`` times; each repeat gives a speed ratio (float p50 / model p50), and the
table shows their range, so the noise of a shared machine is visible. ``ours/ort`` is the ratio
of ort-qdq's p50 to ours per repeat (≥ 1: ours is faster). PSNR against float on 256 held-back
seeded latents, peak = nominal output range (2 for Tanh) or the float output's peak-to-peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_speed as base  # noqa: E402  (sessions, interleaved timing, kernel profile, machine facts)

MODELS = ("rrdb", "gan", "style", "srgan", "espcn", "zoo-dcgan", "standard-dcgan")
TITLES = {
    "rrdb": "super-resolution RRDB net (nf 64, gc 32, 1 RRDB, 3x32x32 -> 3x64x64)",
    "gan": "GAN generator Linear -> (Upsample, Conv, BN, LeakyReLU) x2 -> Conv -> Tanh (ngf 64, 3x32x32)",
    "style": "style-transfer net, InstanceNorm residual blocks (base 16, 3 blocks, 3x64x64)",
    "srgan": "SRGAN generator (SRResNet: nf 64, 16 residual blocks, PReLU, 2 pixel shuffles, 3x24x24 -> 3x96x96)",
    "espcn": "ESPCN super-resolution (PyTorch's example: Conv 5x5 1->64, 3x3 64->64, 64->32, 32->9, pixel shuffle 3; 1x64x64 -> 1x192x192)",
    "zoo-dcgan": "zoo dcgan (latent 100, ngf 32, 1x16x16)",
    "standard-dcgan": "standard DCGAN (latent 100, ngf 64, 3x64x64)",
}


def export(name: str, folder: Path) -> tuple[Path, float | None]:
    """The float model and its PSNR peak (None: the float output's peak-to-peak)."""
    if name == "zoo-dcgan":
        return base.export_zoo(folder)
    if name == "standard-dcgan":
        return base.export_standard(folder)
    from gencompress.exporter.families import export_family
    from gencompress.models.conv_families import OUTPUT_RANGE

    path = folder / f"{name}.onnx"
    export_family(name, path)
    return path, OUTPUT_RANGE[name]


def ort_quantize(float_path: Path, out: Path, feeds: dict[str, np.ndarray]) -> None:
    """onnxruntime's documented recipe: quant_pre_process, then quantize_static (QDQ, per-channel)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    pre = out.with_name(out.stem + "_pre.onnx")
    quant_pre_process(str(float_path), str(pre))
    base.ort_quantize(pre, out, feeds)
    pre.unlink()


def expand_weights(path: Path, out: Path) -> bool:
    """``out``: the model at ``path`` with each weight ``compact_block_weights`` rebuilds by constant
    ops stored expanded instead (the values onnxruntime computes from those ops); False if none."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    names = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and "/compact_weight/" in n.input[0] and n.input[0] not in inits]
    if not names:
        return False
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    values = dict(zip(names, sess.run(names, feeds)))
    keep = [n for n in model.graph.node if not any(o in values for o in n.output) and "/compact_weight/" not in n.name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(out))
    return True


def measure(name: str, folder: Path, rounds: int, repeats: int, kernels: bool, objective: str = "balanced", expanded: bool = False) -> dict:
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model
    from gencompress.verbs.quantize import quantize

    float_path, peak = export(name, folder)
    feeds = base.calibration_feeds(float_path)
    paths = {"float": float_path, "ort-qdq": folder / f"{name}_ort.onnx", "ours": folder / f"{name}_ours.onnx"}
    import time

    start = time.perf_counter()
    ort_quantize(float_path, paths["ort-qdq"], feeds)
    middle = time.perf_counter()
    quantize(float_path, paths["ours"], objective=objective)
    quantize_s = {"ort-qdq": middle - start, "ours": time.perf_counter() - middle}

    if expanded and expand_weights(paths["ours"], folder / f"{name}_ours_expanded.onnx"):
        paths["expanded"] = folder / f"{name}_ours_expanded.onnx"  # the same int8 weights, stored as onnxruntime runs them
    specs = specs_of_model(load_model(float_path))
    sessions = {n: base.session(p) for n, p in paths.items()}
    held_back = sample_inputs(specs, base.EVAL_SIZE, base.EVAL_SEED)
    outputs = {n: base.run_all(s, held_back) for n, s in sessions.items()}
    if peak is None:
        peak = float(np.ptp(outputs["float"]))
    rows = {n: {"bytes": os.path.getsize(p), "psnr_db": base.psnr(outputs["float"], outputs[n], peak)} for n, p in paths.items()}
    for row in rows.values():
        row["size_ratio"] = row["bytes"] / rows["float"]["bytes"]
    profiles = {}
    for batch in base.BATCHES:
        b = f"b{batch}"
        feed = sample_inputs(specs, batch, base.EVAL_SEED + batch)
        p50 = {n: [] for n in paths}
        for _ in range(repeats):
            times = base.time_interleaved(sessions, feed, rounds, base.RUNS_PER_SLOT[batch])
            for n, t in times.items():
                p50[n].append(1e3 * float(np.median(t)))
        for n in paths:
            speeds = [f / m for f, m in zip(p50["float"], p50[n])]
            rows[n][b] = {"p50_ms": p50[n], "speed": speeds}
        rows["ours"][b]["vs_ort"] = [o / m for o, m in zip(p50["ort-qdq"], p50["ours"])]
        if "expanded" in p50:
            rows["ours"][b]["vs_expanded"] = [e / m for e, m in zip(p50["expanded"], p50["ours"])]
        if kernels:
            for n, p in paths.items():
                profiles.setdefault(n, {})[b] = base.kernel_profile(p, feed, 6 if batch == 64 else 30, folder)
    return {"model": name, "title": TITLES[name], "peak": peak, "rows": rows, "kernels": profiles, "quantize_s": quantize_s}


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if len(values) == 1 or fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def print_report(facts: dict, results: list[dict], rounds: int, repeats: int) -> None:
    print(base.machine_line(facts))
    print(
        f"{repeats} repeat(s) of {rounds} interleaved rounds (batch 1: x{base.RUNS_PER_SLOT[1]} runs per slot); speed = float p50 / model p50,"
        f" range over repeats; PSNR vs float on {base.EVAL_SIZE} held-back inputs"
    )
    for res in results:
        print(f"\n{res['title']} (PSNR peak {res['peak']:.3g})")
        print(f"  {'model':8s} {'p50 b1 ms':>11s} {'p50 b64 ms':>13s} {'speed b1':>11s} {'speed b64':>11s} {'PSNR dB':>8s} {'size':>6s}")
        for n, r in res["rows"].items():
            db = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
            print(
                f"  {n:8s} {span(r['b1']['p50_ms']):>11s} {span(r['b64']['p50_ms'], '{:.1f}'):>13s} {span(r['b1']['speed']) + 'x':>11s}"
                f" {span(r['b64']['speed']) + 'x':>11s} {db:>8s} {r['size_ratio']:6.3f}"
            )
        ours, theirs = res["rows"]["ours"], res["rows"]["ort-qdq"]
        print(f"  ours / ort-qdq throughput: b1 {span(ours['b1']['vs_ort'])}x, b64 {span(ours['b64']['vs_ort'])}x;"
              f" PSNR ours - ort {((ours['psnr_db'] or 0) - (theirs['psnr_db'] or 0)):+.1f} dB;"
              f" quantize time ours {res['quantize_s']['ours']:.0f} s (objective's timing included), ort {res['quantize_s']['ort-qdq']:.0f} s")
        if "vs_expanded" in ours["b1"]:
            print(f"  ours (compact weights) / expanded throughput: b1 {span(ours['b1']['vs_expanded'])}x, b64 {span(ours['b64']['vs_expanded'])}x")
        if res["kernels"]:
            print("  kernels onnxruntime executed (nodes, share of kernel time):")
            for n, per_batch in res["kernels"].items():
                for b, ops in per_batch.items():
                    print(f"    {n:8s} {b:>3s}: " + ", ".join(f"{op} ×{k} {share:.0%}" for op, k, share in ops))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure (default: all)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds per repeat and batch size (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timing blocks per batch size; the table shows their range (default 3)")
    parser.add_argument("--kernels", action="store_true", help="also profile which kernels onnxruntime ran (share of kernel time)")
    parser.add_argument("--expanded", action="store_true",
                        help="also time ours with its compact pixel-block weights stored expanded (compact_block_weights: the same speed expected)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--objective", choices=["balanced", "speed", "size"], default="balanced",
                        help="ours: gencompress.quantize's objective (default balanced, the tool's default)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be positive")
    facts = base.machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="gc-int8-conv-") as tmp:
        for name in args.only:
            results.append(measure(name, Path(tmp), args.rounds, args.repeats, args.kernels, args.objective, args.expanded))
            if not args.json:  # one model at a time: a long run shows its progress
                facts["load_avg_end"] = list(os.getloadavg())
                print_report(facts, results[-1:], args.rounds, args.repeats)
                print(flush=True)
    facts["load_avg_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps({"machine": facts, "rounds": args.rounds, "repeats": args.repeats, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
