"""`gencompress.distill`: train a student ONNX graph's float weights to reproduce its teacher.

    import gencompress
    r = gencompress.distill("g.onnx", "g.pruned.onnx", "g.distilled.onnx", steps=2000)
    r["psnr_before_db"], r["psnr_after_db"], r["loss_curve"]

The student keeps its graph (nodes, names, inputs, outputs); only initializer values change,
and a pruned weight's zeros stay zero. Fidelity before and after is measured against the
teacher in onnxruntime on held-back seeded latents (the training draws use ``seed``, the check
``seed + EVAL_SEED_OFFSET``), or on the ``data`` rows when real inputs are given.
"""

from __future__ import annotations

import math
import os

import numpy as np

from gencompress.errors import GencompressError

# batch 192: compress dcgan --sparsity 0.5 --distill 2000 gave 40.19 dB distilled / 39.44 after int8 at
# batch 64, 40.64 / 39.90 at 128, 40.80 / 40.00 at 192 (gradient noise; a step costs 1.9x / 2.6x one of 64)
DEFAULTS = {"steps": 2000, "batch": 192, "lr": None, "seed": 0, "threads": 1}
# lr None picks one: a student that must win back pruning damage needs large steps; a student that
# already matches its teacher and only learns around int8/int4 rounding needs steps far below one
# rounding step
# (dcgan unstructured 50%, 2000 steps: 38.29 dB at 2e-3, 38.34 at 1e-3, worse at 5e-3; channel 50%:
# 34.12 at 1e-3, 34.65 at 2e-3). dcgan int4 QAT, 2000 steps, best checkpoint: 41.09 dB at 2e-4,
# 42.77 at 5e-5, 42.79 at 2e-5.
LR_DISTILL = 2e-3
LR_QUANTIZE_ONLY = 3e-5
QUANTIZE_ONLY_DB = 60.0  # a float student at least this close to its teacher counts as unpruned
CHECK_SAMPLES = 256


def check_options(*, steps, batch, lr, seed, threads, quantize_aware) -> None:
    """One-line errors naming the CLI flag, for every option a user sets."""
    from gencompress.arguments import MAX_STEPS, MAX_THREADS, in_range, positive_int, seed_value

    # --batch: held to the sampling budget once the inputs are known (_checked_pair)
    for flag, value, limit in (("--steps", steps, MAX_STEPS), ("--batch", batch, 2**62), ("--threads", threads, MAX_THREADS)):
        positive_int(value, flag, limit)
    if lr is not None:
        in_range(lr, "--lr", 1e-12, 1)
    seed_value(seed)
    if quantize_aware not in (None, "int8", "int4"):
        raise GencompressError(f"--quantize-aware {quantize_aware!r}: one of int8, int4")


def check_pair(teacher_proto, student_proto) -> None:
    """Teacher and student must take the same inputs and give the same outputs (names, dtypes, shapes)."""
    from gencompress.runtime_check.fidelity import check_compatible

    try:
        check_compatible(teacher_proto, student_proto)
    except GencompressError as e:
        raise GencompressError(str(e).replace("reference and candidate are not comparable", "teacher and student differ")
                               .replace("reference", "teacher").replace("candidate", "student")) from None
    for side in ("input", "output"):
        t_values = {vi.name: vi for vi in getattr(teacher_proto.graph, side)}
        for vi in getattr(student_proto.graph, side):
            if vi.name not in t_values:
                continue
            a = [d.dim_value if d.HasField("dim_value") else None for d in t_values[vi.name].type.tensor_type.shape.dim]
            b = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for i, (x, y) in enumerate(zip(a[1:], b[1:]), 1):
                if x is not None and y is not None and x != y:
                    shape = lambda dims: "x".join("N" if j == 0 else str(d) if d is not None else "?" for j, d in enumerate(dims))
                    raise GencompressError(f"teacher and student differ: {side} {vi.name!r} is {shape(a)} in the teacher, {shape(b)} in the student")


