"""Output for people and programs: JSON on stdout, plain text tables, and progress bars that stay
quiet in pipes (tqdm). No click: library code reports through these, the CLI prints them."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence


def echo_json(result: Any) -> None:
    sys.stdout.write(json.dumps(result, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(x):
    """``json.dumps``'s ``default``: numpy scalars and arrays as numbers and lists, anything else as text."""
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    rows = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_num(r[i]) for r in rows) if rows else False for i in range(len(headers))]

    def fmt(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def cell(v, digits: int = 4, decimals: int | None = None) -> str:
    """A summary table's number: ``digits`` significant digits, or ``decimals`` after the point (PSNR
    in dB: two, as every verb prints it, so check, quantize and compress show the same text)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{decimals}f}" if decimals is not None else f"{v:.{digits}g}"
    return str(v)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def _is_num(s: str) -> bool:
    try:
        float(s.rstrip("%x×"))
        return True
    except ValueError:
        return s in ("-", "")


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it"):
    """A tqdm bar on a terminal; silent when stderr is not a TTY (pipes, CI, tests)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), leave=False)
