"""What the search for saturation-safe int8 weights costs ``quantize --objective size``: time and
peak memory of portable (the default) against vnni (no search) and onnxruntime's quantize_static.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/saturation_search.py                          # the 12M and 47M DCGANs
    .venv/bin/python benchmarks/saturation_search.py --sizes 47M --rounds 3 --before 21ca8ca

Per size (DCGAN generators of ``benchmarks/scale.py``, random weights), each variant in a fresh
process with an empty cache folder (no cached calibration), rounds interleaved (A B C / C B A):
``ort`` quantize_static (QDQ, per-channel, uint8 activations, MinMax), ``portable`` and ``vnni``
(``quantize(objective="size", check=False)`` with that ``int8_kernels``), and with ``--before REV``
portable with the package at REV (its files from git archive). Wall time of the call alone
(imports and model building excluded), peak resident memory (VmHWM, including ~150 MB of
imports) against the model file, and the time inside ``int8_saturation.saturation_free``. The
same calibration draws for every variant. Medians of the rounds; the load average is printed
with every line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402  (DCGAN generators, VmHWM, quantize_static)

VARIANTS = ("ort", "portable", "vnni")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def child(variant: str, src: str, out: str, calib: int) -> dict:
    import onnx  # noqa: F401  (imported before timing, like every tool's own imports)
    import onnxruntime  # noqa: F401

    import gencompress.passes.insert_qdq as insert_qdq
    from gencompress import quantize

    spent = [0.0]
    search = insert_qdq.saturation_free

    def timed(*a, **k):
        started = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            spent[0] += time.perf_counter() - started

    insert_qdq.saturation_free = timed
    scale.CALIB = calib
    start = time.perf_counter()
    if variant == "ort":
        scale.ort_quantize(src, out)
    else:
        quantize(src, out, calib_size=calib, objective="size", int8_kernels="vnni" if variant == "vnni" else "portable", check=False)
    return {"seconds": time.perf_counter() - start, "peak_bytes": scale.vm_hwm(), "search_seconds": spent[0], "load": load()}


def run_child(variant: str, src: Path, out: Path, calib: int, before: Path | None) -> dict:
    # an empty cache folder per run: a cached calibration (plan_cache.cached_ranges) would skip the
    # float run that quantize_static pays
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GENCOMPRESS_CACHE": tempfile.mkdtemp(dir=out.parent, prefix="cache.")}
    env.pop("GENCOMPRESS_PLAN_CACHE", None)
    if variant == "before":
        env["PYTHONPATH"] = str(before)  # found before the editable install's finder
    cmd = [sys.executable, __file__, "--child", "portable" if variant == "before" else variant, str(src), str(out), str(calib)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"{variant} on {src.name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {"seconds": float("nan"), "peak_bytes": 0, "search_seconds": float("nan"), "load": load()}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4)
    parser.add_argument("--sizes", nargs="*", default=["12M", "47M"], choices=list(scale.SIZES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--before", help="git revision whose portable quantize is timed beside (the 'before' variant)")
    args = parser.parse_args(argv)
    if args.child:
        variant, src, out, calib = args.child
        print(json.dumps(child(variant, src, out, int(calib))))
        return 0
    from plan_cost import before_tree

    variants = [*VARIANTS, *(["before"] if args.before else [])]
    rows = []
    print(f"load {load()} at start; calib {args.calib}; variants {' '.join(variants)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="saturation_search.") as tmp:
        tmp = Path(tmp)
        before = before_tree(args.before, tmp / "before") if args.before else None
        for size in args.sizes:
            src = tmp / f"{size}.onnx"
            scale.build_generator(scale.SIZES[size], src)
            file_bytes = scale.file_bytes(src)
            got = {v: [] for v in variants}
            for r in range(args.rounds):
                for v in variants if r % 2 == 0 else variants[::-1]:
                    res = run_child(v, src, tmp / f"{size}_{v}.onnx", args.calib, before)
                    got[v].append(res)
                    print(f"{size} {v:9s} {res['seconds']:6.1f} s  peak {res['peak_bytes'] / 2**20:6.0f} MiB ({res['peak_bytes'] / file_bytes:4.1f}x file)"
                          f"  search {res['search_seconds']:5.1f} s  load {res['load']}", flush=True)
            if "before" in got:
                same = (tmp / f"{size}_before.onnx").read_bytes() == (tmp / f"{size}_portable.onnx").read_bytes()
                print(f"{size} portable before/after byte-identical: {same}", flush=True)
            rows.append((size, file_bytes, {v: (np.median([g["seconds"] for g in got[v]]), np.median([g["peak_bytes"] for g in got[v]]),
                                                 np.median([g["search_seconds"] for g in got[v]])) for v in variants}))
    print(f"quantize --objective size, median of {args.rounds} interleaved rounds, fresh process each; load average {load()} at the end")
    print("| model | " + " | ".join(variants) + " | portable / ort time | portable / vnni time |")
    print("|---|" + "---|" * (len(variants) + 2))
    for size, file_bytes, m in rows:
        cells = [f"{m[v][0]:.1f} s, {m[v][1] / file_bytes:.1f}× file" + (f" (search {m[v][2]:.1f} s)" if v in ("portable", "before") else "") for v in variants]
        print(f"| {size} DCGAN | " + " | ".join(cells) + f" | {m['portable'][0] / m['ort'][0]:.2f}× | {m['portable'][0] / m['vnni'][0]:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
