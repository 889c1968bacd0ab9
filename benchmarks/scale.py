"""Quantize and prune at scale: wall time and peak memory against onnxruntime's ``quantize_static``.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/scale.py                         # 1M, 12M, 47M, 200M parameters
    .venv/bin/python benchmarks/scale.py --sizes 47M --rounds 2  # one size, best of 2 rounds
    .venv/bin/python benchmarks/scale.py --sizes 2.2G --tools ours-quantize ours-prune ours-compress
                                                                 # > 2 GB, external data in and out
    .venv/bin/python benchmarks/scale.py --profile 47M           # where quantize's memory goes

The generators are DCGAN-style ConvTranspose stacks (latent 100 → 3×64×64: ConvTranspose 4/1/0
then four 4/2/1 layers, BatchNorm + ReLU, Tanh) whose width ``ngf`` is chosen for the parameter
count; random weights (a scale study, not a quality one). Each measurement runs in a fresh
subprocess that reports its peak resident memory (``VmHWM`` of ``/proc/self/status``) and wall
time of the call alone (imports and model building excluded). Every tool gets the same float
file and the same calibration set (256 seeded draws, per-channel int8 QDQ weights, uint8
activations); ours runs with ``check=False`` (the fidelity check that follows is not part of the
comparison). The model file's size is the size of ``.onnx`` plus its external data.
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

LATENT = 100
SIZES = {"1M": 32, "12M": 128, "47M": 256, "200M": 540, "2.2G": 900}  # label → ngf
CALIB = 256
TOOLS = ("ort-quantize", "ours-quantize", "ours-prune", "ours-compress")


def dcgan_params(ngf: int) -> int:
    chans = [LATENT, 8 * ngf, 4 * ngf, 2 * ngf, ngf, 3]
    convs = sum(a * b * 16 for a, b in zip(chans, chans[1:]))
    return convs + sum(4 * c for c in chans[1:-1]) + 3


def build_generator(ngf: int, path: Path, *, external: bool | None = None, seed: int = 0) -> Path:
    """A DCGAN-style generator of width ``ngf`` written to ``path`` (external data when above 1 GB
    or when ``external``), with the metadata gencompress's exporter records."""
    import onnx_ir as ir

    rng = np.random.default_rng(seed)
    chans = [LATENT, 8 * ngf, 4 * ngf, 2 * ngf, ngf, 3]
    z = ir.Value(name="z", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", LATENT, 1, 1]))
    graph = ir.Graph([z], [], nodes=[], opset_imports={"": 17}, name="dcgan")
    tape = ir.tape.Tape(graph)

    def init(name, array):
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.FLOAT))
        graph.register_initializer(value)
        return value

    x = z
    for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
        w = (rng.standard_normal((cin, cout, 4, 4), dtype=np.float32) * np.float32(1.0 / np.sqrt(cin * 4)))
        stride, pad = (1, 0) if i == 0 else (2, 1)
        x = tape.op("ConvTranspose", [x, init(f"w{i}", w)], {"strides": [stride, stride], "pads": [pad] * 4, "kernel_shape": [4, 4]})
        del w
        if i < len(chans) - 2:
            scale = (1.0 + 0.1 * rng.standard_normal(cout)).astype(np.float32)
            bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
            mean = (0.1 * rng.standard_normal(cout)).astype(np.float32)
            var = (1.0 + 0.1 * rng.random(cout)).astype(np.float32)
            x = tape.op("BatchNormalization", [x, init(f"bn{i}.scale", scale), init(f"bn{i}.bias", bias), init(f"bn{i}.mean", mean), init(f"bn{i}.var", var)])
            x = tape.op("Relu", [x])
        else:
            x = tape.op("Tanh", [x])
    x.name = "image"
    x.type, x.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["N", 3, 64, 64])
    graph.outputs.append(x)
    graph.extend(tape.nodes)
    model = ir.Model(graph, ir_version=9, producer_name="benchmarks/scale.py")
    model.metadata_props["gencompress.inputs"] = json.dumps([{"name": "z", "shape": [1, LATENT, 1, 1], "dtype": "float32", "low": 0, "high": 1}])
    model.metadata_props["gencompress.output_range"] = "2.0"
    params = dcgan_params(ngf)
    if external is None:
        external = params * 4 > 2**30
    path = Path(path)
    ir.save(model, path, external_data=f"{path.name}.data" if external else None)
    return path


def file_bytes(path: Path) -> int:
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# ---- one measurement, in a fresh process ------------------------------------------------------


def child(tool: str, src: str, out: str) -> dict:
    """Run one tool on ``src`` (in this process); wall time of the call and this process's peak RSS."""
    import onnx  # noqa: F401  (imported before timing, like every tool's own imports)
    import onnxruntime  # noqa: F401

    import gencompress.verbs.quantize as Q
    from gencompress.inputs import sample_inputs, specs_of_model  # noqa: F401
    from gencompress.verbs.prune import prune
    from gencompress.verbs.compress import compress

    base = vm_hwm()
    start = time.perf_counter()
    if tool == "ours-quantize":
        Q.quantize(src, out, calib_size=CALIB, check=False, objective="size")
    elif tool == "ours-prune":
        prune(src, out, sparsity=0.5)
    elif tool == "ort-quantize":
        ort_quantize(src, out)
    elif tool == "ours-compress":  # end to end: export-free compress (every-layer int8), check and bench
        compress(src, Path(out).with_suffix(""), flags={"objective": "size"}, samples=64, batches=(1,), runs=10)
    else:
        raise SystemExit(f"unknown tool {tool}")
    seconds = time.perf_counter() - start
    return {"tool": tool, "seconds": seconds, "peak_bytes": vm_hwm(), "baseline_bytes": base}


