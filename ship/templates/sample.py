#!/usr/bin/env python3
"""Run this bundle's model with onnxruntime and numpy only (no torch, no gencompress).

    python sample.py --n 16 --seed 0 --out samples.png    # image grid of the first image-like output
    python sample.py --n 8 --seed 0 --out samples.npz     # arrays: input.NAME and output.NAME

Latents are drawn from the priors in manifest.json with numpy.random.default_rng(seed), input by
input in manifest order, as one batch: the same draws as ``gencompress check --seed SEED``, so
outputs can be compared with the ones measured on the build machine.
"""

from __future__ import annotations

import argparse
import json
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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
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
    parser.add_argument("--out", required=True, help="FILE.png (image grid) or FILE.npz (inputs and outputs)")
    parser.add_argument("--model", default=str(HERE / "model.onnx"), help="model (default: model.onnx beside this script)")
    parser.add_argument("--manifest", default=str(HERE / "manifest.json"), help="manifest (default: beside this script)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        parser.error("--out must end in .png or .npz")
    manifest = json.loads(Path(args.manifest).read_text())
    feeds = draw(manifest["inputs"], args.n, args.seed)
    outputs, ms = run(Path(args.model), feeds, manifest.get("batch"), args.threads)
    if out.suffix.lower() == ".npz":
        np.savez(out, **{f"input.{k}": v for k, v in feeds.items()}, **{f"output.{k}": v for k, v in outputs.items()})
    else:
        shown = next((o for o in manifest["outputs"] if o.get("kind") in ("image", "sequence")), None)
        if shown is None:
            parser.error("no output is an image or a sequence; use --out FILE.npz")
        out.write_bytes(png_bytes(grid(outputs[shown["name"]], shown["kind"], shown.get("display_range"))))
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in outputs.items())
    print(f"wrote {out}: {args.n} samples (seed {args.seed}), {shapes}; {ms:.3f} ms per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
