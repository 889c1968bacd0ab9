"""Argument checks at the Python API boundary: ``gencompress.quantize(123, ...)`` is a user error.

``gencompress.<verb>`` is the verb wrapped by ``checked``: arguments are bound to the verb's
signature (an unknown or missing argument is a ``GencompressError``, not a ``TypeError``),
every argument annotated with a scalar type (``int``, ``float``, ``bool``, ``str``, optionally
``| None``) must have that type, and the arguments every verb names alike are checked by name
(``NAMED``: a seed's range, lists of layer names, input specs, compress's flags and sweep).
Paths and richer values are checked by the verbs themselves.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import os

import numpy as np

from gencompress.errors import GencompressError, short

_SCALARS = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)), "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)), "a number"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "None": (lambda v: v is None, "None"),
}


SEED_MAX = 2**32 - 1  # numpy takes any seed >= 0, torch.manual_seed at most 2**64 - 1: one range for all


def in_range(value, option: str, low, high):
    """``value`` if ``low <= value <= high`` (NaN fails), else a user error naming ``option``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not low <= value <= high:
        raise GencompressError(f"{option} {short(value)}: must be {low}..{high}")
    return value


def seed_value(value, option: str = "--seed") -> int:
    if not isinstance(value, numbers.Integral):
        raise GencompressError(f"{option} {short(value)}: must be an integer")
    return int(in_range(value, option, 0, SEED_MAX))


# Limits on counts a user gives: beyond them a run would hang for hours or exhaust memory.
MAX_RUNS = 100_000
MAX_WARMUP = 10_000
# bench: seconds one configuration (provider, threads, batch) may take, warm-up and timed runs of
# every model; a model so large that the asked runs would not fit gets fewer (at least
# MIN_BUDGET_RUNS), and the result says so. Small models never reach it (the zoo: 100 runs in ~1 s)
BENCH_BUDGET_S = 120.0
MIN_BUDGET_RUNS = 3
MAX_SAMPLES = 1_000_000
MAX_BATCH = 1_000_000
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))
MAX_STEPS = 10_000_000  # training steps (train, distill): ~50x the longest default, a typo above this


def positive_int(value, option: str, limit: int | None = None) -> int:
    """``value`` as an int when it is a whole number in 1..``limit`` (an integral float or a
    numeric string too, as a CLI or a YAML file may give it), else a user error naming ``option``."""
    wrong = GencompressError(f"{option} must be a positive integer, got {short(value)}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, str)):
        raise wrong
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise wrong from None
    if v <= 0 or v != value and str(v) != value:
        raise wrong
    if limit is not None and v > limit:
        raise GencompressError(f"{option} {v} is above the limit of {limit:,}")
    return v


def positive_ints(values, option: str, limit: int | None = None, *, what: str | None = None) -> list[int]:
    """One positive integer or a list/tuple of them (the API's ``batches=64`` or ``batches=(1, 64)``;
    None is none), each checked by ``positive_int``; with ``what``, at least one is required."""
    if values is None:
        values = []
    elif isinstance(values, numbers.Integral) and not isinstance(values, (bool, np.bool_)):
        values = [values]
    elif not isinstance(values, (list, tuple)):
        raise GencompressError(f"{option} must be a list of positive integers, got {short(values)}")
    if not values and what:
        raise GencompressError(f"give at least one {what}")
    return [positive_int(v, option, limit) for v in values]


def _names(value, name: str, verb: str) -> None:
    """A layer-name list: None, one string (comma-separated) or a list/tuple of strings."""
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise GencompressError(f"gencompress.{verb}: {name} must be a list of node, op type or weight names, got {short(value)}")


def _specs(value, name: str, verb: str) -> None:
    """Input specs of a torch model (export, compress): None, one ``NAME=SHAPE...`` string or a list of them."""
    from gencompress.inputs import InputSpec

    if value is None or isinstance(value, (str, InputSpec)):
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, InputSpec)) for v in value):
        raise GencompressError(f"gencompress.{verb}: {name} must be a list of input specs such as 'z=1x100', got {short(value)}")


