#!/usr/bin/env python3
"""Run this bundle's model with onnxruntime and numpy only (no torch, no gencompress).

    python sample.py --n 16 --seed 0 --out samples.png    # image grid of the first image-like output
    python sample.py --n 8 --seed 0 --out samples.npz     # arrays: input.NAME and output.NAME
    python sample.py --verify     # recompute the bundle's test vectors here; exit 1 below the manifest's bound
    python sample.py --bench --batch 1 --runs 50 --threads 2    # init, first run, steady state, peak memory

Latents are drawn from the priors in manifest.json with numpy.random.default_rng(seed), input by
input in manifest order, as one batch: the same draws as ``gencompress check --seed SEED``, so
outputs can be compared with the ones measured on the build machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def draw(inputs: list, n: int, seed: int) -> dict:
    """``n`` seeded draws from every input's prior (manifest ``inputs``), as one batch."""
    if n <= 0:
        raise SystemExit(f"sample.py: error: --n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = (n, *spec["shape"][1:])
        dtype = DTYPES[spec["dtype"]]
        prior = spec["prior"]
        if prior["kind"] == "normal":
            x = rng.standard_normal(shape)
            if (prior["mean"], prior["std"]) != (0.0, 1.0):
                x = prior["mean"] + prior["std"] * x
            feeds[spec["name"]] = x.astype(dtype)
        elif prior["kind"] == "uniform":  # [low, high)
            feeds[spec["name"]] = rng.uniform(prior["low"], prior["high"], size=shape).astype(dtype)
        elif prior["kind"] == "onehot":  # one-hot over the last axis
            feeds[spec["name"]] = np.eye(prior["classes"], dtype=dtype)[rng.integers(0, prior["classes"], size=shape[:-1])]
        elif prior["kind"] == "integers":  # uniform over [low, high], both included
            feeds[spec["name"]] = rng.integers(prior["low"], prior["high"], size=shape, endpoint=True, dtype=np.int64).astype(dtype)
        else:
            raise SystemExit(f"sample.py: error: input {spec['name']!r} has prior {prior['kind']!r}, which this runner does not know")
    return feeds


def run(model: Path, feeds: dict, batch, threads: int) -> tuple[dict, float]:
    """Outputs for all samples (chunks of ``batch`` when the graph fixes it), and ms per run."""
    session = session_of(model, threads)
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    chunk = batch or n
    parts = {name: [] for name in names}
    start_time = time.perf_counter()
    runs = 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        piece = {k: v[start:stop] for k, v in feeds.items()}
        pad = chunk - (stop - start)
        if pad:  # a fixed-batch graph: repeat the last sample, drop its outputs
            piece = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in piece.items()}
        for name, arr in zip(names, session.run(None, piece)):
            parts[name].append(np.asarray(arr)[: stop - start])
        runs += 1
    ms = (time.perf_counter() - start_time) * 1e3 / runs
    return {name: np.concatenate(p, axis=0) for name, p in parts.items()}, ms


