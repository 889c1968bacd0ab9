"""Unstructured magnitude pruning: the smallest |w| of each weight (or of all weights) become 0."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx_ir as ir

from gencompress.onnx_io import release
from gencompress.passes.prune_report import check_common, check_sparsity, DEFAULT_MIN_SIZE, float_params, prune_targets
from gencompress.passes.prune_report import round_half_up, row, SCOPES, stats, totals, unmatched_warnings
from gencompress.passes.registry import GencompressPass, register


def smallest_mask(values: np.ndarray, count: int, chunk: int = 1 << 22) -> np.ndarray:
    """Boolean keep-mask of ``values`` flattened: False at its ``count`` entries of smallest magnitude.

    Ties are broken by position (the earlier entry goes first), so the result is deterministic;
    NaN sorts last and is never pruned. One magnitude copy at a time: the count-th smallest by
    an in-place partition of it (linear, no index array: a full argsort of a large weight took
    seconds and 2x its memory), then the entries below it and the earliest ties, a chunk at a time.
    """
    flat = values.reshape(-1)
    keep = np.ones(flat.size, dtype=bool)
    if count <= 0:
        return keep
    magnitudes = np.abs(flat)
    magnitudes.partition(count - 1)
    kth = magnitudes[count - 1]
    del magnitudes
    if np.isnan(kth):  # more to prune than non-NaN entries: the sorted order decides
        keep[np.argsort(np.abs(flat), kind="stable")[:count]] = False
        return keep
    below, ties = 0, []
    for start in range(0, flat.size, chunk):
        part = np.abs(flat[start : start + chunk])
        small = part < kth
        keep[start : start + chunk][small] = False
        below += int(np.count_nonzero(small))
        ties.append(start + np.flatnonzero(part == kth))
    keep[np.concatenate(ties)[: count - below]] = False
    return keep


def apply_mask(array: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``array`` with zeros where ``keep`` is False; kept entries are bit-identical."""
    return np.where(keep.reshape(array.shape), array, np.zeros((), dtype=array.dtype))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """``a.tobytes() == b.tobytes()`` without the two copies (compared as same-width integers)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = np.dtype(f"u{a.itemsize}") if a.itemsize in (1, 2, 4, 8) else None
    if as_int is None:
        return a.tobytes() == b.tobytes()
    return bool(np.array_equal(np.ascontiguousarray(a).view(as_int), np.ascontiguousarray(b).view(as_int)))


def write_array(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.Tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


@register("magnitude_prune")
class MagnitudePrunePass(GencompressPass):
    """Zero the smallest-magnitude entries of Conv/ConvTranspose/Gemm/MatMul/GRU/LSTM weights.

    Guarantees: in each pruned weight (``scope="layer"``) or across all pruned weights
    (``scope="global"``) exactly ``round(sparsity * size)`` entries are 0, and every zeroed entry
    has magnitude <= every kept entry (ties: the earlier position is pruned first). Kept entries,
    shapes, graph inputs and outputs are unchanged; ``sparsity=0`` changes no weight.
    Weights computed from constants by data movement are folded to initializers first.
    """

    @dataclass(frozen=True)
    class Options:
        sparsity: float = 0.5
        scope: str = "layer"  # "layer": per weight; "global": one threshold across weights
        exclude: tuple[str, ...] = ()  # node or initializer names / globs left dense
        min_size: int = DEFAULT_MIN_SIZE  # weights with fewer elements are left dense
        keep_first_last: bool = False  # leave the first and last weight layers dense

        def __post_init__(self):
            check_sparsity(self.sparsity)
            if self.scope not in SCOPES:
                raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
            check_common(self.exclude, self.min_size)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        o = self.options
        modified, params_before, targets, selection = prune_targets(model, o)
        graph = model.graph
        selected = {t.name for t in selection.selected}

        keeps: dict[str, np.ndarray] = {}
        if o.scope == "global" and selected:
            flat = np.concatenate([np.abs(t.array().astype(np.float64)).ravel() for t in selection.selected])
            keep = smallest_mask(flat, round_half_up(o.sparsity * flat.size))
            start = 0
            for t in selection.selected:
                keeps[t.name] = keep[start : start + t.size]
                start += t.size
            del flat, keep

        rows = []
        for t in targets:  # one weight at a time: a memory-mapped one is read, pruned and let go
            a = t.array()
            if t.name not in selected:
                s = stats(a)
                rows.append(row(t.name, t.op_type, t.node_names, s, s, "dense", selection.skipped[t.name]))
                continue
            # per layer: |w| in w's own type, whose order is the float64 one (every float widens
            # exactly), without float64 copies of a large weight
            keep = keeps.pop(t.name) if o.scope == "global" else smallest_mask(a, round_half_up(o.sparsity * a.size))
            pruned = apply_mask(a, keep)
            before, same = stats(a), _same_bits(pruned, a)
            del a, keep
            if not same:
                original = t.value.const_value
                write_array(t.value, pruned)
                release(original)  # a memory-mapped weight's pages leave this process
                modified = True
            rows.append(row(t.name, t.op_type, t.node_names, before, stats(pruned), "pruned"))

        self.report = {
            "pass": self.pass_name,
            "options": asdict(o),
            "initializers": rows,
            "totals": totals(rows, params_before, float_params(graph)),
            "warnings": unmatched_warnings(selection.unmatched),
        }
        return ir.passes.PassResult(model, modified)
