"""Recipes run: the registered graph passes, plus the steps that run a model.

The steps that run a model are registered here, from the layer that runs models: ``plan_int8``
(``verbs/int8_plan.py``: times int8 against float per layer) and ``distill`` (trains the student).
``insert_qdq`` gets the calibrator that measures the activation ranges its options lack.
"""

from __future__ import annotations

import onnx_ir as ir

from gencompress.verbs import distill_step as _distill_step  # noqa: F401  (registers "distill")
from gencompress.passes.insert_qdq import InsertQDQPass
from gencompress.passes.registry import make_options, pass_class, validate_recipe
from gencompress.runtime_check.calibration import calibrate_ranges, calibrating_in_place_of
from gencompress.runtime_check.saturation import input_moments
from gencompress.verbs import int8_plan as _int8_plan  # noqa: F401  (registers "plan_int8")


def make_step(name: str, options: dict | None = None, *, before_rewrites=None):
    """The pass (or model-running step) ``name`` with ``options``, wired to what it needs at run time.
    ``before_rewrites``: for ``insert_qdq`` right after ``rewrite_for_int8``, the model before the
    rewrites, calibrated in place of the rewritten one as quantize does (``calibrating_in_place_of``)."""
    cls = pass_class(name)
    opts = make_options(name, options)
    if cls is InsertQDQPass:
        calibrate = calibrate_ranges if before_rewrites is None else calibrating_in_place_of(before_rewrites)
        return cls(opts, calibrate=calibrate, moments=input_moments)
    return cls(opts)


def _before_rewrites(model, step: dict):
    """The model as quantize calibrates it before ``rewrite_for_int8``: BatchNormalization folded
    (if the step folds it), nothing else rewritten. A clone sharing the weights."""
    from gencompress.passes.fold_batchnorm import FoldBatchNormPass

    before = model.clone()
    if make_options(step["pass"], step["options"]).fold_batchnorm:
        FoldBatchNormPass()(before)
    return before


def run_recipe(model, recipe: list[dict]):
    """Run a validated recipe on an onnx_ir model in place; return (model, the list of step reports)."""
    reports = []
    steps = validate_recipe(recipe)
    # a distill step learns from the model as it was before the recipe ran
    teacher = ir.serde.serialize_model(model) if any(s["pass"] == "distill" for s in steps) else None
    before_rewrites = None
    for i, step in enumerate(steps):
        # insert_qdq right after the int8 rewrites calibrates the model before them, as quantize does
        p = make_step(step["pass"], step["options"], before_rewrites=before_rewrites if step["pass"] == "insert_qdq" else None)
        follows = step["pass"] == "rewrite_for_int8" and i + 1 < len(steps) and steps[i + 1]["pass"] == "insert_qdq"
        before_rewrites = _before_rewrites(model, step) if follows else None
        if teacher is not None and hasattr(p, "set_context"):
            p.set_context(teacher, steps[i + 1:])
        model = p(model).model
        reports.append({"pass": step["pass"], "options": step["options"], "report": getattr(p, "report", None)})
    return model, reports
