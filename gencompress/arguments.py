"""Argument checks at the Python API boundary: ``gencompress.quantize(123, ...)`` is a user error.

``gencompress.<verb>`` is the verb wrapped by ``checked``: arguments are bound to the verb's
signature (an unknown or missing argument is a ``GencompressError``, not a ``TypeError``) and
every argument annotated with a scalar type (``int``, ``float``, ``bool``, ``str``, optionally
``| None``) must have that type. Paths and richer values are checked by the verbs themselves.
"""

from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np

from gencompress.errors import GencompressError

_SCALARS = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)), "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)), "a number"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "None": (lambda v: v is None, "None"),
}


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
                raise GencompressError(f"gencompress.{fn.__name__}: {name} must be {rule[1]}, got {_short(value)}")
        return fn(*args, **kwargs)

    return wrapper
