"""What the default int8 plan costs (issue 25): quantize wall time and peak memory per objective
against onnxruntime's quantize_static, the cached re-plan, and, for balanced, what the plan chose
and how fast that runs, before and after a change.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/plan_cost.py                                  # the small models
    .venv/bin/python benchmarks/plan_cost.py --models dcgan-47M --before HEAD  # with the code at HEAD
    .venv/bin/python benchmarks/plan_cost.py --models resnet50 vgg19 --tools balanced

Models: the zoo (dcgan, vae, rvae, cgan), the Conv families (models/conv_families.py: rrdb, gan,
style, srgan, espcn), the generator families (models/families.py), DCGAN-style generators of benchmarks/scale.py
(12M, 47M, 200M parameters, random weights) and the onnx wheel's ResNet-50 and VGG-19. The wheel
has these only as "light" graphs whose weights are ConstantOfShape outputs; onnxruntime's basic
optimisations fold them into initializers (constant weights: a cost and speed study, not a
quality one; the real ImageNet weights are not in the wheel).

Tools, each in a fresh process (wall time of the call alone, peak RSS from VmHWM; imports and
model building excluded): ``ort`` quantize_static (QDQ, per-channel, uint8 activations, MinMax);
``balanced`` / ``speed`` / ``size``: gencompress.quantize with that objective and an empty cache
(plans, kernel timings, calibration ranges: one folder per tool), ``--no-check``; ``cached``:
balanced again with the cache balanced left; ``retrained``: balanced on the model with its weights
changed (each float weight times 1 + 1% seeded noise: the same architecture retrained) and only
balanced's kernel timings left (plans, calibration ranges and outputs miss: what a machine that
has planned this architecture before pays for its next weights); ``agree``: balanced
with every group also timed in the whole model (prints each group's isolated gain beside its
in-context gain and decision: how well isolation predicts); ``before``:
balanced with the package at ``--before REV`` (its files from git archive, no plan cache). Every tool gets the
same calibration set (``--calib`` seeded draws).

Then float, ``ort``, ``before`` and ``balanced`` outputs run side by side in one process (CPU EP, 2
intra-op threads, spinning off, rounds interleaved A B C D / D C B A) at batch 1 and 64: speed =
float p50 / model p50, PSNR on held-back seeded inputs. Every line carries /proc/loadavg.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import scale  # noqa: E402  (DCGAN generators, VmHWM, quantize_static)

ZOO = ("dcgan", "vae", "rvae", "cgan")
CONV_FAMILIES = ("rrdb", "gan", "style", "srgan", "espcn")
GEN_FAMILIES = ("equalized_lr", "stylegan2_fused", "stylegan2_nonfused", "lstm_decoder", "unet", "instancenorm_resnet", "attention")
DCGANS = {"dcgan-12M": 128, "dcgan-47M": 256, "dcgan-200M": 540}
CLASSIC = ("resnet50", "vgg19")
SMALL = (*(f"zoo-{n}" for n in ZOO), *CONV_FAMILIES, *GEN_FAMILIES)
TOOLS = ("ort", "size", "speed", "balanced", "cached", "retrained", "before", "agree")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def make_model(name: str, folder: Path) -> Path:
    path = folder / f"{name}.onnx"
    if name.startswith("zoo-"):
        from gencompress.exporter.export import export

        export(name[4:], path)
    elif name in CONV_FAMILIES:
        from gencompress.exporter.families import export_family

        export_family(name, path)
    elif name in GEN_FAMILIES:
        from gencompress.exporter.export import export
        from gencompress.models.families import FAMILIES

        export(FAMILIES[name][0](), path)
    elif name in DCGANS:
        scale.build_generator(DCGANS[name], path)
    elif name in CLASSIC:
        classic(name, path)
    else:
        raise SystemExit(f"unknown model {name}")
    return path


def classic(name: str, out: Path) -> None:
    """The wheel's light graph with its ConstantOfShape weights folded into initializers (onnxruntime
    basic optimisations, which also fold BatchNorm into the Convs), input and metadata as an image."""
    import onnx
    import onnxruntime as ort

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    src = constant_weights(light, out.parent)  # weights no longer overridable inputs, opset 17: foldable
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    x = model.graph.input[0]  # batch 1, fixed by a Reshape: the plan times batch 1 only
    shape = [1] + [d.dim_value for d in x.type.tensor_type.shape.dim[1:]]
    model.metadata_props.add(key="gencompress.inputs", value=json.dumps([{"name": x.name, "shape": shape, "dtype": "float32", "low": 0, "high": 1}]))
    model.metadata_props.add(key="gencompress.output_range", value="1.0")
    onnx.save(model, str(out))


def constant_weights(src: Path, folder: Path) -> Path:
    """The model with its initializers dropped from the graph inputs (old exporters list them as
    inputs, which makes them overridable) and its opset raised to 17 where the converter can."""
    import onnx

    from gencompress.onnx_io import weights_from_inputs

    model = onnx.load(str(src))
    try:
        model = onnx.version_converter.convert_version(model, 17)
    except Exception:
        pass
    weights_from_inputs(model)
    model.ir_version = max(model.ir_version, 8)
    out = folder / "constant_weights.onnx"
    onnx.save(model, str(out))
    return out


def retrained(src: Path) -> Path:
    """``src`` with every float weight of more than 16 values times 1 + 1% seeded noise: new weights, the same structure."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 16:
            w = numpy_helper.to_array(t)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array((w * (1 + 0.01 * rng.standard_normal(w.shape))).astype(np.float32), t.name))
    out = src.with_name(src.stem + ".retrained.onnx")
    onnx.save(model, str(out))
    return out


