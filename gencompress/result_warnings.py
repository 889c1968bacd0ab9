"""Warnings for a compression result that is not much of one: a model left at half its float size
or more, or one slower than float, with the layers responsible named. compress puts them in its
summary and report.json, quantize in its output and report."""

from __future__ import annotations

import numpy as np

SIZE_WARNING_RATIO = 0.5
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
TOP = 3


def largest_float_tensors(proto, top: int = TOP) -> list[str]:
    """``name (N kB, read by NODE)`` for the largest floating-point initializers in ``proto``."""
    readers: dict[str, str] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, node.name or node.op_type)
    sized = []
    for t in proto.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            n = int(np.prod(t.dims)) if t.dims else 1
            sized.append((n * {1: 4, 10: 2, 11: 8, 16: 2}[t.data_type], t.name))
    sized.sort(reverse=True)
    return [f"{name} ({size / 1000:.1f} kB {FLOAT_TYPES[next(t.data_type for t in proto.graph.initializer if t.name == name)]}, read by {readers.get(name, 'nothing')})"
            for size, name in sized[:top] if size > 0]


def compression_warnings(candidate_proto, ratio: float, *, latency=None, float_layers=()) -> list[str]:
    """The warnings for one result. ``ratio``: candidate bytes / float bytes; ``latency``: the
    bench results (rows with batch, threads, speedup), if timing ran; ``float_layers``: layer
    rows ({node, op_type, reason?}) a quantizer kept in float."""
    warnings = []
    if ratio >= SIZE_WARNING_RATIO:
        tensors = largest_float_tensors(candidate_proto)
        where = f"; largest float tensors left: {', '.join(tensors)}" if tensors else ""
        warnings.append(f"the compressed model is {ratio:.2f}x its float size (>= {SIZE_WARNING_RATIO}x){where}")
    slow = [r for r in (latency or []) if r.get("speedup") is not None and r["speedup"] < 1.0]
    if slow:
        cases = ", ".join(f"batch {r['batch']}, {r['threads']} threads: {r['speedup']:.2f}x" for r in slow)
        ops = {}
        for node in candidate_proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        qdq = ops.get("QuantizeLinear", 0)
        kept = ", ".join(f"{layer['node']} ({layer['op_type']}{': ' + layer['reason'] if layer.get('reason') else ''})" for layer in float_layers)
        detail = f"; it quantizes {qdq} activation tensor(s) per run" if qdq else ""
        detail += f"; layers kept in float: {kept}" if kept else ""
        warnings.append(f"the compressed model is slower than float ({cases}){detail}")
    return warnings
