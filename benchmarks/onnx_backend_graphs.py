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


class Hang(Exception):
    pass


def backend_models() -> list[Path]:
    import onnx

    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    return sorted(root.rglob("*.onnx"))


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
        for src in models:
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
                        problems.append((verb, src, "multi-line GencompressError"))
                except Hang:
                    outcome = "hang"
                    problems.append((verb, src, f"over {args.timeout} s"))
                except Exception as e:
                    outcome = "crash"
                    problems.append((verb, src, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"))
                finally:
                    signal.alarm(0)
                counts[(verb, outcome)] += 1
    print(f"{time.perf_counter() - started:.0f} s, load avg {os.getloadavg()[0]:.2f} at end")
    for verb in ("prune", "quantize"):
        print(f"{verb:9s} " + "  ".join(f"{o} {counts[(verb, o)]}" for o in ("ok", "refused", "crash", "hang")))
    for verb, src, what in problems:
        print(f"  {verb} {src.relative_to(src.parents[1])}: {what}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