def _flags(value, name: str, verb: str) -> None:
    if value is not None and (not isinstance(value, dict) or not all(isinstance(k, str) for k in value)):
        raise GencompressError(f"gencompress.{verb}: {name} must be a dict of option names to values, got {short(value)}")


def _sweep(value, name: str, verb: str) -> None:
    if value is None:
        return
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (list, tuple)) and value[1]):
        raise GencompressError(f"gencompress.{verb}: {name} must be (option name, [values...]), e.g. ('bits', [8, 4]); got {short(value)}")


def _block_size(value, name: str, verb: str) -> None:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        in_range(value, f"gencompress.{verb}: {name}", 16, 65_536)  # numpy cannot allocate the scales of a larger one


def _seed(value, name: str, verb: str) -> None:
    if value is not None and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        seed_value(value, f"gencompress.{verb}: {name}")


def _callable(value, name: str, verb: str) -> None:
    if value is not None and not callable(value):
        raise GencompressError(f"gencompress.{verb}: {name} must be a function or None, got {short(value)}")


def _words(value, name: str, verb: str) -> None:
    """A choice list (ship targets, web backends): one comma-separated string or a list of strings."""
    if value is None and name == "ship_targets":
        return
    if not isinstance(value, str) and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        raise GencompressError(f"gencompress.{verb}: {name} must be a string or a list of strings, got {short(value)}")


def _path(value, name: str, verb: str) -> None:
    import os

    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise GencompressError(f"gencompress.{verb}: {name} must be a file path or None, got {short(value)}")
    if value is not None:
        _required_path(value, name, verb)


def _required_path(value, name: str, verb: str) -> None:
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise GencompressError(f"gencompress.{verb}: {name} must be a file path, got {short(value)}")
    if isinstance(value, str) and ":" in value and verb in ("compress", "export", "distill") and name == "in_path":
        return  # a zoo name or file.py:Class, not a file path
    from gencompress.onnx_io import as_path

    as_path(value, f"gencompress.{verb}: {name}")  # empty, NUL, or a name the OS refuses (over 255 bytes)


def out_dir_path(value, role: str = "OUT_DIR"):
    """A verb's output folder (compress, ship, sweep), from the CLI and the API alike: a path the OS
    accepts (``onnx_io.as_path``: a name it refuses is one line, not an OSError from ``exists()``),
    new or a folder; anything else there is refused naming what it is."""
    import stat

    from gencompress.onnx_io import as_path

    out = as_path(value, role)
    try:
        mode = out.stat().st_mode
    except OSError:
        return out  # nothing there (or below a file): making the folder says why
    if not stat.S_ISDIR(mode):
        kinds = ((stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
        kind = next((name for test, name in kinds if test(mode)), "not a folder")
        raise GencompressError(f"{out}: exists and is {kind}; {role} must be a folder")
    return out


def _counts(value, name: str, verb: str) -> None:
    """Batch sizes or thread counts: one integer or a non-empty list of integers (ranges: the verb's)."""
    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))

    if not integer(value) and not (isinstance(value, (list, tuple)) and value and all(integer(v) for v in value)):
        raise GencompressError(f"gencompress.{verb}: {name} must be an integer or a non-empty list of integers, got {short(value)}")


def _arrays(value, name: str, verb: str) -> None:
    """Real inputs: None, an .npz path or folder, or a dict of input name -> numeric array of samples."""
    import os

    if value is None or isinstance(value, (str, os.PathLike)):
        return
    if not isinstance(value, dict) or not value:
        raise GencompressError(f"gencompress.{verb}: {name} must be an .npz path, a folder or a dict of input name -> array, got {short(value)}")
    for key, array in value.items():
        a = np.asarray(array) if isinstance(array, (np.ndarray, list, tuple)) else None
        if not isinstance(key, str) or a is None or a.ndim < 1 or a.dtype.kind not in "biuf":
            raise GencompressError(f"gencompress.{verb}: {name}[{short(key)}] must be a numeric array of samples (dim 0), got {short(array)}")


