"""What the search for saturation-safe int8 weights costs ``quantize --objective size``.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/saturation_search.py               # the 12M DCGAN of benchmarks/scale.py
    .venv/bin/python benchmarks/saturation_search.py --sizes 1M 47M --rounds 2

Per size: ``quantize(objective="size", check=False)`` with ``int8_kernels`` portable (the search
runs) and vnni (no search) interleaved, ``--rounds`` times; the time inside
``int8_saturation.saturation_free`` is summed separately. Prints the load average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scale import SIZES, build_generator  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["12M"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np

    import gencompress.passes.insert_qdq as insert_qdq
    from gencompress import quantize

    searched = []
    search = insert_qdq.saturation_free

    def timed(*a, **k):
        started = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            searched[-1] += time.perf_counter() - started

    insert_qdq.saturation_free = timed
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            src = Path(tmp) / f"{size}.onnx"
            build_generator(SIZES[size], src)
            times = {"portable": [], "vnni": []}
            search_s = []
            for _ in range(args.rounds):
                for kernels in times:
                    searched.append(0.0)
                    started = time.perf_counter()
                    quantize(src, Path(tmp) / f"{size}_{kernels}.onnx", objective="size", int8_kernels=kernels, check=False)
                    times[kernels].append(time.perf_counter() - started)
                    if kernels == "portable":
                        search_s.append(searched[-1])
            rows.append((size, np.median(times["portable"]), np.median(times["vnni"]), np.median(search_s)))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"quantize --objective size, median of {args.rounds} interleaved rounds; load average {load}")
    print("| model | portable | vnni (no search) | inside saturation_free |")
    print("|---|---|---|---|")
    for size, portable, vnni, inside in rows:
        print(f"| {size} DCGAN | {portable:.1f} s | {vnni:.1f} s | {inside:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
