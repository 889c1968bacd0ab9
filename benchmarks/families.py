"""int8 size, PSNR and speed per generator family (models/families.py), ours vs onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, the same calibration set).

    python benchmarks/families.py [--families unet attention conv:srgan] [--rounds 40]

Per family: export (seeded weights), ``gencompress.compress`` (cleanup -> rewrites -> QDQ,
no bench) and ``gencompress.quantize`` (their weights must match), onnxruntime's quantizer,
PSNR against float on held-back latents, and batch-1 latency of float / ours / ORT timed
interleaved in one process (2 intra-op threads, spinning off). Prints the load average: the
machine is shared, read the ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from quantize_vs_ort import ort_quantize  # noqa: E402


def main(argv=None) -> int:
    import onnx

    import gencompress
    from gencompress.exporter.export import export
    from gencompress.exporter.families import export_family
    from gencompress.models.families import FAMILIES
    from gencompress.output import table
    from gencompress.runtime_check.calibration import calibration_inputs
    from gencompress.runtime_check.fidelity import Evaluator
    from gencompress.verbs.quantizers import eval_inputs
    from gencompress.verbs.compress import compress
    from gencompress.verbs.check import bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES),
                        help="names in models/families.py, or conv:NAME for models/conv_families.py at its benchmark size (e.g. conv:srgan)")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    print(f"load avg {os.getloadavg()[0]:.2f} at start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gencompress-families-") as tmp:
        tmp = Path(tmp)
        for name in args.families:
            stem = name.replace(":", "_")
            src = tmp / f"{stem}.onnx"
            if name.startswith("conv:"):
                export_family(name[5:], src)
                bound = None
            else:
                cls, bound = FAMILIES[name]
                export(cls(), src)
            size = os.path.getsize(src)
            reference = onnx.load(str(src))
            evaluator = Evaluator(reference, eval_inputs(reference, 0, 64))
            ours = gencompress.quantize(src, tmp / f"{stem}.ours.onnx", calib_size=args.calib_size, objective="size")
            comp = compress(src, tmp / f"{stem}.c", bench=False, samples=64, flags={"calib_size": args.calib_size, "objective": "size"})
            fp16 = gencompress.quantize(src, tmp / f"{stem}.fp16.onnx", mode="fp16")
            feeds = calibration_inputs(reference, size=args.calib_size, seed=0)
            ort_path = tmp / f"{stem}.ort.onnx"
            try:
                ort_quantize(src, ort_path, feeds, "minmax", 99.99, batch=2 if "fused" in name else 64)
                ort_ratio, ort_psnr = os.path.getsize(ort_path) / size, evaluator.psnr(onnx.load(str(ort_path)))
            except Exception as e:  # onnxruntime's quantizer fails on some graphs: say so
                print(f"{name}: onnxruntime quantize_static failed ({type(e).__name__}: {str(e)[:100]})")
                ort_ratio = ort_psnr = None
            timed = bench(tmp / f"{stem}.ours.onnx", reference=src, batches=(2 if "fused" in name else 1,), threads=(2,), runs=args.rounds, memory=False)
            speed = timed["results"][0]["speedup"]
            ort_speed = None
            if ort_ratio is not None:
                t2 = bench(ort_path, reference=src, batches=(2 if "fused" in name else 1,), threads=(2,), runs=args.rounds, memory=False)
                ort_speed = t2["results"][0]["speedup"]
            rows.append((
                name, "-" if bound is None else f"{bound:.2f}", f"{ours['ratio']:.3f}x", f"{comp['sizes']['ratio']:.3f}x", "-" if ort_ratio is None else f"{ort_ratio:.3f}x",
                f"{fp16['ratio']:.3f}x", f"{ours['psnr_db']}", "-" if ort_psnr is None else f"{ort_psnr:.2f}",
                f"{speed:.2f}x", "-" if ort_speed is None else f"{ort_speed:.2f}x", "; ".join(ours["warnings"]) or "-",
            ))
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(table(["family", "bound", "int8 quantize", "int8 compress", "int8 ORT", "fp16", "PSNR ours dB", "PSNR ORT dB", "speed ours b1", "speed ORT b1", "warnings"], rows))
    print(f"\nload avg {os.getloadavg()[0]:.2f} at end; sizes relative to the float file; speed = float p50 / model p50 (batch 1; batch 2 for the fixed-batch fused StyleGAN2), interleaved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