def fidelity(teacher_proto, student_proto, *, seed: int, threads: int, inputs=None) -> list[dict]:
    """Per output: PSNR (dB) of the student against the teacher on held-back latents (or ``inputs``)."""
    from gencompress.runtime_check.fidelity import EVAL_SEED_OFFSET
    from gencompress.verbs.check import check

    result = check(teacher_proto, student_proto, samples=CHECK_SAMPLES, seed=seed + EVAL_SEED_OFFSET, threads=threads, inputs=inputs)
    return [{"name": o["name"], "psnr_db": o.get("psnr_db"), "peak": o.get("peak")} for o in result["outputs"]]


def _worst(rows) -> float | None:
    values = [r["psnr_db"] for r in rows if r["psnr_db"] is not None]
    return min(values) if values else None


def _checked_pair(teacher_proto, student, batch: int, data):
    """Teacher and student checked before any work (float, the same inputs and outputs, every op
    mirrored, the batch); returns (student proto, input specs, the data's arrays or None)."""
    import onnx_ir as ir

    from gencompress.batches import fixed_batch
    from gencompress.distillation.mirror import Mirror, refuse_quantized
    from gencompress.inputs import check_batch_budget, load_npz_inputs, specs_of_model

    refuse_quantized(ir.serde.deserialize_model(teacher_proto), "teacher")
    refuse_quantized(student, "student")
    student_proto = ir.serde.serialize_model(student)
    check_pair(teacher_proto, student_proto)
    Mirror(student)  # unsupported ops fail here, before any work
    specs = specs_of_model(teacher_proto)
    check_batch_budget(specs, batch, "--batch inputs")
    fixed = fixed_batch(teacher_proto) or fixed_batch(student_proto)
    if fixed is not None and fixed != batch:
        raise GencompressError(f"the model's inputs fix the batch size to {fixed}; use --batch {fixed}")
    if data is None:
        return student_proto, specs, None
    if isinstance(data, (str, os.PathLike)):
        return student_proto, specs, load_npz_inputs(data, specs)
    return student_proto, specs, {k: np.asarray(v) for k, v in dict(data).items()}