# ---- one tool, in a fresh process ----------------------------------------------------------------


def child(tool: str, src: str, out: str, calib: int, cache: str) -> dict:
    import onnx  # imported before timing, like every tool's own imports
    import onnxruntime  # noqa: F401

    import gencompress.verbs.quantize as Q
    from gencompress.batches import fixed_batch

    os.environ["GENCOMPRESS_PLAN_CACHE"] = cache
    scale.CALIB = calib
    batch = fixed_batch(onnx.load(src, load_external_data=False)) or 64  # calibration batches quantize_static is fed
    start = time.perf_counter()
    report = {}
    follows: set = set()
    if tool == "ort":
        scale.ort_quantize(src, out, batch=batch)
    else:
        if tool == "agree":  # every group timed in context too, beside its isolated timing: how well isolation predicts
            from gencompress.verbs import int8_plan

            clear, real = int8_plan.CLEAR_FASTER, int8_plan.followers

            def recorded(iso, predicted, negligible, objective):  # what the neighbour rule would decide, not applied
                int8_plan.CLEAR_FASTER = clear
                try:
                    chosen = real(iso, predicted, negligible, objective)
                finally:
                    int8_plan.CLEAR_FASTER = float("inf")
                follows.update(n for g, f in zip(iso.groups, chosen) if f for n in g)
                return [False] * len(chosen)

            int8_plan.followers = recorded
            int8_plan.CLEAR_FASTER = float("inf")
        objective = tool if tool in ("size", "speed") else "balanced"
        report = Q.quantize(src, out, calib_size=calib, check=False, objective=objective)
    seconds = time.perf_counter() - start
    plan = report.get("speed_plan") or {}
    return {"tool": tool, "seconds": seconds, "peak_bytes": scale.vm_hwm(), "float_layers": [r["node"] for r in plan.get("layers", []) if r["choice"] == "float"],
            "int8_layers": sum(r["choice"] == "int8" for r in plan.get("layers", [])), "cached": plan.get("cached"), "timed_on": plan.get("timed_on"),
            "configs_measured": plan.get("configs_measured"), "load": load(),
            "route": plan.get("route"),
            "decided": {k: sum(r.get("decided") == k for r in plan.get("layers", [])) for k in ("isolated", "neighbours", "in context", "budget")},
            "agreement": [{"node": r["node"], "isolated": r.get("isolated_gain"), "context": r.get("int8_gain"), "choice": r["choice"],
                           "follows": r["node"] in follows} for r in plan.get("layers", []) if tool == "agree"]}


