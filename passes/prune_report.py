"""What the prune passes share: which weights they may touch, and how they report on them.

- ``FoldComputedWeights``: a weight computed from constants by pure data movement (the dynamo
  exporter re-orders a GRU's gates with Slice/Concat from PyTorch's ``weight_hh``) is folded
  into an initializer first, with onnxscript's constant folder, so that it can be pruned.
- ``choose_targets``: the weight initializers a pass prunes, and the reason each other one stays
  dense (``exclude`` by name or glob, ``min_size``, first/last layer, not a float tensor).
- Report rows: one per initializer (shape before/after, zeros, sparsity, parameters removed),
  totals, and the plain-text table the CLI prints.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from gencompress.passes.weights import WEIGHT_OPS, WeightUse, find_weights

DEFAULT_MIN_SIZE = 64  # elements; smaller weights are left dense (they cannot hit a target anyway)
SCOPES = ("layer", "global")
CRITERIA = ("l1", "l2")

# Ops that only move elements: folding them is exact, so a folded weight is bit-identical.
DATA_MOVEMENT_OPS = frozenset(
    {"Identity", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Split", "Gather", "Flatten", "Expand", "Tile"}
)


# ---- options -----------------------------------------------------------------------------------


def check_sparsity(sparsity) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")


def check_common(exclude, min_size) -> None:
    if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
        raise ValueError(f"exclude must be a list of names or globs, got {exclude!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# ---- folding weights computed from constants ---------------------------------------------------


def _weight_inputs(node: ir.Node) -> tuple[int, ...]:
    return (1, 2) if node.op_type in ("GRU", "LSTM") else (1,)


def _constant_ancestry(value: ir.Value) -> set[ir.Node] | None:
    """The data-movement nodes computing ``value`` from constants only, or None."""
    nodes: set[ir.Node] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None:
            continue
        if v.is_graph_input():
            return None
        if v.const_value is not None:
            continue
        producer = v.producer()
        if producer is None:
            return None
        if producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
            nodes.add(producer)
            continue
        if producer.domain not in ("", "ai.onnx") or producer.op_type not in DATA_MOVEMENT_OPS:
            return None
        if producer not in nodes:
            nodes.add(producer)
            stack.extend(producer.inputs)
    return nodes


def computed_weight_nodes(graph: ir.Graph) -> set[ir.Node]:
    """Nodes that compute a weight input of a weight op from constants by data movement."""
    nodes: set[ir.Node] = set()
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHT_OPS:
            continue
        for i in _weight_inputs(node):
            if i >= len(node.inputs):
                continue
            value = node.inputs[i]
            if value is None or value.const_value is not None or value.producer() is None:
                continue
            found = _constant_ancestry(value)
            if found:
                nodes |= found
    return nodes


class FoldComputedWeights(ir.passes.InPlacePass):
    """Fold weights computed from constants by data movement (Slice, Concat, ...) into initializers.

    Guarantees: only such nodes are evaluated (onnxscript's folder, ``should_fold`` limited to
    them), and the folded values are bit-identical; graph inputs and outputs unchanged. When it
    runs at all (some weight is computed), the folder also applies its exact op-level
    simplifications to the rest of the graph (e.g. a no-op Identity, Reshape or Cast removed).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = computed_weight_nodes(model.graph)
        if not nodes:
            return ir.passes.PassResult(model, False)
        from onnxscript.optimizer import fold_constants

        fold_constants(
            model,
            input_size_limit=2**62,
            output_size_limit=2**62,
            should_fold=lambda node: node in nodes,
        )
        return ir.passes.PassResult(model, True)


