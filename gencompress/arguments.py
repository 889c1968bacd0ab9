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


# argument name -> check(value, name, verb), for the verbs that take it; (verbs, check)
NAMED = {
    "exclude": (None, _names),
    "include": (None, _names),
    "inputs": ({"export", "compress"}, _specs),  # check/bench: an .npz path or a dict of arrays, checked there
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
