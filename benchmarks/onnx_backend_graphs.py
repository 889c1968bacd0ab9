"""Run prune and quantize, with their defaults, over every graph in the onnx wheel's backend test data.

    python benchmarks/onnx_backend_graphs.py [--timeout 120] [--only SUBSTRING ...] [--limit N] [--objective size]

Each verb on each graph runs in a forked child (the imports are paid once; a child that passes
the timeout is killed, and its peak memory is its own) and ends as: ok, refused
(GencompressError, one line), crash (any other exception, or a multi-line message: a bug), or
hang (over --timeout seconds). prune runs with ``sparsity=0.5`` (it has no default sparsity),
quantize with no option at all (the timed int8 plan, 256 calibration draws, the check), or
with ``--objective`` only.

Prints one row per graph that bears weights (a Conv/ConvTranspose/Gemm/MatMul/GRU/LSTM weight
computed from constants only: stored, or filled in by ConstantOfShape as in the "light" nets):
each verb's outcome, wall time of the call (reading the model included), the child's peak RSS,
and the 1-minute load average when the row started; then the counts, and the distinct refusal
reasons of the graphs without weights (so that one can read whether each is true).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from forked import forked  # noqa: E402

LAYER_OPS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "GRU": (1, 2), "LSTM": (1, 2)}


def data_root() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def backend_models() -> list[Path]:
    return sorted(data_root().rglob("*.onnx"))


def weights_of(path: Path) -> str | None:
    """"stored" / "filled" (a ConstantOfShape on the way) when some layer reads a weight computed
    from constants only (initializers, IR 3 ones listed as inputs too, Constant nodes); else None."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - inits
    producer = {out: node for node in model.graph.node for out in node.output}

    def constant(name, seen=()) -> str | None:
        if name in inits:
            return "stored"
        if name in inputs or name not in producer or name in seen:
            return None
        node = producer[name]
        kinds = [constant(x, (*seen, name)) for x in node.input if x]
        if any(k is None for k in kinds):
            return None
        return "filled" if node.op_type == "ConstantOfShape" or "filled" in kinds else "stored"

    found = set()
    for node in model.graph.node:
        for i in LAYER_OPS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i]:
                found.add(constant(node.input[i]))
    found.discard(None)
    return "filled" if "filled" in found else ("stored" if found else None)


def run_forked(verb: str, src: Path, out: Path, timeout: int, objective: str | None = None) -> dict:
    """One verb on one graph in a forked child (benchmarks/forked.py): outcome, seconds, peak RSS."""
    import gencompress

    def call():
        if verb == "prune":
            return gencompress.prune(src, out, sparsity=0.5)
        return gencompress.quantize(src, out, **({"objective": objective} if objective else {}))

    return forked(call, timeout, quiet=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--only", nargs="*", help="graphs whose path contains one of these")
    parser.add_argument("--objective", choices=("balanced", "speed", "size"), help="quantize's --objective (default: its default)")
    args = parser.parse_args()

    import gencompress

    gencompress.prune, gencompress.quantize  # noqa: B018  (imported once, before the forks)
    import gencompress.verbs.int8_plan  # noqa: F401

    models = [m for m in backend_models() if not args.only or any(s in str(m) for s in args.only)][: args.limit]
    root = data_root()
    counts: Counter = Counter()
    reasons: dict = defaultdict(set)
    problems = []
    started = time.perf_counter()
    print(f"{len(models)} graphs, timeout {args.timeout} s, load avg {os.getloadavg()[0]:.2f} at start", flush=True)
    print("| graph | weights | prune | s | quantize | s | peak MB (p / q) | load |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for src in models:
            kind = weights_of(src)
            load = os.getloadavg()[0]
            rows = {verb: run_forked(verb, src, Path(tmp) / f"{verb}.onnx", args.timeout, args.objective) for verb in ("prune", "quantize")}
            for verb, row in rows.items():
                counts[(bool(kind), verb, row["outcome"])] += 1
                if row["outcome"] in ("crash", "hang") or (kind and row["outcome"] != "ok"):
                    problems.append((verb, src.relative_to(root), row["outcome"], row["detail"][:300]))
                if not kind and row["outcome"] == "refused":
                    reasons[verb].add(row["detail"].replace(str(src), "MODEL")[:200])
            if kind:
                cells = [f"{row['outcome']} | {row['seconds']:.1f}" if row["seconds"] is not None else f"{row['outcome']} | -" for row in rows.values()]
                peaks = " / ".join(f"{row['peak_mb']:.0f}" if row["peak_mb"] else "-" for row in rows.values())
                print(f"| {src.relative_to(root)} | {kind} | {cells[0]} | {cells[1]} | {peaks} | {load:.1f} |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s, load avg {os.getloadavg()[0]:.2f} at end")
    for weights in (True, False):
        n = sum(v for (k, verb, _), v in counts.items() if k == weights and verb == "prune")
        print(f"{'with' if weights else 'without'} weights ({n} graphs):")
        for verb in ("prune", "quantize"):
            print(f"  {verb:9s} " + "  ".join(f"{o} {counts[(weights, verb, o)]}" for o in ("ok", "refused", "crash", "hang")))
    for verb in ("prune", "quantize"):
        print(f"{verb}'s refusals of graphs without weights:")
        for reason in sorted(reasons[verb]):
            print(f"  {reason}")
    for verb, src, outcome, what in problems:
        print(f"  {verb} {src}: {outcome}: {what}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
