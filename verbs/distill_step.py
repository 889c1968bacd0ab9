"""The recipe step ``distill``: distill the graph being compressed against the model the recipe started from.

``run_recipe`` hands the step its teacher (the pre-recipe model) and the steps that follow it
(``set_context``). With ``quantize_aware: auto`` (the default) the step trains through the
weight rounding of the first quantization step after it: ``insert_qdq``, ``plan_int8`` or
``weight_only_quantize`` bits 8 → int8 per channel, ``weight_only_quantize`` bits 4 → int4
blocks of its ``block_size``; ``fp16_convert`` or none → plain float training.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from gencompress.verbs.distill import DEFAULTS, check_options
from gencompress.errors import GencompressError
from gencompress.passes.registry import STATIC_INT8, GencompressPass, register

QUANTIZE_AWARE_CHOICES = ("auto", "none", "int8", "int4")


def quantize_aware_for(later_steps: list[dict]) -> tuple[str | None, int]:
    """(mode, int4 block size) the first quantization step after distillation stores weights with."""
    for step in later_steps:
        options = step.get("options") or {}
        if step["pass"] in STATIC_INT8:  # plan_int8 stores every weight int8, computed in int8 or float
            return "int8", 64
        if step["pass"] == "weight_only_quantize":
            bits = options.get("bits", 8)
            return ("int4" if bits == 4 else "int8"), int(options.get("block_size", 64))
        if step["pass"] == "fp16_convert":
            return None, 64
    return None, 64


@register("distill")
class DistillPass(GencompressPass):
    """Train the graph's float weights to reproduce the pre-recipe model's outputs.

    Guarantees: nodes, names, graph inputs and outputs unchanged; only initializer values
    change; exact zeros of a weight stay zero; deterministic for a seed.
    """

    @dataclass(frozen=True)
    class Options:
        steps: int = DEFAULTS["steps"]
        batch: int = DEFAULTS["batch"]
        lr: float | None = DEFAULTS["lr"]  # None: 2e-3, or 3e-5 for an unpruned student trained quantization-aware
        seed: int = DEFAULTS["seed"]
        threads: int = DEFAULTS["threads"]
        data: str | None = None  # .npz of real inputs instead of prior draws
        quantize_aware: str = "auto"  # auto | none | int8 | int4

        def __post_init__(self):
            if self.quantize_aware not in QUANTIZE_AWARE_CHOICES:
                raise ValueError(f"quantize_aware must be one of {', '.join(QUANTIZE_AWARE_CHOICES)}, not {self.quantize_aware!r}")
            check_options(steps=self.steps, batch=self.batch, lr=self.lr, seed=self.seed, threads=self.threads, quantize_aware=None)

    def __init__(self, options=None):
        super().__init__(options)
        self.teacher = None
        self.later_steps: list[dict] = []

    def set_context(self, teacher, later_steps: list[dict]) -> None:
        """The teacher (``onnx.ModelProto`` of the pre-recipe model) and the recipe steps after this one."""
        self.teacher, self.later_steps = teacher, list(later_steps)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from gencompress.verbs.distill import distill_model

        if self.teacher is None:
            raise GencompressError("distill: no teacher model (the step runs inside a recipe, whose input model is the teacher)")
        opts = self.options
        block = 64
        if opts.quantize_aware == "auto":
            mode, block = quantize_aware_for(self.later_steps)
        else:
            mode = None if opts.quantize_aware == "none" else opts.quantize_aware
        self.report = distill_model(self.teacher, model, steps=opts.steps, batch=opts.batch, lr=opts.lr, seed=opts.seed,
                                    threads=opts.threads, data=opts.data, quantize_aware=mode, block_size=block)
        return ir.passes.PassResult(model, True)
