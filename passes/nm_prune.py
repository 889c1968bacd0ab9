"""N:M semi-structured pruning: at most N non-zeros in every M consecutive weights of the reduction axis."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir

from gencompress.passes.magnitude_prune import write_array
from gencompress.passes.prune_report import check_common, DEFAULT_MIN_SIZE, float_params, prune_targets
from gencompress.passes.prune_report import row, stats, totals, unmatched_warnings
from gencompress.passes.registry import GencompressPass, register


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); ValueError unless 1 <= N < M."""
    try:
        n, m = (int(p) for p in str(text).split(":"))
    except ValueError:
        raise ValueError(f"N:M pattern must look like 2:4, got {text!r}") from None
    if not 1 <= n < m:
        raise ValueError(f"N:M pattern needs 1 <= N < M, got {text!r}")
    return n, m


def nm_mask(array: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep-mask with the N largest |w| of every M consecutive entries along ``axis``.

    Ties are broken by position (the earlier entry is pruned first); ``array.shape[axis]``
    must be a multiple of ``m``.
    """
    moved = np.moveaxis(np.abs(array.astype(np.float64)), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(groups, axis=-1, kind="stable")
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@register("nm_prune")
class NMPrunePass(GencompressPass):
    """Prune weights to the N:M pattern (2:4 by default) along their reduction axis.

    The axis is the input-channel / K axis of each weight (``weights.find_weights``): axis 1 of a
    Conv weight, 0 of a ConvTranspose weight, K of Gemm/MatMul, the input axis of GRU/LSTM W/R.
    Guarantees: every group of M consecutive entries along that axis keeps its N largest |w|
    unchanged and has the others 0 (ties: the earlier entry is pruned). A weight whose axis is not
    a multiple of M, or used with different reduction axes, is left dense and listed with the reason.
    Shapes, graph inputs and outputs unchanged. Weights computed from constants by data movement
    are folded to initializers first.
    """

    @dataclass(frozen=True)
    class Options:
        n: int = 2
        m: int = 4
        exclude: tuple[str, ...] = ()
        min_size: int = DEFAULT_MIN_SIZE
        keep_first_last: bool = False

        def __post_init__(self):
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m):
                raise ValueError(f"N:M pattern needs integers 1 <= N < M, got {self.n}:{self.m}")
            check_common(self.exclude, self.min_size)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        o = self.options
        modified, params_before, targets, selection = prune_targets(model, o)
        graph = model.graph
        selected = {t.name for t in selection.selected}

        rows, left_dense = [], []
        for t in targets:
            a = t.array()
            reason = selection.skipped.get(t.name)
            axes = sorted({u.reduce_axis for u in t.uses})
            if reason is None and len(axes) != 1:
                reason = f"used with different reduction axes {axes}"
            elif reason is None and a.shape[axes[0]] % o.m:
                reason = f"reduction axis {axes[0]} has {a.shape[axes[0]]} entries, not a multiple of {o.m}"
            if reason is not None:
                if t.name in selected:
                    left_dense.append({"name": t.name, "reason": reason})
                rows.append(row(t.name, t.op_type, t.node_names, stats(a), stats(a), "dense", reason))
                continue
            pruned = np.where(nm_mask(a, axes[0], o.n, o.m), a, np.zeros((), dtype=a.dtype))
            if pruned.tobytes() != a.tobytes():
                write_array(t.value, pruned)
                modified = True
            r = row(t.name, t.op_type, t.node_names, stats(a), stats(pruned), "pruned")
            r["axis"] = axes[0]
            rows.append(r)

        warnings = unmatched_warnings(selection.unmatched)
        if left_dense:
            warnings.append(
                f"{len(left_dense)} weight(s) left dense for {o.n}:{o.m}: "
                + "; ".join(f"{d['name']} ({d['reason']})" for d in left_dense)
            )
        self.report = {
            "pass": self.pass_name,
            "options": asdict(o),
            "initializers": rows,
            "left_dense": left_dense,
            "totals": totals(rows, params_before, float_params(graph)),
            "warnings": warnings,
        }
        return ir.passes.PassResult(model, modified)