# argument name -> check(value, name, verb), for the verbs that take it; (verbs, check)
NAMED = {
    "log": (None, _callable),
    "timer": (None, _callable),
    "targets": ({"ship"}, _words),
    "ship_targets": ({"compress"}, _words),
    "web_backends": ({"ship"}, _words),
    "checkpoint": (None, _path),
    "in_path": (None, _required_path),
    "out_path": (None, _required_path),
    "out": (None, lambda value, name, verb: (_path if verb == "train" else _required_path)(value, name, verb)),
    "model": ({"ship"}, _required_path),
    "batches": ({"compress", "bench", "quantize", "export"}, _counts),
    "threads": ({"compress", "bench"}, _counts),
    "data": ({"distill"}, _arrays),
    "exclude": (None, _names),
    "include": (None, _names),
    "inputs": (None, lambda value, name, verb: (_specs if verb in ("export", "compress") else _arrays)(value, name, verb)),
    "flags": (None, _flags),
    "sweep": ({"compress"}, _sweep),
    "seed": (None, _seed),
    "block_size": (None, _block_size),
}


def _rule(annotation):
    """(predicate, description) for a scalar annotation such as ``"int | None"``; else None."""
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None)
        if annotation is None:
            return None
    atoms = [a.strip() for a in annotation.split("|")]
    if not atoms or any(a not in _SCALARS for a in atoms):
        return None
    tests = [_SCALARS[a] for a in atoms]
    return (lambda v: any(test(v) for test, _ in tests)), " or ".join(d for _, d in tests)


def check_types(fn, arguments: dict, where: str) -> None:
    """Each of ``arguments`` (name -> value) has the scalar type ``fn`` annotates that parameter
    with, else a user error such as ``gencompress.compress: flags: sparsity must be a number, got
    'half'``; the names every verb checks alike (``NAMED``, e.g. ``exclude``) are checked too."""
    for name, value in arguments.items():
        parameter = inspect.signature(fn).parameters.get(name)
        rule = _rule(parameter.annotation) if parameter is not None and parameter.annotation is not parameter.empty else None
        if rule is not None and not rule[0](value):
            raise GencompressError(f"gencompress.{where}: {name} must be {rule[1]}, got {short(value)}")
        verbs, check = NAMED.get(name, (set(), None))
        if check is not None and verbs is None:
            check(value, name, where)


MAX_TARGET_PSNR = 200.0  # dB; float32's own rounding is about 140 dB from exact


def target_psnr_value(value, option: str = "--target-psnr") -> float:
    """A target PSNR in (0, 200] dB: beyond, no compressed model can meet it (nor can float32)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0 < value <= MAX_TARGET_PSNR:
        raise GencompressError(f"{option} {short(value)}: must be a number of dB in (0, {MAX_TARGET_PSNR:g}]")
    return float(value)


def checked(fn):
    """``fn`` with its arguments checked against its signature (see the module doc)."""
    signature = inspect.signature(fn)
    rules = {name: _rule(p.annotation) for name, p in signature.parameters.items() if p.annotation is not p.empty}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise GencompressError(f"gencompress.{fn.__name__}: {e}") from None
        for name, value in bound.arguments.items():
            rule = rules.get(name)
            if rule is not None and not rule[0](value):
                raise GencompressError(f"gencompress.{fn.__name__}: {name} must be {rule[1]}, got {short(value)}")
            verbs, check = NAMED.get(name, (set(), None))
            if check is not None and (verbs is None or fn.__name__ in verbs):
                check(value, name, fn.__name__)
        return fn(*args, **kwargs)

    return wrapper
