"""The sweep spec: models × configurations, validated whole before any trial runs.

    models:                      # zoo names, .onnx files, file.py:Class (+ checkpoint, inputs)
      - dcgan
      - {model: g.onnx, name: mine}
      - {model: gen.py:Generator, checkpoint: gen.pt, inputs: ["z=1x100"], batch_size: 1}
    configs:                     # a grid (every combination) ...
      sparsity: [0, 0.5]
      distill: [0, 200]
      objective: size
    # ... or a list: configs: [{mode: static}, {mode: weight-only, bits: 4}, {recipe: r.yaml}]
    options: {samples: 64, bench: true, batches: [1, 64], threads: [2], runs: 50, seed: 0}

A configuration holds compress's recipe flags (``--sparsity`` → ``sparsity``), ``recipe`` or
``target_psnr``; ``options`` are compress's other arguments, the same for every trial. Relative
paths are read from the spec's folder. A trial's key is the sha256 of its model's bytes (or zoo
name + checkpoint bytes), its configuration, its options and ``gencompress.__version__``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from gencompress.errors import GencompressError
from gencompress.onnx_io import file_sha256

TOP_KEYS = {"models", "configs", "options"}
MODEL_KEYS = {"model", "name", "checkpoint", "inputs", "batch_size"}
OPTION_KEYS = {"samples": None, "seed": 0, "bench": True, "batches": [1, 64], "threads": [2], "runs": 50,
               "provider": "CPUExecutionProvider"}
TIMED_PASSES = ("plan_int8", "target_search")  # recipe steps that time models while building
MAX_TRIALS = 10_000  # a typo in a grid must not queue a million trials


@dataclass(frozen=True)
class Trial:
    key: str  # content hash: the trial's folder name and its resume identity
    model: dict  # compress's model, checkpoint, inputs, batch_size; name: the label
    config: dict  # flags, or {"recipe": [...]} (the file's steps), or {"target_psnr": x, ...}
    options: dict  # samples, seed, bench, batches, threads, runs, provider
    label: str  # "sparsity=0.5 distill=200"
    model_bytes: int  # for the memory estimate

    @property
    def times_in_build(self) -> bool:
        """Whether building this trial already times models (the int8 plan, the PSNR target search)."""
        c = self.config
        if "recipe" in c:
            return any(step["pass"] in TIMED_PASSES for step in c["recipe"])
        return "target_psnr" in c or (c.get("mode", "static") == "static" and c.get("objective", "balanced") != "size")

    @property
    def folder(self) -> str:
        return f"{_safe(self.model['name'])}/{self.key[:16]}"


def load_spec(spec, base: Path | None = None) -> list[Trial]:
    """Trials of a spec (a YAML/JSON path or a dict); every problem is one GencompressError line."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        base = path.parent
        data = _read_yaml(path)
    elif isinstance(spec, dict):
        data, base = spec, Path(base or ".")
    else:
        raise GencompressError(f"spec: expected a YAML/JSON file or a dict, got {type(spec).__name__}")
    if not isinstance(data, dict):
        raise GencompressError("spec: expected a mapping with models, configs and options")
    _no_unknown(data, TOP_KEYS, "spec")
    for key in ("models", "configs"):
        if key not in data:
            raise GencompressError(f"spec: '{key}' is missing")
    import gencompress

    models = [_model(m, i, base) for i, m in enumerate(_list(data["models"], "models"), 1)]
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise GencompressError(f"spec: two models named {next(n for n in names if names.count(n) > 1)!r}; give each a distinct 'name'")
    configs = [_config(c, base) for c in _configs(data["configs"])]
    options = _options(data.get("options") or {})
    if len(models) * len(configs) > MAX_TRIALS:
        raise GencompressError(f"spec: {len(models)} models x {len(configs)} configurations is more than {MAX_TRIALS} trials")
    trials = []
    for model, (config, label) in itertools.product(models, configs):
        identity = {"model": model["identity"], "config": config, "options": options, "version": gencompress.__version__}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        public = {k: v for k, v in model.items() if k not in ("identity", "bytes")}
        trials.append(Trial(key, public, config, options, label, model["bytes"]))
    return trials


def _read_yaml(path: Path):
    import yaml

    from gencompress.onnx_io import regular_file

    if regular_file(path, "spec") > 1 << 20:
        raise GencompressError(f"{path}: a sweep spec above 1 MB; is this the right file?")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise GencompressError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise GencompressError(f"{path}: nested too deeply to read") from None


