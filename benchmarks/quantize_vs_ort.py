"""Our static int8 QDQ quantizer side by side with onnxruntime's ``quantize_static``, per zoo model.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/quantize_vs_ort.py                      # minmax, all zoo models
    .venv/bin/python benchmarks/quantize_vs_ort.py --calib minmax percentile entropy --calib-size 256

Both quantizers get the same float model, the same calibration inputs (seeded draws from the
model's latent prior) and the same method; both write QDQ with int8 per-channel weights and
uint8 activations. Ours runs with its default settings: the int8 rewrites (ConvTranspose ->
Conv/Gemm) are on for models with a ConvTranspose (column "rewrite"). PSNR is measured against
the float model on a held-back seeded latent set (the one ``gencompress quantize`` reports),
with the output's nominal range as peak. Time is the wall time of the whole quantization call
(calibration included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def export_zoo(name: str, folder: Path) -> Path:
    from gencompress.exporter.export import export

    out = folder / f"{name}.onnx"
    export(name, out)
    return out


def ort_quantize(float_path: Path, out_path: Path, feeds: dict, method: str, percentile: float, batch: int = 64) -> float:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(feeds.values())))
            self.batches = iter([{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self.batches, None)

    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    logging.getLogger().setLevel(logging.ERROR)  # "Please consider pre-processing before quantization"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print their progress
        quantize_static(
            str(float_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
            extra_options=extra,
        )
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["dcgan", "vae", "rvae", "cgan"])
    parser.add_argument("--calib", nargs="*", default=["minmax"], choices=["minmax", "percentile", "entropy", "mse"])
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--percentile", type=float, default=99.99)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from gencompress.output import table
    from gencompress.runtime_check.calibration import calibration_inputs
    from gencompress.runtime_check.fidelity import Evaluator
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.quantizers import eval_inputs

    rows = []
    with tempfile.TemporaryDirectory(prefix="gencompress-bench-") as tmp:
        tmp = Path(tmp)
        for name in args.models:
            float_path = export_zoo(name, tmp)
            import onnx

            reference = onnx.load(str(float_path))
            evaluator = Evaluator(reference, eval_inputs(reference, args.seed, args.eval_size))
            feeds = calibration_inputs(reference, size=args.calib_size, seed=args.seed)
            size = os.path.getsize(float_path)
            for method in args.calib:
                ours = tmp / f"{name}.{method}.ours.onnx"
                start = time.perf_counter()
                report = quantize(float_path, ours, calib=method, calib_size=args.calib_size, seed=args.seed, percentile=args.percentile,
                                  objective="size")  # every layer int8, as quantize_static
                ours_time = time.perf_counter() - start
                ours_psnr = evaluator.psnr(onnx.load(str(ours)))
                ort_ratio = ort_psnr = ort_time = None
                if method in ORT_METHODS:
                    theirs = tmp / f"{name}.{method}.ort.onnx"
                    ort_time = ort_quantize(float_path, theirs, feeds, method, args.percentile)
                    ort_psnr = evaluator.psnr(onnx.load(str(theirs)))
                    ort_ratio = os.path.getsize(theirs) / size
                rows.append(
                    (
                        name,
                        method,
                        "on" if report["rewrite"]["applied"] else "off",
                        f"{os.path.getsize(ours) / size:.3f}x",
                        "-" if ort_ratio is None else f"{ort_ratio:.3f}x",
                        f"{ours_psnr:.2f}",
                        "-" if ort_psnr is None else f"{ort_psnr:.2f}",
                        "-" if ort_psnr is None else f"{ours_psnr - ort_psnr:+.2f}",
                        f"{ours_time:.2f}",
                        "-" if ort_time is None else f"{ort_time:.2f}",
                    )
                )
    headers = ["model", "calib", "rewrite", "size ours", "size ORT", "PSNR ours dB", "PSNR ORT dB", "Δ dB", "time ours s", "time ORT s"]
    print(table(headers, rows))
    print(
        f"\nint8 QDQ, per-channel int8 weights, uint8 activations; {args.calib_size} seeded latent draws for calibration (seed {args.seed}); "
        f"PSNR on {args.eval_size} held-back seeded latents, peak = nominal output range; size relative to the float file."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