def session_of(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def read_tensors(path: Path, entries: list) -> dict:
    """The arrays a test_vectors.bin holds (raw little-endian, described by the manifest's entries)."""
    blob = path.read_bytes()
    out = {}
    for e in entries:
        dtype = np.dtype(DTYPES[e["dtype"]]).newbyteorder("<")
        out[(e["role"], e["name"])] = np.frombuffer(blob, dtype, count=int(np.prod(e["shape"])), offset=e["offset"]).reshape(e["shape"])
    return out


def psnr_db(got: np.ndarray, want: np.ndarray, peak: float) -> float:
    mse = float(np.mean((got.astype(np.float64) - want.astype(np.float64)) ** 2))
    if not np.isfinite(mse):
        return float("-inf")
    return float("inf") if mse == 0 else float(10 * np.log10(peak * peak / mse))


def verify(manifest: dict, folder: Path, model: Path, threads: int) -> tuple[bool, str]:
    """Recompute the bundle's test vectors with this machine's onnxruntime; (passed, one line)."""
    import onnxruntime as ort

    tv = manifest["test_vectors"]
    where = f"{tv['n']} test vectors against onnxruntime {tv['onnxruntime']} CPU on {tv['isa']}; here onnxruntime {ort.__version__}, {platform.machine()}"
    problems = []
    recorded = (manifest.get("files") or {}).get(manifest.get("model", "model.onnx"), {}).get("sha256")
    if model == folder / manifest.get("model", "model.onnx") and recorded:
        if hashlib.sha256(model.read_bytes()).hexdigest() != recorded:
            problems.append(f"{model.name} differs from the manifest's sha256")
    tensors = read_tensors(folder / tv["file"], tv["tensors"])
    feeds = {name: arr for (role, name), arr in tensors.items() if role == "input"}
    try:
        session = session_of(model, threads)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        db = {e["name"]: psnr_db(np.asarray(got[e["name"]]), tensors[("output", e["name"])], e["peak"])
              for e in tv["tensors"] if e["role"] == "output"}
        worst = min(db.values())
        shown = "identical" if worst == float("inf") else f"{worst:.1f} dB"
        if not worst >= tv["bound_db"]:
            problems.append(f"{shown} < {tv['bound_db']:g} dB bound")
    except Exception as e:  # a damaged model may not even load: that is a failed check, not a crash
        shown = None
        problems.append(f"onnxruntime could not run {model.name} ({type(e).__name__}: {' '.join(str(e).split())[:160]})")
    if problems:
        return False, f"verify FAILED: {'; '.join(problems)} ({where})"
    return True, f"verified: {shown} (bound {tv['bound_db']:g} dB; {where})"


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (None where the resource module is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def bench(model: Path, feeds: dict, threads: int, runs: int) -> dict:
    """Like the anchors' benchmark tools: session init, the first run, then the median of ``runs`` after 3 warm-up runs."""
    before = peak_rss_mb()
    t = time.perf_counter()
    session = session_of(model, threads)
    init_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    session.run(None, feeds)
    first_ms = (time.perf_counter() - t) * 1e3
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return {"batch": len(next(iter(feeds.values()))), "threads": threads, "runs": runs, "init_ms": init_ms, "first_run_ms": first_ms,
            "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "peak_rss_mb_before_session": before, "peak_rss_mb": peak_rss_mb()}


def to_u8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((np.nan_to_num(x.astype(np.float64), nan=lo) - lo) / span * 255), 0, 255).astype(np.uint8)


def grid(samples: np.ndarray, kind: str, display_range) -> np.ndarray:
    """Samples as one picture: images [N, C, H, W] (grey, or RGB for 3+ channels), sequences [N, T, F] as T×F tiles."""
    if kind == "image":
        tiles = np.transpose(samples[:, :3], (0, 2, 3, 1)) if samples.shape[1] >= 3 else samples[:, 0]
    else:
        tiles = samples.reshape(samples.shape[0], samples.shape[1], -1)
    finite = samples[np.isfinite(samples)]
    lo, hi = display_range or ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
    tiles = to_u8(tiles, lo, hi)
    n, h, w = tiles.shape[:3]
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    gap = 2
    canvas = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, *tiles.shape[3:]), 48, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return canvas


def png_bytes(pixels: np.ndarray) -> bytes:
    """8-bit grey [H, W] or RGB [H, W, 3] PNG, written with zlib and struct."""
    h, w = pixels.shape[:2]
    color = 2 if pixels.ndim == 3 else 0
    raw = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, -1)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="latent seed (default 0)")
    parser.add_argument("--out", help="FILE.png (image grid) or FILE.npz (inputs and outputs)")
    parser.add_argument("--verify", action="store_true", help="recompute the manifest's test vectors; exit 1 below its bound")
    parser.add_argument("--bench", action="store_true", help="time init, first run and steady state (median of --runs); peak memory")
    parser.add_argument("--batch", type=int, default=1, help="--bench batch (default 1; a fixed-batch graph uses its own)")
    parser.add_argument("--runs", type=int, default=50, help="--bench timed runs (default 50)")
    parser.add_argument("--json", action="store_true", help="--bench: print the figures as JSON")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="model (default: model.onnx beside this script)")
    parser.add_argument("--manifest", default=str(HERE / "manifest.json"), help="manifest (default: beside this script)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args(argv)
    if not (args.out or args.verify or args.bench):
        parser.error("give --out FILE, --verify or --bench")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".png", ".npz"):
        parser.error("--out must end in .png or .npz")
    if args.runs <= 0 or args.batch <= 0 or args.threads < 0:
        parser.error("--runs and --batch must be positive, --threads 0 (onnxruntime's default) or more")
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text())
    model = Path(args.model)
    status = 0
    if args.verify:
        passed, line = verify(manifest, manifest_path.parent, model, args.threads)
        print(line)
        status = 0 if passed else 1
    if args.bench:
        figures = bench(model, draw(manifest["inputs"], manifest.get("batch") or args.batch, args.seed), args.threads, args.runs)
        if args.json:
            print(json.dumps(figures))
        else:
            memory = "" if figures["peak_rss_mb"] is None else f", peak memory {figures['peak_rss_mb']:.0f} MB"
            print(f"bench: batch {figures['batch']}, {figures['threads']} threads: init {figures['init_ms']:.1f} ms, first run "
                  f"{figures['first_run_ms']:.3f} ms, steady {figures['median_ms']:.3f} ms (median of {figures['runs']}){memory}")
    if out is None:
        return status
    feeds = draw(manifest["inputs"], args.n, args.seed)
    outputs, ms = run(model, feeds, manifest.get("batch"), args.threads)
    if out.suffix.lower() == ".npz":
        np.savez(out, **{f"input.{k}": v for k, v in feeds.items()}, **{f"output.{k}": v for k, v in outputs.items()})
    else:
        shown = next((o for o in manifest["outputs"] if o.get("kind") in ("image", "sequence")), None)
        if shown is None:
            parser.error("no output is an image or a sequence; use --out FILE.npz")
        out.write_bytes(png_bytes(grid(outputs[shown["name"]], shown["kind"], shown.get("display_range"))))
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in outputs.items())
    print(f"wrote {out}: {args.n} samples (seed {args.seed}), {shapes}; {ms:.3f} ms per run")
    return status


if __name__ == "__main__":
    sys.exit(main())
