"""Resolve a MODEL argument to a torch generator: a zoo name, ``file.py:Name`` or ``package.module:attr``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from gencompress.errors import GencompressError, short
from gencompress.inputs import InputSpec


@dataclass
class ResolvedModel:
    module: object  # torch.nn.Module in eval mode
    inputs: tuple[InputSpec, ...] | None  # None: the user must give --input
    output_names: tuple[str, ...] | None
    output_range: float | None
    source: str


def resolve_model(spec: str, checkpoint=None) -> ResolvedModel:
    """Build the module MODEL names and load ``checkpoint`` into it (zoo models default to theirs)."""
    from gencompress.models import get_zoo_entry

    if ":" not in spec:
        if spec.endswith(".py") or "/" in spec or spec.endswith(".onnx"):
            raise GencompressError(f"{spec}: expected a zoo name, file.py:ClassOrFactory or package.module:attr")
        entry = get_zoo_entry(spec)
        if checkpoint is None:
            module = entry.generator()
        else:
            module = entry.generator(load_weights=False)
            _load(module, checkpoint)
        return ResolvedModel(module.eval(), entry.inputs, entry.output_names, entry.output_range, f"zoo:{entry.name}")

    location, _, attr = spec.rpartition(":")
    if not attr.isidentifier():
        raise GencompressError(f"{spec}: {attr!r} is not a valid Python name")
    namespace = _load_python_file(location) if location.endswith(".py") else _import_module(location)
    if not hasattr(namespace, attr):
        raise GencompressError(f"{spec}: {location} has no attribute {attr!r}")
    module = _instantiate(getattr(namespace, attr), spec)
    if checkpoint is not None:
        _load(module, checkpoint)
    return ResolvedModel(module.eval(), module_inputs(module, spec), None, None, spec)


def module_inputs(module, source: str) -> tuple | None:
    """A user module's own ``gencompress_inputs``: one spec string or a list of spec strings /
    InputSpecs (anything else is the module's error, named in one line)."""
    from gencompress.inputs import InputSpec

    inputs = getattr(module, "gencompress_inputs", None)
    if inputs is None:
        return None
    if isinstance(inputs, (str, InputSpec)):
        inputs = (inputs,)
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, (str, InputSpec)) for s in inputs):
        text = repr(inputs)
        raise GencompressError(f"{source}: gencompress_inputs must be a list of input specs such as 'z=1x100', got {text[:60]}")
    return tuple(inputs) or None


@contextlib.contextmanager
def user_code(what: str, failed: str = "failed"):
    """Run a user's module code: its prints go to stderr (stdout is for ``--json``), and a
    ``sys.exit`` or any error in it is a one-line user error, never a silent exit."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except (GencompressError, KeyboardInterrupt):
        raise
    except SystemExit as e:
        raise GencompressError(f"{what}: called sys.exit({short(e.code)})") from None
    except BaseException as e:
        msg = " ".join(str(e).split())[:200]
        raise GencompressError(f"{what}: {failed} ({type(e).__name__}: {msg})") from None


def _load(module, checkpoint) -> None:
    from gencompress.checkpoint import load_checkpoint_into

    load_checkpoint_into(module, checkpoint)


def _load_python_file(location: str):
    path = Path(location)
    if not path.is_file():
        raise GencompressError(f"{location}: no such file")
    name = f"_gencompress_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as `python file.py` would: the file may import its neighbours
    try:
        with user_code(location, "failed to import"):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(location: str):
    try:
        with user_code(location, "failed to import"):
            return importlib.import_module(location)
    except GencompressError as e:
        cause = e.__context__
        if isinstance(cause, ModuleNotFoundError) and cause.name and location.startswith(cause.name):
            raise GencompressError(f"{location}: no module named {cause.name!r}") from None
        raise


def _instantiate(obj, spec: str):
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise GencompressError(f"{spec}: is neither an nn.Module nor a class or factory")
    try:
        with user_code(spec, "failed to build"):
            module = obj()
    except GencompressError as e:
        if isinstance(e.__context__, TypeError):
            raise GencompressError(f"{spec}: cannot be built without arguments ({e.__context__})") from None
        raise
    if not isinstance(module, torch.nn.Module):
        raise GencompressError(f"{spec}: returned {type(module).__name__}, expected a torch.nn.Module")
    return module
