"""Run prune and quantize over every graph in the onnx wheel's backend test data (by hand).

    python benchmarks/onnx_backend_graphs.py [--timeout 60] [--limit N]

Each verb on each model ends as: ok, refused (GencompressError, one line), crash (any other
exception: a bug), or hang (over --timeout seconds). Prints the counts and every crash/hang.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


class Hang(BaseException):  # not an Exception: onnx_ir's serde wraps those in SerdeError, which read as a crash
    pass


def backend_models() -> list[Path]:
    import onnx

    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    return sorted(root.rglob("*.onnx"))


def constant_weights(src: Path, folder: Path) -> Path | None:
    """The model with its initializers dropped from the graph inputs (old exporters list them as
    inputs, which makes them overridable, so no pass touches them) and its opset raised to 17
    where the version converter can; None if no initializer was an input."""
    import onnx

    model = onnx.load(str(src))
    names = {i.name for i in model.graph.initializer}
    if not any(i.name in names for i in model.graph.input):
        return None
    try:  # old opsets (6, 9) run nowhere in int8: upgrade where the converter can, to reach the passes
        model = onnx.version_converter.convert_version(model, 17)
    except Exception:
        pass
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 8)  # IR >= 4: initializers need not be inputs
    out = folder / "constant_weights.onnx"
    onnx.save(model, str(out))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()

    import gencompress
    from gencompress.errors import GencompressError

    def alarm(signum, frame):
        raise Hang

    signal.signal(signal.SIGALRM, alarm)
    models = backend_models()[: args.limit]
    counts: Counter = Counter()
    problems = []
    started = time.perf_counter()
    print(f"{len(models)} models, load avg {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        variants = []
        for i, src in enumerate(models):
            variants.append((src, src))
            (Path(tmp) / str(i)).mkdir()
            lifted = constant_weights(src, Path(tmp) / str(i))
            if lifted is not None:
                variants.append((src, lifted))
        print(f"{len(variants)} variants ({len(variants) - len(models)} with initializers made constant)", flush=True)
        for label, src in variants:
            for verb, run in (("prune", lambda: gencompress.prune(src, Path(tmp) / "p.onnx", sparsity=0.5)),
                              ("quantize", lambda: gencompress.quantize(src, Path(tmp) / "q.onnx", calib_size=4, eval_size=4))):
                signal.alarm(args.timeout)
                try:
                    run()
                    outcome = "ok"
                except GencompressError as e:
                    outcome = "refused"
                    if "\n" in str(e):
                        outcome = "crash"
                        problems.append((verb, label, "multi-line GencompressError"))
                except Hang:
                    outcome = "hang"
                    problems.append((verb, label, f"over {args.timeout} s"))
                except Exception as e:
                    outcome = "crash"
                    problems.append((verb, label, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"))
                finally:
                    signal.alarm(0)
                counts[(verb, outcome)] += 1
    print(f"{time.perf_counter() - started:.0f} s, load avg {os.getloadavg()[0]:.2f} at end")
    for verb in ("prune", "quantize"):
        print(f"{verb:9s} " + "  ".join(f"{o} {counts[(verb, o)]}" for o in ("ok", "refused", "crash", "hang")))
    for verb, src, what in dict.fromkeys(problems):
        print(f"  {verb} {src.relative_to(src.parents[2])}: {what}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
