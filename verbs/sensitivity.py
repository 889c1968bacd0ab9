"""`gencompress sensitivity`: quantize one layer at a time, rank layers by the damage to the output.

For each quantizable layer, the model is built with only that layer quantized (static int8 by
default: its weights, its input activations and, for Conv/ConvTranspose, its output; or
weight-only) and compared with the float model on a seeded latent set: PSNR of the output,
peak = the nominal output range recorded at export (2.0 for tanh, 1.0 for sigmoid), else the
reference's observed peak-to-peak. The lowest PSNR is the most damaging layer.

Reproducible: calibration and evaluation sets are seeded, and ties are broken by graph order.
``quantize --target-psnr`` uses the same ranking to choose which layers to keep in float.
"""

from __future__ import annotations

import time

from gencompress.errors import GencompressError


def rank_layers(quantizer, evaluator, exclude=()) -> list[dict]:
    """Layers not in ``exclude``, each quantized alone, most damaging (lowest PSNR) first."""
    from gencompress.output import progress
    from gencompress.verbs.quantizers import db

    candidates = [layer for layer in quantizer.layers if not any(p in (layer["node"], layer["op_type"], *layer["weights"]) for p in exclude)]
    rows = []
    for order, layer in enumerate(progress(candidates, desc="sensitivity", unit="layer")):
        proto, _ = quantizer.build(include=(layer["node"],))
        value = evaluator.psnr(proto)
        rows.append({**layer, "psnr_db": db(value), "_psnr": value, "_order": order})
    rows.sort(key=lambda r: (r["_psnr"], r["_order"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        del row["_psnr"], row["_order"]
    return rows


def sensitivity(
    in_path,
    *,
    mode: str = "static",
    bits: int = 8,
    calib: str = "minmax",
    calib_size: int | None = None,
    calib_data=None,
    per_tensor: bool = False,
    activations: str = "uint8",
    int8_kernels: str = "portable",
    seed: int = 0,
    percentile: float | None = None,
    block_size: int = 64,
    eval_size: int | None = None,
    log=None,
) -> dict:
    """Rank the layers of the float model at ``in_path`` by the PSNR loss of quantizing each alone."""
    import onnx_ir as ir

    from gencompress.onnx_io import load_model, refuse_nonfinite_weights, skeleton
    from gencompress.passes.insert_qdq import DEFAULT_PERCENTILE, StaticOptions
    from gencompress.runtime_check.fidelity import Evaluator
    from gencompress.verbs.quantizers import (
        check_float_model,
        db,
        eval_inputs,
        prepare,
        static_quantizer,
        validate_options,
        weight_only_quantizer,
    )

    log = log or (lambda message: None)
    started = time.perf_counter()
    percentile_given = percentile is not None
    percentile = DEFAULT_PERCENTILE if percentile is None else percentile
    if mode == "fp16":
        raise GencompressError("sensitivity works with --mode static or weight-only")
    validate_options(
        mode=mode, bits=bits, calib=calib, calib_size=calib_size, activations=activations,
        percentile=percentile, block_size=block_size, target_psnr=None, eval_size=eval_size, seed=seed,
        calib_data=calib_data, per_tensor=per_tensor, percentile_given=percentile_given, int8_kernels=int8_kernels,
    )
    reference = load_model(in_path)
    refuse_nonfinite_weights(reference, in_path)
    model = ir.serde.deserialize_model(reference)  # wraps the proto's tensors: one deserialization for the check and the quantizer
    check_float_model(reference, in_path, model)
    header = skeleton(reference)
    model = prepare(model)
    del reference
    evaluator = Evaluator(in_path, eval_inputs(header, seed, eval_size), header=header)  # eval_size None: the model's default (fidelity.default_samples)
    if mode == "static":
        static = StaticOptions(calib=calib, calib_size=calib_size, calib_data=calib_data, seed=seed, percentile=percentile,
                               per_tensor=per_tensor, activations=activations, int8_kernels=int8_kernels)
        quantizer = static_quantizer(model, static, log=log)
    else:
        quantizer = weight_only_quantizer(model, bits=bits, block_size=block_size)
    ranking = rank_layers(quantizer, evaluator)
    full, _ = quantizer.build()
    report = {
        "input": str(in_path),
        "mode": mode,
        "bits": bits,
        "metric": "PSNR (dB) of the output against float, one layer quantized at a time; lowest = most damaging",
        "evaluation": evaluator.describe(),
        "all_quantized_psnr_db": db(evaluator.psnr(full)),
        "layers": ranking,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if quantizer.calibration:
        report["calibration"] = quantizer.calibration
    return report
