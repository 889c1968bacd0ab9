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
from gencompress.runtime_check.calibration import calibrate_ranges
from gencompress.verbs import int8_plan as _int8_plan  # noqa: F401  (registers "plan_int8")


def make_step(name: str, options: dict | None = None):
    """The pass (or model-running step) ``name`` with ``options``, wired to what it needs at run time."""
    cls = pass_class(name)
    opts = make_options(name, options)
    if cls is InsertQDQPass:
        return cls(opts, calibrate=calibrate_ranges)
    return cls(opts)


def run_recipe(model, recipe: list[dict]):
    """Run a validated recipe on an onnx_ir model in place; return (model, the list of step reports)."""
    reports = []
    steps = validate_recipe(recipe)
    # a distill step learns from the model as it was before the recipe ran
    teacher = ir.serde.serialize_model(model) if any(s["pass"] == "distill" for s in steps) else None
    for i, step in enumerate(steps):
        p = make_step(step["pass"], step["options"])
        if teacher is not None and hasattr(p, "set_context"):
            p.set_context(teacher, steps[i + 1:])
        model = p(model).model
        reports.append({"pass": step["pass"], "options": step["options"], "report": getattr(p, "report", None)})
    return model, reports