def distill_model(
    teacher_proto,
    student,
    *,
    steps: int = DEFAULTS["steps"],
    batch: int = DEFAULTS["batch"],
    lr: float | None = DEFAULTS["lr"],
    seed: int = DEFAULTS["seed"],
    threads: int = DEFAULTS["threads"],
    data=None,
    quantize_aware: str | None = None,
    block_size: int = 64,
    features: bool = False,
    on_step=None,
) -> dict:
    """Distill the onnx_ir ``student`` in place against ``teacher_proto`` (an ``onnx.ModelProto``).

    ``data``: None (seeded prior draws), an ``.npz`` path or a dict of arrays keyed by input name.
    Returns the report: options, PSNR before/after per output, the loss curve, wall time.
    """
    import onnx_ir as ir

    from gencompress.distillation.train import Batches, train
    from gencompress.runtime_check.sessions import make_session

    check_options(steps=steps, batch=batch, lr=lr, seed=seed, threads=threads, quantize_aware=quantize_aware)
    student_proto, specs, arrays = _checked_pair(teacher_proto, student, batch, data)
    make_session(teacher_proto, threads=threads, label="teacher")  # a teacher onnxruntime cannot load fails here
    before = fidelity(teacher_proto, student_proto, seed=seed, threads=threads, inputs=arrays)
    if quantize_aware is None and all(b["psnr_db"] == math.inf for b in before):
        # the float student already gives the teacher's outputs (e.g. a prune that removed nothing):
        # Adam's normalised steps would only add noise (rvae: inf -> 67.7 dB after 1000 steps).
        # Quantization-aware training still has the rounding to learn around.
        return {"steps": 0, "batch": batch, "lr": lr, "seed": seed, "threads": threads, "inputs": "data" if arrays is not None else "prior",
                "input_priors": {s.name: s.describe_prior() for s in specs},
                "quantize_aware": quantize_aware, "psnr_before_db": math.inf, "psnr_after_db": math.inf,
                "outputs": [{"name": b["name"], "psnr_before_db": math.inf, "psnr_after_db": math.inf, "peak": b["peak"]} for b in before],
                "wall_s": 0.0, "weights": 0, "masked_weights": [], "fake_quantized": 0, "matched_features": 0, "best_step": 0, "loss_curve": [], "holdout_curve": [],
                "skipped": "the student already reproduces the teacher exactly"}
    if lr is None:
        worst = _worst(before)
        lr = LR_QUANTIZE_ONLY if quantize_aware and worst is not None and worst >= QUANTIZE_ONLY_DB else LR_DISTILL
    info = train(teacher_proto, student, Batches(specs, batch, seed, arrays), steps=steps, lr=lr, seed=seed,
                 threads=threads, quantize=quantize_aware, block_size=block_size, features=features, on_step=on_step)
    after = fidelity(teacher_proto, ir.serde.serialize_model(student), seed=seed, threads=threads, inputs=arrays)
    return {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "inputs": "data" if arrays is not None else "prior",
        "input_priors": {s.name: s.describe_prior() for s in specs},  # what the prior draws were (natural images for image inputs)
        "quantize_aware": quantize_aware,
        "psnr_before_db": _worst(before),
        "psnr_after_db": _worst(after),
        "outputs": [{"name": b["name"], "psnr_before_db": b["psnr_db"], "psnr_after_db": a["psnr_db"], "peak": b["peak"]}
                    for b, a in zip(before, after)],
        "wall_s": round(info["wall_s"], 2),
        "weights": info["weights"],
        "masked_weights": info["masked_weights"],
        "fake_quantized": info["fake_quantized"],
        "matched_features": len(info["matched_features"]),
        "best_step": info["best_step"],
        "loss_curve": info["loss_curve"],
        "holdout_curve": info["holdout_curve"],
    }


def distill(
    teacher,
    student,
    out,
    *,
    steps: int = DEFAULTS["steps"],
    batch: int = DEFAULTS["batch"],
    lr: float | None = DEFAULTS["lr"],
    seed: int = DEFAULTS["seed"],
    threads: int = DEFAULTS["threads"],
    data=None,
    quantize_aware: str | None = None,
    log=None,
    progress: bool = False,
) -> dict:
    """Distill the model file ``student`` against ``teacher`` and write the result to ``out``.

    ``out`` is written atomically (an interrupted run leaves nothing) and never over an input.
    """
    import onnx_ir as ir

    from gencompress.onnx_io import load_model, refuse_nonfinite_weights, refuse_overwrite, save_model

    check_options(steps=steps, batch=batch, lr=lr, seed=seed, threads=threads, quantize_aware=quantize_aware)
    inputs = [teacher, student] + ([data] if isinstance(data, (str, os.PathLike)) else [])
    refuse_overwrite(out, inputs)
    teacher_proto = load_model(teacher)
    refuse_nonfinite_weights(teacher_proto, teacher)
    student_proto = load_model(student)
    refuse_nonfinite_weights(student_proto, student)
    student_model = ir.serde.deserialize_model(student_proto)
    del student_proto
    bar = None
    on_step = None
    if progress:
        from gencompress.output import progress as make_bar

        bar = make_bar(total=steps, desc="distill", unit="step")

        def on_step(step, loss):
            bar.update(1)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{loss:.3g}", refresh=False)

    try:
        report = distill_model(teacher_proto, student_model, steps=steps, batch=batch, lr=lr, seed=seed, threads=threads,
                               data=data, quantize_aware=quantize_aware, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    save_model(student_model, out, inputs=inputs)
    return {"teacher": str(teacher), "student": str(student), "output": str(out), **report}