def _no_unknown(mapping: dict, allowed, where: str) -> None:
    unknown = sorted(str(k) for k in set(mapping) - set(allowed))
    if unknown:
        raise GencompressError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")


def _list(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise GencompressError(f"spec: '{where}' must be a non-empty list")
    return value


def _key(name) -> str:
    return str(name).replace("-", "_")  # the CLI's --prune-mode is prune_mode here


def _file(base: Path, value, what: str) -> Path:
    from gencompress.onnx_io import regular_file

    if not isinstance(value, str) or not value:
        raise GencompressError(f"spec: {what} must be a file path, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base / value
    regular_file(path, what)
    return path.resolve()


def _model(entry, index: int, base: Path) -> dict:
    """compress's model arguments, a label, and the identity that goes into the trial key."""
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict) or "model" not in entry:
        raise GencompressError(f"spec: models[{index}] must be a name or a mapping with a 'model' key")
    entry = {_key(k): v for k, v in entry.items()}
    _no_unknown(entry, MODEL_KEYS, f"spec: models[{index}]")
    source = entry["model"]
    if not isinstance(source, str) or not source:
        raise GencompressError(f"spec: models[{index}].model must be a zoo name, file.py:Class or an .onnx path")
    out = {"checkpoint": None, "inputs": None, "batch_size": None}
    identity: dict = {}
    if source.endswith(".onnx"):
        if any(entry.get(k) for k in ("checkpoint", "inputs", "batch_size")):
            raise GencompressError(f"spec: models[{index}]: checkpoint, inputs and batch_size apply to a torch model, not an .onnx file")
        path = _file(base, source, f"models[{index}]")
        out["model"], identity["onnx"] = str(path), file_sha256(path)
        name, size = path.stem, path.stat().st_size
    else:
        file_part, colon, attr = source.rpartition(":")
        if colon and file_part.endswith(".py"):  # file.py:Class: the file's bytes are the model's code
            path = _file(base, file_part, f"models[{index}]")
            out["model"], identity["code"] = f"{path}:{attr}", file_sha256(path)
            name = attr
        elif colon:  # package.module:attr, importable as installed
            out["model"], identity["code"] = source, source
            name = attr
        else:
            from gencompress.models import get_zoo_entry

            zoo = get_zoo_entry(source)
            if not zoo.checkpoint.exists():
                raise GencompressError(f"spec: zoo model {source!r} has no checkpoint; run `gencompress train {source}`")
            out["model"], identity["zoo"], identity["zoo_checkpoint"] = source, source, file_sha256(zoo.checkpoint)
            name = source
        size = 0
        if entry.get("checkpoint") is not None:
            path = _file(base, entry["checkpoint"], f"models[{index}].checkpoint")
            out["checkpoint"], identity["checkpoint"] = str(path), file_sha256(path)
            size = path.stat().st_size
        elif "zoo_checkpoint" in identity:
            size = get_zoo_entry(source).checkpoint.stat().st_size
        inputs = entry.get("inputs")
        if inputs is not None:
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                raise GencompressError(f"spec: models[{index}].inputs must be a list of NAME=SHAPE[:DTYPE[:PRIOR]]")
            out["inputs"] = identity["inputs"] = list(inputs)
        batch = entry.get("batch_size")
        if batch is not None:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise GencompressError(f"spec: models[{index}].batch_size must be a positive integer")
            out["batch_size"] = identity["batch_size"] = batch
    label = entry.get("name", name)
    if not isinstance(label, str) or not label.strip():
        raise GencompressError(f"spec: models[{index}].name must be a non-empty string")
    return {**out, "name": label, "identity": identity, "bytes": size}


def _flag_keys() -> dict:
    from gencompress.verbs.compress import default_recipe

    params = inspect.signature(default_recipe).parameters
    return {k: p.default for k, p in params.items() if k not in ("timing", "seed")}  # seed is an option: one for the whole trial


def _configs(value) -> list[dict]:
    """A grid (mapping of key → value or list of values) or a list of mappings."""
    if isinstance(value, dict):
        if not value:
            raise GencompressError("spec: 'configs' is an empty grid")
        axes = []
        for k, v in value.items():
            values = v if isinstance(v, list) else [v]
            if not values:
                raise GencompressError(f"spec: configs.{k} is an empty list: the grid has no configurations")
            axes.append([(k, x) for x in values])
        return [dict(combo) for combo in itertools.product(*axes)]
    configs = _list(value, "configs")
    for i, c in enumerate(configs, 1):
        if not isinstance(c, dict):
            raise GencompressError(f"spec: configs[{i}] must be a mapping of compress flags, got {c!r}")
    return configs


def _config(raw: dict, base: Path) -> tuple[dict, str]:
    """(normalized configuration, label); the flags go through compress's own recipe builder."""
    from gencompress.verbs.compress import default_recipe

    flags = _flag_keys()
    config = {_key(k): v for k, v in raw.items()}
    label = " ".join(f"{k}={_short(v)}" for k, v in config.items()) or "defaults"
    _no_unknown(config, {*flags, "recipe", "target_psnr"}, f"spec: configuration {label!r}")
    if "recipe" in config:
        if set(config) - {"recipe"}:
            raise GencompressError(f"spec: configuration {label!r}: a recipe sets every step itself; give no other keys beside it")
        from gencompress.passes.registry import load_recipe
        from gencompress.verbs import recipe as _steps  # noqa: F401  (registers the steps that run models: distill, plan_int8)

        path = _file(base, config["recipe"], "recipe")
        return {"recipe": load_recipe(path)}, f"recipe={path.name}"
    if "exclude" in config:
        exclude = config["exclude"]
        if isinstance(exclude, str):
            exclude = [exclude]
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            raise GencompressError(f"spec: configuration {label!r}: exclude must be a list of names")
        config["exclude"] = exclude
    for k, v in config.items():
        if k in flags and not isinstance(v, (str, int, float, bool, list)) and v is not None:
            raise GencompressError(f"spec: configuration {label!r}: {k} must be a plain value, got {_short(v)}")
    for k, v in config.items():  # sparsity: 0 and 0.0 are one configuration, with one key
        if isinstance(flags.get(k), float) and isinstance(v, int) and not isinstance(v, bool):
            config[k] = float(v)
    target = config.pop("target_psnr", None)
    recipe_flags = {k: tuple(v) if k == "exclude" else v for k, v in config.items()}
    try:
        from gencompress.passes.registry import validate_recipe
        from gencompress.verbs import recipe as _steps  # noqa: F401  (registers the steps that run models)

        validate_recipe(default_recipe(**recipe_flags))  # each step's options in range: before any trial runs
    except TypeError as e:
        raise GencompressError(f"spec: configuration {label!r}: {e}") from None
    except GencompressError as e:
        raise GencompressError(f"spec: configuration {label!r}: {e}") from None
    if target is not None:
        from gencompress.arguments import target_psnr_value

        config["target_psnr"] = target_psnr_value(target, f"spec: configuration {label!r}: target_psnr")
    # the defaults filled in: {} and {mode: static} are one configuration, with one key
    return {**{k: v for k, v in flags.items() if k != "exclude"}, "exclude": [], **config}, label


def _options(raw) -> dict:
    if not isinstance(raw, dict):
        raise GencompressError("spec: 'options' must be a mapping")
    opts = {_key(k): v for k, v in raw.items()}
    _no_unknown(opts, OPTION_KEYS, "spec: options")
    out = {**OPTION_KEYS, **opts}
    for k in ("batches", "threads"):
        if isinstance(out[k], int):
            out[k] = [out[k]]
    for k in ("samples", "seed", "runs", "batches", "threads"):
        if k == "samples" and out[k] is None:
            continue  # compress's own default: 256 draws, fewer for a large model (fidelity.default_samples)
        values = out[k] if isinstance(out[k], list) else [out[k]]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= (0 if k == "seed" else 1) for v in values):
            raise GencompressError(f"spec: options.{k} must be {'a list of ' if k in ('batches', 'threads') else ''}positive integers")
    if not isinstance(out["bench"], bool):
        raise GencompressError("spec: options.bench must be true or false")
    if not isinstance(out["provider"], str):
        raise GencompressError("spec: options.provider must be a provider name")
    from gencompress.arguments import seed_value
    from gencompress.verbs.compress import checked_counts

    try:  # compress's own limits and provider names, before any trial runs
        seed_value(out["seed"], "seed")
        checked_counts(out["samples"], out["batches"], out["threads"], out["runs"], out["provider"], bench=True)
    except GencompressError as e:
        raise GencompressError(f"spec: options: {e}") from None
    return out


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
