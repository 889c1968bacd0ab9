"""int8 fidelity on every x86 int8 kernel path: exact arithmetic, this host's fused kernels, and
emulated AVX2 (``qemu-x86_64 -cpu Haswell``), per model, objective and weight variant.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/portability.py          # zoo + generator families + Conv families, both objectives
    .venv/bin/python benchmarks/portability.py --models rvae conv:gan --objectives size --eval-size 16

Models: the zoo names, ``family:NAME`` (``models/families.py``) and ``conv:NAME``
(``models/conv_families.py``, benchmark sizes); ``--models zoo families conv`` name the groups.
Variants: ``vnni`` (full 8-bit weights, ``int8_kernels="vnni"``) and ``portable`` (the default:
saturation-free; ``portable-scale`` / ``portable-nudge`` force one remedy of
``passes/int8_saturation.py``; ``portable-uint8`` keeps every cheap layer's full 8-bit weights as uint8,
the rule before session 5), and onnxruntime's ``quantize_static`` (per-channel U8S8 QDQ, with
and without ``reduce_range``; ``--ort``) on the same calibration inputs. PSNR against the float
model on the held-back evaluation inputs (``check``'s: seeded draws from the model's priors,
natural-image crops for image inputs), peak as ``check`` (the nominal output range, else the
reference's peak-to-peak). "exact" is onnxruntime's DQ -> float path (optimizations off) on this
host; "host" its fused kernels (level all) here; "avx2" the fused kernels of the same file on an
emulated Haswell: the model is built natively and only onnxruntime runs under qemu (numpy and the
tool under TCG build other models). The host's ISA and the load average are printed.

Speed (``--speed``): float and each variant's int8 (objective size) timed interleaved in one
process on this host, 2 intra-op threads, spinning off, batch 1 and 64 (``--rounds`` rounds, 10
runs per slot at batch 1); speed = float p50 / model p50. ``--cpu-time``: the process's CPU time
on one intra-op thread instead (20 runs per slot at batch 1), for a machine others load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {"vnni": ("vnni", "best", None), "portable": ("portable", "best", None), "portable-scale": ("portable", "scale", None),
            "portable-nudge": ("portable", "nudge", None), "portable-uint8": ("portable", "best", 0.0)}


def batched(session, feeds: dict) -> np.ndarray:
    """The first output for ``feeds``; a model with a fixed batch size runs them in chunks of it."""
    n = len(next(iter(feeds.values())))
    b = session.get_inputs()[0].shape[0]
    b = b if isinstance(b, int) and b > 0 else n
    return np.concatenate([session.run(None, {k: v[i : i + b] for k, v in feeds.items()})[0] for i in range(0, n, b)])


# runs each model's fused (level all) kernels in another process (under qemu): argv feeds.npz out.npz models...
RUNNER = "import sys, numpy as np, onnxruntime as ort\n" + inspect.getsource(batched) + """
feeds = dict(np.load(sys.argv[1]))
out = {}
for i, path in enumerate(sys.argv[3:]):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    out[str(i)] = batched(s, {k.partition("/")[2]: v for k, v in feeds.items() if k.partition("/")[0] == str(i)})
np.savez(sys.argv[2], **out)
"""


@contextlib.contextmanager
def pass_options(**fixed):
    """``InsertQDQPass`` options the verbs do not expose (the remedy), fixed for a block (a
    keyword the verb passes itself wins)."""
    from gencompress.passes.insert_qdq import InsertQDQPass

    original = InsertQDQPass.Options
    InsertQDQPass.Options = functools.partial(original, **fixed)
    try:
        yield
    finally:
        InsertQDQPass.Options = original


def run(path, feeds, level):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    return batched(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), feeds)


def psnr(ref, out, peak):
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def run_haswell(folder: Path, jobs: list[tuple[Path, dict]]) -> list[np.ndarray]:
    """The fused (level all) output of each model on an emulated Haswell."""
    packed = {f"{i}/{k}": v for i, (_, feeds) in enumerate(jobs) for k, v in feeds.items()}
    np.savez(folder / "feeds.npz", **packed)
    cmd = ["qemu-x86_64", "-cpu", "Haswell", sys.executable, "-c", RUNNER, str(folder / "feeds.npz"), str(folder / "out.npz"), *[str(p) for p, _ in jobs]]
    subprocess.run(cmd, check=True, capture_output=True)
    out = np.load(folder / "out.npz")
    return [out[str(i)] for i in range(len(jobs))]


def ort_static(src: Path, out: Path, calib: dict, reduce_range: bool) -> None:
    import contextlib as cl
    import io
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calib])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)
    with cl.redirect_stdout(io.StringIO()):
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def speed(src: Path, models: dict, ref, rounds: int, cpu_time: bool = False) -> dict:
    """``{(variant, batch): float p50 / variant p50}``, all sessions timed interleaved: wall time
    with 2 intra-op threads, or (``cpu_time``) the process's CPU time with one intra-op thread,
    20 runs per slot at batch 1 (time the process waits descheduled does not count, so the other
    work of a shared machine barely moves it)."""
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.runtime_check.latency import time_interleaved
    from gencompress.runtime_check.sessions import make_session

    threads = 1 if cpu_time else 2
    sessions = {"float": make_session(str(src), threads=threads, label="float")}
    sessions.update({v: make_session(str(p), threads=threads, label=v) for v, p in models.items()})
    out = {}
    for batch in (1, 64):
        feeds = sample_inputs(specs_of_model(ref), batch, seed=3)
        if cpu_time:
            times = _cpu_times(sessions, feeds, rounds, 20 if batch == 1 else 1)
        else:
            times = time_interleaved(sessions, feeds, runs=rounds * (10 if batch == 1 else 1), warmup=3)
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        out.update({(v, batch): p50["float"] / p50[v] for v in models})
    return out


def _cpu_times(sessions: dict, feeds: dict, rounds: int, runs: int) -> dict:
    """``{label: [CPU seconds of ``runs`` runs per round]}``, sessions interleaved (order reversed every other round)."""
    import time

    labels = list(sessions)
    for label in labels:
        for _ in range(3):
            sessions[label].run(None, feeds)
    times = {label: [] for label in labels}
    for i in range(rounds):
        for label in labels if i % 2 == 0 else labels[::-1]:
            start = time.process_time()
            for _ in range(runs):
                sessions[label].run(None, feeds)
            times[label].append(time.process_time() - start)
    return times


ZOO = ["dcgan", "vae", "rvae", "cgan"]


def model_names(args: list[str]) -> list[str]:
    from gencompress.models.conv_families import FAMILIES as CONV
    from gencompress.models.families import FAMILIES

    groups = {"zoo": ZOO, "families": [f"family:{n}" for n in FAMILIES], "conv": [f"conv:{n}" for n in CONV]}
    return [m for a in args for m in groups.get(a, [a])]


def export_model(name: str, path: Path) -> None:
    from gencompress.exporter.export import export

    kind, _, base = name.rpartition(":")
    if kind == "conv":
        from gencompress.exporter.families import export_family

        export_family(base, path, legacy=True)
    elif kind == "family":
        from gencompress.models.families import FAMILIES

        export(FAMILIES[base][0](), path)
    else:
        export(name, path)


def build_variants(name, src, folder, args, ref):
    """``[(objective, variant, path, layers changed)]`` for one model, built natively."""
    from gencompress import quantize
    from gencompress.runtime_check.calibration import calibration_inputs

    built = []
    for objective in args.objectives:
        for variant in args.variants:
            out = folder / f"{name.replace(':', '_')}_{objective}_{variant}.onnx"
            kernels, remedy, uint8_cost = VARIANTS[variant]
            fixed = {"saturation_remedy": remedy} if uint8_cost is None else {"saturation_remedy": remedy, "uint8_cost": uint8_cost}
            try:
                with pass_options(**fixed):
                    result = quantize(src, out, objective=objective, int8_kernels=kernels, check=False)
            except Exception as e:  # a family the quantizer refuses: say so in the table
                print(f"{name} {objective} {variant}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
                continue
            changed = sum(1 for layer in result.get("layers", []) if "saturation" in layer)
            built.append((objective, variant, out, changed))
    if args.ort:
        calib = calibration_inputs(ref, size=64, seed=0)
        for variant in ("ort", "ort reduce_range"):
            out = folder / f"{name.replace(':', '_')}_{variant.replace(' ', '_')}.onnx"
            try:
                ort_static(src, out, calib, variant.endswith("reduce_range"))
                built.append(("-", variant, out, "-"))
            except Exception as e:
                print(f"{name} {variant}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["zoo", "families", "conv"])
    parser.add_argument("--objectives", nargs="*", default=["balanced", "size"])
    parser.add_argument("--variants", nargs="*", default=["vnni", "portable"], choices=list(VARIANTS))
    parser.add_argument("--eval-size", type=int, default=16)
    parser.add_argument("--ort", action="store_true", help="add onnxruntime's quantize_static rows")
    parser.add_argument("--no-avx2", action="store_true", help="skip the emulated AVX2 runs")
    parser.add_argument("--speed", action="store_true", help="also time float / vnni / portable at batch 1 and 64 (objective size)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cpu-time", action="store_true", help="--speed by CPU time on one intra-op thread (a loaded machine) instead of wall time on two")
    args = parser.parse_args(argv)
    # the variants differ in pass options quantize's output cache does not key on: build each
    os.environ["GENCOMPRESS_OUTPUT_CACHE"] = "off"

    import onnx
    import onnxruntime as ort

    from gencompress.isa import host_isa
    from gencompress.runtime_check.fidelity import held_back_inputs, output_peak

    off, full = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    rows, speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = []
        for name in model_names(args.models):
            src = folder / f"{name.replace(':', '_')}.onnx"
            export_model(name, src)
            ref = onnx.load(str(src))
            feeds = held_back_inputs(ref, 0, args.eval_size)
            floats = run(src, feeds, off)
            peak = output_peak(ref, floats)[0]
            for objective, variant, out, changed in build_variants(name, src, folder, args, ref):
                row = {"model": name, "objective": objective, "variant": variant, "changed": changed, "peak": peak,
                       "exact": psnr(floats, run(out, feeds, off), peak), "host": psnr(floats, run(out, feeds, full), peak), "avx2": float("nan")}
                rows.append(row)
                jobs.append((out, feeds, floats, row))
                print(f"{name} {objective} {variant}: exact {row['exact']:.2f} host {row['host']:.2f}", file=sys.stderr, flush=True)
            print(f"built {name} ({len(rows)} rows)", file=sys.stderr, flush=True)
            if args.speed and "size" in args.objectives:
                paths = {v: folder / f"{name.replace(':', '_')}_size_{v}.onnx" for v in args.variants}
                speeds.append((name, speed(src, {v: p for v, p in paths.items() if p.exists()}, ref, args.rounds, args.cpu_time)))
        if not args.no_avx2:
            for (_, _, floats, row), fused in zip(jobs, run_haswell(folder, [(p, f) for p, f, _, _ in jobs])):
                row["avx2"] = psnr(floats, fused, row["peak"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"host ISA: {host_isa()}; emulated: x86-64 AVX2 (qemu-x86_64 -cpu Haswell); load average {' '.join(load)}")
    print(f"PSNR vs float, dB, {args.eval_size} held-back inputs")
    print("| model | objective | variant | layers changed | exact | host fused | AVX2 fused |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['objective']} | {r['variant']} | {r['changed']} | {r['exact']:.2f} | {r['host']:.2f} | {r['avx2']:.2f} |")
    if speeds:
        clock = "CPU time, 1 intra-op thread" if args.cpu_time else "wall time, 2 intra-op threads"
        print(f"\nspeed vs float on this host ({host_isa()}), objective size, p50 ratio, {args.rounds} interleaved rounds, {clock}")
        print("| model | " + " | ".join(f"{v} b{b}" for b in (1, 64) for v in args.variants) + " |")
        print("|---" * (1 + 2 * len(args.variants)) + "|")
        for name, r in speeds:
            print(f"| {name} | " + " | ".join(f"{r[(v, b)]:.2f}x" if (v, b) in r else "-" for b in (1, 64) for v in args.variants) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