# ---- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    """One weight initializer and every weight use of it, in graph order."""

    value: ir.Value
    uses: list[WeightUse] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def op_type(self) -> str:
        return "/".join(dict.fromkeys(u.op_type for u in self.uses))

    @property
    def node_names(self) -> list[str]:
        return list(dict.fromkeys(u.node.name or "" for u in self.uses))

    @property
    def size(self) -> int:
        return int(np.prod(self.value.const_value.shape.numpy(), dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.value.const_value.dtype.is_floating_point()

    def array(self) -> np.ndarray:
        return self.value.const_value.numpy()


def weight_targets(graph: ir.Graph) -> list[Target]:
    """``find_weights`` grouped by initializer (one weight may feed several nodes)."""
    by_value: dict[ir.Value, Target] = {}
    for use in find_weights(graph):
        by_value.setdefault(use.value, Target(use.value)).uses.append(use)
    return list(by_value.values())


def matches(pattern: str, name: str | None) -> bool:
    return bool(name) and (pattern == name or fnmatch.fnmatchcase(name, pattern))


@dataclass
class Selection:
    selected: list[Target]
    skipped: dict[str, str]  # initializer name -> why it stays dense
    unmatched: list[str]  # exclude patterns that matched no weight or weight node


def prune_targets(model, options):
    """The start every weight-pruning pass shares: weights computed from constants folded first,
    then (whether folding changed the graph, parameters before, every target, the selection that
    ``options`` — exclude, min_size, keep_first_last — makes of them)."""
    modified = FoldComputedWeights()(model).modified
    params_before = float_params(model.graph)
    targets = weight_targets(model.graph)
    selection = choose_targets(targets, exclude=options.exclude, min_size=options.min_size, keep_first_last=options.keep_first_last)
    return modified, params_before, targets, selection


def choose_targets(targets: list[Target], *, exclude=(), min_size: int = 0, keep_first_last: bool = False) -> Selection:
    """Split ``targets`` into those to prune and those kept dense, with the reason for each."""
    nodes = list(dict.fromkeys(u.node for t in targets for u in t.uses))
    first, last = (nodes[0], nodes[-1]) if nodes else (None, None)
    used_patterns: set[str] = set()
    selected, skipped = [], {}
    for t in targets:
        names = [t.name, *(u.node.name for u in t.uses)]
        hit = [p for p in exclude if any(matches(p, n) for n in names)]
        used_patterns.update(hit)
        if hit:
            skipped[t.name] = f"excluded (--exclude {hit[0]})"
        elif not t.is_float:
            skipped[t.name] = f"not a float tensor ({t.value.const_value.dtype.name})"
        elif keep_first_last and any(u.node is first for u in t.uses):
            skipped[t.name] = "first layer kept dense"
        elif keep_first_last and any(u.node is last for u in t.uses):
            skipped[t.name] = "last layer kept dense"
        elif t.size < min_size:
            skipped[t.name] = f"{t.size} elements, below --min-size {min_size}"
        else:
            selected.append(t)
    unmatched = [p for p in exclude if p not in used_patterns]
    return Selection(selected, skipped, unmatched)


def unmatched_warnings(unmatched) -> list[str]:
    return [f"--exclude {p!r} matches no weight initializer or weight node; ignored" for p in unmatched]


# ---- report ------------------------------------------------------------------------------------


def stats(array: np.ndarray) -> tuple[list[int], int, int]:
    """(shape, size, zeros) of an array."""
    return [int(d) for d in array.shape], int(array.size), int(array.size - np.count_nonzero(array))


def row(name, op, nodes, before, after, status, reason=None) -> dict:
    """One report row; ``before``/``after`` are ``stats`` tuples."""
    (shape0, size0, zeros0), (shape1, size1, zeros1) = before, after
    r = {
        "name": name,
        "op": op,
        "nodes": nodes,
        "shape_before": shape0,
        "shape_after": shape1,
        "params_before": size0,
        "params_after": size1,
        "zeros_before": zeros0,
        "zeros_after": zeros1,
        "sparsity": zeros1 / size1 if size1 else 0.0,
        "removed": (size0 - zeros0) - (size1 - zeros1),  # non-zero parameters gone
        "status": status,
    }
    if reason:
        r["reason"] = reason
    return r


def float_params(graph: ir.Graph) -> tuple[int, int]:
    """(elements, non-zero elements) over all floating-point initializers."""
    total = nonzero = 0
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or not tensor.dtype.is_floating_point():
            continue
        array = tensor.numpy()
        total += int(array.size)
        nonzero += int(np.count_nonzero(array))
    return total, nonzero


def totals(rows: list[dict], params_before: tuple[int, int], params_after: tuple[int, int]) -> dict:
    weights = [r for r in rows if r.get("weight", True)]
    pruned = [r for r in weights if r["status"] == "pruned"]
    size_w = sum(r["params_after"] for r in weights)
    size_p = sum(r["params_after"] for r in pruned)
    return {
        "weights": len(weights),
        "pruned": len(pruned),
        "weight_params_before": sum(r["params_before"] for r in weights),
        "weight_params_after": size_w,
        "sparsity_pruned": sum(r["zeros_after"] for r in pruned) / size_p if size_p else 0.0,
        "sparsity_weights": sum(r["zeros_after"] for r in weights) / size_w if size_w else 0.0,
        "params_before": params_before[0],
        "params_after": params_after[0],
        "nonzero_params_before": params_before[1],
        "nonzero_params_after": params_after[1],
        "params_removed": params_before[1] - params_after[1],
    }


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def format_report(report: dict) -> str:
    """The per-initializer table, the per-layer channel table (channel mode) and the totals."""
    from gencompress.output import table

    lines = []
    channels = report.get("channels")
    if channels:
        lines.append(
            table(
                ["layer", "op", "channels", "after", "status"],
                [[c["node"], c["op"], c["channels_before"], c["channels_after"], c["status"] + (f": {c['reason']}" if c.get("reason") else "")] for c in channels],
            )
        )
        lines.append("")
    rows = [
        [
            r["name"],
            r["op"],
            _shape(r["shape_before"]),
            _shape(r["shape_after"]),
            f"{100 * r['sparsity']:.1f}%",
            r["removed"],
            r["status"] + (f": {r['reason']}" if r.get("reason") else ""),
        ]
        for r in report["initializers"]
    ]
    lines.append(table(["initializer", "op", "shape", "after", "sparsity", "removed", "status"], rows))
    t = report["totals"]
    lines.append("")
    lines.append(
        f"weights: {t['pruned']} of {t['weights']} pruned; sparsity {100 * t['sparsity_pruned']:.2f}% of pruned weights, "
        f"{100 * t['sparsity_weights']:.2f}% of all weights"
    )
    lines.append(
        f"parameters: {t['params_before']:,} -> {t['params_after']:,}; non-zero {t['nonzero_params_before']:,} -> "
        f"{t['nonzero_params_after']:,} ({t['params_removed']:,} removed)"
    )
    if "bytes_before" in t:
        lines.append(
            f"file: {t['bytes_before']:,} -> {t['bytes_after']:,} bytes; deflated (zlib 9): "
            f"{t['deflate_before']:,} -> {t['deflate_after']:,} bytes"
        )
    sparse = report.get("sparse_initializers")
    if sparse:
        lines.append(f"sparse initializers: {sparse['note']}")
    return "\n".join(lines)
