"""What pruning buys on the zoo: parameters, file bytes, deflated bytes, sparse-initializer bytes, PSNR.

Zeros do not shrink a dense ONNX file; they compress (deflate), and at high sparsity they can be
stored as SparseTensorProto. Channel pruning shrinks the tensors themselves. No fine-tuning is
done here, so PSNR (against the unpruned model, on 64 seeded latents, peak-to-peak from the
model's metadata) shows the raw damage each setting does.

    python benchmarks/prune_size.py [--models dcgan,vae,rvae,cgan] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

CONFIGS = [
    ("unstructured 50%", {"mode": "unstructured", "sparsity": 0.5}),
    ("unstructured 75%", {"mode": "unstructured", "sparsity": 0.75}),
    ("unstructured 90%", {"mode": "unstructured", "sparsity": 0.9}),
    ("global 75%", {"mode": "unstructured", "sparsity": 0.75, "scope": "global"}),
    ("2:4", {"mode": "nm", "nm": "2:4"}),
    ("channel 25%", {"mode": "channel", "sparsity": 0.25}),
    ("channel 50%", {"mode": "channel", "sparsity": 0.5}),
]


def psnr(reference, candidate, peak: float) -> float:
    import numpy as np

    mse = float(np.mean((reference.astype(np.float64) - candidate) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def measure(name: str, folder: Path) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from gencompress.exporter.export import export
    from gencompress.inputs import output_range_of_model, sample_inputs, specs_of_model
    from gencompress.verbs.prune import prune

    src = folder / f"{name}.onnx"
    export(name, src)
    proto = onnx.load(str(src))
    feeds = sample_inputs(specs_of_model(proto), 64, seed=0)
    peak = output_range_of_model(proto) or 2.0

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    reference = run(src)
    rows = []
    for label, options in CONFIGS:
        out = folder / f"{name}.{len(rows)}.onnx"
        report = prune(src, out, **options)
        sparse = prune(src, folder / f"{name}.{len(rows)}.sparse.onnx", sparse_initializers=True, **options)
        t = report["totals"]
        rows.append(
            {
                "model": name,
                "setting": label,
                "params": f"{t['params_before']}->{t['params_after']}",
                "nonzero": t["nonzero_params_after"] / t["nonzero_params_before"],
                "bytes": t["bytes_after"] / t["bytes_before"],
                "deflated": t["deflate_after"] / t["deflate_before"],
                "sparse_bytes": sparse["totals"]["bytes_after"] / t["bytes_before"],
                "psnr_db": round(psnr(reference, run(out), peak), 2),
                "bytes_before": t["bytes_before"],
                "deflate_before": t["deflate_before"],
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dcgan,vae,rvae,cgan")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gencompress-prune-") as tmp:
        for name in args.models.split(","):
            rows += measure(name.strip(), Path(tmp))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from gencompress.output import table

    print("sizes are fractions of the unpruned model's; PSNR in dB against it (no fine-tuning)")
    print(
        table(
            ["model", "setting", "params", "non-zero", "bytes", "deflated", "sparse init", "PSNR"],
            [
                [r["model"], r["setting"], r["params"], f"{r['nonzero']:.3f}", f"{r['bytes']:.3f}", f"{r['deflated']:.3f}", f"{r['sparse_bytes']:.3f}", r["psnr_db"]]
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
