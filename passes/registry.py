"""Pass names -> pass classes, and recipes: ordered lists of ``{pass: NAME, options: {...}}``.

A pass class registered here:
- subclasses ``GencompressPass`` (an ``onnx_ir.passes.InPlacePass``),
- has a nested frozen dataclass ``Options``; the constructor takes an ``options`` instance,
- may set ``self.report`` (a JSON-able dict) while it runs, for the CLI and report.json.

Passes register themselves with ``@register("name")``; the package ``gencompress.passes`` imports
every pass module, so any import of this module has them all. Recipe steps that run a model
(the timed int8 plan, distillation) are registered by the layer that runs models
(``verbs/recipe.py``), which also runs recipes.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from gencompress.errors import GencompressError, short

class GencompressPass(ir.passes.InPlacePass):
    """Base of the registered passes: the options it runs with and the report of its last run."""

    Options: type  # a frozen dataclass, set by each pass

    def __init__(self, options=None):
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.report: dict | None = None


_REGISTRY: dict[str, type] = {}


def register(name: str):
    def deco(cls):
        if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
            raise TypeError(f"pass {cls.__name__} needs a dataclass Options")
        _REGISTRY[name] = cls
        cls.pass_name = name
        return cls

    return deco


def available() -> dict[str, type]:
    return dict(sorted(_REGISTRY.items()))


def pass_class(name: str) -> type:
    passes = available()
    if name not in passes:
        raise GencompressError(f"unknown pass {short(name)}; known passes: {', '.join(passes)}")
    return passes[name]


def make_options(name: str, options: dict[str, Any] | None):
    """Build a pass's Options from plain data; unknown or ill-typed options are user errors."""
    cls = pass_class(name)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise GencompressError(
            f"pass {name!r}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(fields) or 'no options'}"
        )
    for key, value in options.items():
        if key == "ranges":
            options[key] = _ranges(name, value)
            continue
        if isinstance(value, list):
            options[key] = tuple(value)
        _check_scalar(name, fields[key], options[key])
        _check_range(name, key, options[key])
    try:
        return cls.Options(**options)
    except (TypeError, ValueError) as e:
        raise GencompressError(f"pass {name!r}: {short(str(e), 300)}") from None


# Options annotated with one of these scalar types must hold that type (a recipe's
# ``hoist_activations: "false"`` would otherwise run as True), and lists of names
# (``exclude: 3`` would fail deep in a pass; ``exclude: conv1`` would match single letters);
# other annotations are checked by the Options' own __post_init__.
_SCALARS = {
    "bool": ((bool, np.bool_), "true or false"),
    "int": ((numbers.Integral,), "an integer"),
    "float": ((numbers.Real,), "a number"),
    "str": ((str,), "a string"),
}


NAME_LISTS = ("tuple[str, ...]", "tuple[str, ...] | None")


def _check_scalar(name: str, field: dataclasses.Field, value) -> None:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", None)
    if kind in NAME_LISTS:
        if not (value is None and kind.endswith("None")) and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
            raise GencompressError(f"pass {name!r}: option {field.name} must be a list of names, got {short(value)}")
        return
    optional = isinstance(kind, str) and kind.endswith(" | None")
    kind = kind[: -len(" | None")] if optional else kind
    if kind not in _SCALARS or (optional and value is None):
        return
    allowed, what = _SCALARS[kind]
    if not isinstance(value, allowed) or (kind != "bool" and isinstance(value, (bool, np.bool_))):
        raise GencompressError(f"pass {name!r}: option {field.name} must be {what}{' or null' if optional else ''}, got {short(value)}")


# Ranges of numeric options, by option name, whichever pass takes them: (low, high, what);
# a value outside would fail deep in numpy or torch, or run to a nonsense model.
RANGES = {
    "seed": (0, 2**32 - 1, "a seed"),
    "percentile": (50, 100, "a percentile"),  # 50 itself excluded (EXCLUSIVE_LOW), as quantize --percentile
    "calib_size": (1, 1_000_000, "a number of calibration samples"),
    "steps": (1, 10_000_000, "a number of steps"),
    "batch": (1, 65_536, "a batch size"),
    "threads": (1, 1024, "a thread count"),
    "block_size": (16, 65_536, "a block size"),
    "min_size": (0, 2**62, "a weight size"),
    "max_out_channels": (1, 2**31 - 1, "a channel count"),
    "n": (1, 2**16, "N of N:M"),
    "m": (1, 2**16, "M of N:M"),
}


EXCLUSIVE_LOW = {"percentile"}


def _check_range(name: str, key: str, value) -> None:
    if key not in RANGES or value is None or isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return
    low, high, what = RANGES[key]
    above = value > low if key in EXCLUSIVE_LOW else value >= low
    if not (above and value <= high):  # NaN fails too
        span = f"above {low} up to {high}" if key in EXCLUSIVE_LOW else f"{low}..{high}"
        raise GencompressError(f"pass {name!r}: option {key} {short(value)} is out of range; {what} is {span}")