def run_child(tool: str, src: Path, out: Path, calib: int, cache: Path, before: Path | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tool == "before":
        env["PYTHONPATH"] = str(before)  # found before the editable install's finder
    cmd = [sys.executable, __file__, "--child", tool, str(src), str(out), str(calib), str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"{tool} on {src.name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {"tool": tool, "seconds": float("nan"), "peak_bytes": 0, "failed": True}
    return json.loads(done.stdout.strip().splitlines()[-1])


def before_tree(rev: str, folder: Path) -> Path:
    """``rev``'s files (git archive), laid out as the import package ``gencompress``."""
    tree = folder / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    pkg = folder / "pkg" / "gencompress"
    pkg.mkdir(parents=True)
    for item in (tree / "gencompress").iterdir():
        (pkg / item.name).symlink_to(item)
    for sub in ("exporter", "passes", "runtime_check", "models", "verbs", "cli", "distillation", "edge", "sweeps"):  # pyproject's package-dir
        if (tree / sub).exists() and not (pkg / sub).exists():
            (pkg / sub).symlink_to(tree / sub)
    return folder / "pkg"


# ---- the chosen models side by side --------------------------------------------------------------


def speeds(paths: dict, rounds: int) -> dict:
    import int8_speed as base

    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model

    from gencompress.batches import fixed_batch

    header = load_model(paths["float"])
    specs, fixed = specs_of_model(header), fixed_batch(header)
    sessions = {n: base.session(p) for n, p in paths.items()}
    held = sample_inputs(specs, 64 if not fixed else 4 * fixed, 12345)
    outputs = {n: base.run_all(s, held, fixed or 64) for n, s in sessions.items()}
    peak = float(np.ptp(outputs["float"])) or 1.0
    rows = {n: {"psnr_db": base.psnr(outputs["float"], outputs[n], peak), "bytes": os.path.getsize(p)} for n, p in paths.items()}
    for batch in (fixed,) if fixed else (1, 64):
        feed = sample_inputs(specs, batch, 777 + batch)
        times = base.time_interleaved(sessions, feed, rounds, 10 if batch == 1 else 1)
        f = float(np.median(times["float"]))
        for n, t in times.items():
            rows[n][f"b{batch}"] = round(f / float(np.median(t)), 3)
    rows["load"] = load()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=5)
    parser.add_argument("--models", nargs="+", default=list(SMALL))
    parser.add_argument("--tools", nargs="+", default=[t for t in TOOLS if t != "before"], choices=TOOLS)
    parser.add_argument("--before", help="git revision to compare with (adds the 'before' tool)")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds per batch size (0: no speed table)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.child:
        tool, src, out, calib, cache = args.child
        print(json.dumps(child(tool, src, out, int(calib), cache)))
        return 0
    tools = list(dict.fromkeys([*args.tools, *(["before"] if args.before else [])]))
    results = []
    print(f"load {load()} at start; calib {args.calib}; tools {' '.join(tools)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="plan_cost.") as tmp:
        tmp = Path(tmp)
        before = before_tree(args.before, tmp / "before") if args.before else None
        for name in args.models:
            folder = tmp / name
            folder.mkdir()
            src = make_model(name, folder)
            size = scale.file_bytes(src)
            row = {"model": name, "file_bytes": size, "tools": {}}
            for tool in tools:
                if tool in ("cached", "retrained") and "balanced" not in row["tools"]:
                    continue
                # each tool starts from an empty cache (plans, kernel timings, calibration ranges); cached: balanced's
                cache = folder / f"cache-{'balanced' if tool == 'cached' else tool}"
                model = src
                if tool == "retrained":  # balanced's kernel timings only, new weights
                    model = retrained(src)
                    cache.mkdir()
                    for kernels in (folder / "cache-balanced").glob("kernels-*.json"):
                        shutil.copy(kernels, cache / kernels.name)
                r = run_child("balanced" if tool == "retrained" else tool, model, folder / f"{tool}.onnx", args.calib, cache, before)
                r["tool"] = tool
                row["tools"][tool] = r
                print(f"{name:20s} {tool:9s} {r['seconds']:7.1f} s  peak {r['peak_bytes'] / 2**20:7.0f} MiB ({r['peak_bytes'] / size:5.1f}x file)"
                      f"  float layers {len(r.get('float_layers') or [])}  decided {r.get('decided')}  configs {r.get('configs_measured')}  route {r.get('route')}"
                      f"  load {r.get('load')}", flush=True)
                for a in r.get("agreement") or []:  # isolated gain against the in-context gain and decision
                    print(f"{'':20s}   {a['node']:32s} alone {a['isolated']}  in context {a['context']}  -> {a['choice']}"
                          + ("  (neighbour rule: int8)" if a.get("follows") else ""), flush=True)
            if "cached" in row["tools"] and not row["tools"]["cached"].get("failed"):  # a cached re-plan writes the same bytes
                row["cached_same_bytes"] = (folder / "cached.onnx").read_bytes() == (folder / "balanced.onnx").read_bytes()
                print(f"{name:20s} balanced/cached byte-identical: {row['cached_same_bytes']}", flush=True)
            if "before" in row["tools"] and "balanced" in row["tools"]:  # the same plan builds the same bytes
                row["before_same_bytes"] = (folder / "before.onnx").read_bytes() == (folder / "balanced.onnx").read_bytes()
                print(f"{name:20s} balanced before/after byte-identical: {row['before_same_bytes']}", flush=True)
            if args.rounds:
                paths = {"float": src, **{t: folder / f"{t}.onnx" for t in ("ort", "before", "balanced") if t in row["tools"] and not row["tools"][t].get("failed")}}
                if len(paths) == 1:
                    results.append(row)
                    continue
                row["speed"] = speeds(paths, args.rounds)
                print(f"{name:20s} speed vs float " + "  ".join(
                    f"{t}: " + " ".join(f"{b} {v[b]:.2f}x" for b in ("b1", "b64") if b in v) + f" psnr {v['psnr_db'] if v['psnr_db'] is None else round(v['psnr_db'], 1)}"
                    for t, v in row["speed"].items() if t not in ("float", "load")) + f"  load {row['speed']['load']}", flush=True)
            results.append(row)
    print(f"load {load()} at end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