def ort_quantize(src: str, out: str, batch: int = 64) -> None:
    """onnxruntime's quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax,
    the same 256 seeded draws from the prior (fed 64 at a time), external data above 2 GB."""
    import contextlib
    import io
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from gencompress.inputs import sample_inputs, specs_of_model

    header = onnx.load(src, load_external_data=False)
    feeds = sample_inputs(specs_of_model(header), CALIB, 0)
    del header

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, CALIB, batch)])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=file_bytes(Path(src)) > 2**30,
        )


def run_child(tool: str, src: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", tool, str(src), str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # reported, and the other rows still measured
        print(f"{tool} on {src.name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return {"tool": tool, "seconds": float("nan"), "peak_bytes": 0, "baseline_bytes": 0, "failed": True}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- profile: where does quantize's memory go -------------------------------------------------


def profile(src: str, out: str, tool: str = "quantize") -> None:
    """Sample this process's RSS every 20 ms during quantize (or prune); print the peak per call site."""
    import threading
    import traceback

    import gencompress.verbs.quantize as Q

    main = threading.main_thread().ident
    peaks: dict[str, int] = {}
    stop = threading.Event()

    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def sample():
        while not stop.wait(0.02):
            frame = sys._current_frames().get(main)
            stack = [f for f in traceback.extract_stack(frame) if "gencompress" in f.filename or "passes" in f.filename]
            where = " > ".join(f"{Path(f.filename).stem}.{f.name}:{f.lineno}" for f in stack[-3:]) or "?"
            peaks[where] = max(peaks.get(where, 0), rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    if tool == "prune":
        from gencompress.verbs.prune import prune

        prune(src, out, sparsity=0.5)
    else:
        Q.quantize(src, out, calib_size=CALIB, check=False, objective="size")
    stop.set()
    t.join()
    print(f"{tool} {time.perf_counter() - start:.1f} s, VmHWM {vm_hwm() / 2**20:.0f} MiB, file {file_bytes(Path(src)) / 2**20:.0f} MiB")
    for where, peak in sorted(peaks.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {peak / 2**20:8.0f} MiB  {where}")


# ---- the table --------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["1M", "12M", "47M", "200M"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=1, help="Repeat each measurement; the best time and lowest peak are kept.")
    parser.add_argument("--folder", default=None, help="Where to build the models (default: a temp folder, removed after).")
    parser.add_argument("--profile", default=None, choices=list(SIZES), help="Only profile memory on one size.")
    parser.add_argument("--profile-tool", default="quantize", choices=["quantize", "prune"])
    parser.add_argument("--tools", nargs="*", default=list(TOOLS), choices=list(TOOLS),
                        help="Which to run (ours-compress: the whole compress job, fidelity check and bench included; not compared).")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        tmp = Path(tmp)
        if args.profile:
            src = build_generator(SIZES[args.profile], tmp / f"g{args.profile}.onnx")
            profile(str(src), str(tmp / "out.onnx"), args.profile_tool)
            return 0
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__} | {os.cpu_count()} logical CPUs | load avg {os.getloadavg()[0]:.2f} at start")
        rows = []
        for label in args.sizes:
            ngf = SIZES[label]
            src = build_generator(ngf, tmp / f"g{label}.onnx")
            size = file_bytes(src)
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for tool in args.tools:  # interleaved rounds
                    out = tmp / f"{tool}.onnx"
                    r = run_child(tool, src, out)
                    folder = out.with_suffix("")
                    r["out_bytes"] = 0 if r.get("failed") else file_bytes(folder / "model.onnx" if tool == "ours-compress" else out)
                    for p in (out, out.with_name(out.name + ".data")):
                        p.unlink(missing_ok=True)
                    shutil.rmtree(folder, ignore_errors=True)
                    b = best.setdefault(tool, r)
                    b["seconds"] = min(b["seconds"], r["seconds"])
                    b["peak_bytes"] = min(b["peak_bytes"], r["peak_bytes"])
            rows.append((label, ngf, dcgan_params(ngf), size, best))
            for p in tmp.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            print(f"  {label}: done (load avg {os.getloadavg()[0]:.2f})", flush=True)

        print()
        head = f"{'model':>6} {'params':>8} {'file MB':>8} | {'tool':<14} {'time s':>7} {'vs ORT':>7} {'peak MB':>8} {'peak/file':>9} {'excl. imp.':>10} {'out MB':>7}"
        print(head)
        print("-" * len(head))
        for label, ngf, params, size, best in rows:
            ort_s = best["ort-quantize"]["seconds"] if "ort-quantize" in best else None
            for tool in args.tools:
                r = best[tool]
                ratio = "1.00x" if tool == "ort-quantize" else (f"{r['seconds'] / ort_s:.2f}x" if tool == "ours-quantize" and ort_s else "")
                used = r["peak_bytes"] - r["baseline_bytes"]
                print(f"{label:>6} {params / 1e6:7.1f}M {size / 1e6:8.1f} | {tool:<14} {r['seconds']:7.2f} {ratio:>7} "
                      f"{r['peak_bytes'] / 1e6:8.0f} {r['peak_bytes'] / size:8.2f}x {used / size:10.2f}x {r['out_bytes'] / 1e6:7.1f}")
        print(f"load avg {os.getloadavg()[0]:.2f} at end; peak = VmHWM of a fresh process, imports included (baseline after imports ~"
              f"{min(b['baseline_bytes'] for r in rows for b in r[4].values()) / 1e6:.0f} MB); 'excl. imports' = (peak - baseline) / file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