def _ranges(name: str, value) -> tuple:
    """``ranges``: a list of [tensor name, low, high] with finite low <= high, as tuples."""
    if not isinstance(value, (list, tuple)):
        raise GencompressError(f"pass {name!r}: option ranges must be a list of [tensor, low, high], got {short(value)}")
    out = []
    for entry in value:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 3 and isinstance(entry[0], str) and all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and np.isfinite(v) for v in entry[1:])
        if not ok or entry[1] > entry[2]:
            raise GencompressError(f"pass {name!r}: ranges entry {short(entry)} is not [tensor, low, high] with finite low <= high")
        out.append((entry[0], float(entry[1]), float(entry[2])))
    return tuple(out)


def make_pass(name: str, options: dict[str, Any] | None = None):
    return pass_class(name)(make_options(name, options))


# ---- recipes ---------------------------------------------------------------------------------


def validate_recipe(recipe: Any) -> list[dict]:
    """Check a recipe against the registry before anything runs; return it normalised."""
    if isinstance(recipe, dict) and "passes" in recipe:
        recipe = recipe["passes"]
    if not isinstance(recipe, list) or not recipe:
        raise GencompressError("recipe: expected a non-empty list of {pass: NAME, options: {...}}")
    steps = []
    for i, step in enumerate(recipe, 1):
        if not isinstance(step, dict) or "pass" not in step:
            raise GencompressError(f"recipe step {i}: expected a mapping with a 'pass' key")
        if not isinstance(step["pass"], str):
            raise GencompressError(f"recipe step {i}: 'pass' must be a pass name, got {short(step['pass'])}")
        extra = sorted(set(step) - {"pass", "options"})
        if extra:
            raise GencompressError(f"recipe step {i}: unknown key(s) {', '.join(extra)}")
        options = step.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise GencompressError(f"recipe step {i} ({step['pass']}): options must be a mapping of option names")
        make_options(step["pass"], options)  # raises on unknown pass / option
        steps.append({"pass": step["pass"], "options": options})
    _check_order(steps)
    return steps


STATIC_INT8 = ("insert_qdq", "plan_int8")  # calibrated, int8 weights (plan_int8: computed in int8 or float)
QUANTIZING = {*STATIC_INT8, "weight_only_quantize", "fp16_convert", "target_search"}
WEIGHT_TRAINING = {"magnitude_prune", "nm_prune", "channel_prune", "distill"}  # they need float weights


def _check_order(steps: list[dict]) -> None:
    """A step that prunes or trains float weights cannot follow one that quantized them."""
    quantized = None
    for i, step in enumerate(steps, 1):
        if step["pass"] in WEIGHT_TRAINING and quantized:
            raise GencompressError(f"recipe step {i} ({step['pass']}) comes after {quantized}: prune and distill "
                                   "the float weights first, quantize last")
        if step["pass"] in QUANTIZING and quantized is None:
            quantized = f"step {i} ({step['pass']})"


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes
MAX_RECIPE_NODES = 10_000  # values, lists and mappings once aliases are expanded


def load_recipe(path) -> list[dict]:
    """Read a recipe from a YAML or JSON file and validate it.

    The file's size and the loaded structure's node count are limited before validation, so a
    YAML alias bomb or a huge structure is refused at once instead of hanging.
    """
    if isinstance(path, bool) or not isinstance(path, (str, Path)):
        raise GencompressError(f"recipe: expected a file path, got {type(path).__name__}")
    from gencompress.onnx_io import regular_file

    path = Path(path)
    regular_file(path, "recipe")  # a missing file, a folder, /dev/zero or a FIFO: refused before reading
    with open(path, "rb") as f:
        raw = f.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise GencompressError(f"recipe {path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a short list of passes")
    try:
        text = raw.decode("utf-8")
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            import yaml

            data = yaml.load(text, Loader=_recipe_loader())  # noqa: S506  (a SafeLoader)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise GencompressError(f"recipe {path}: malformed ({type(e).__name__}: {first})") from None
    _count_nodes(data, path)
    return validate_recipe(data)


def _unique_keys(pairs) -> dict:
    """A mapping from JSON or YAML that names a key twice is refused (a later one would silently win)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {short(key)} appears twice in one mapping")
        seen[key] = value
    return seen


def _recipe_loader():
    """yaml's SafeLoader (no Python tags) that refuses a mapping naming one of its own keys twice
    (a key a ``<<: *anchor`` merge brings in may still be overridden, as YAML intends)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue  # merges: YAML's override rule; unhashable keys: the base loader's error
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"the key {short(key)} appears twice in one mapping",
                                                                key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return RecipeLoader


def _count_nodes(data, path) -> None:
    """Refuse a structure with more than MAX_RECIPE_NODES nodes (aliases counted every time)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_RECIPE_NODES:
            raise GencompressError(f"recipe {path}: more than {MAX_RECIPE_NODES:,} values (a YAML alias bomb?); refusing it")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


