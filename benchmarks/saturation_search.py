"""What the search for saturation-safe int8 weights costs ``quantize --objective size``.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/saturation_search.py               # the 12M DCGAN of benchmarks/scale.py
    .venv/bin/python benchmarks/saturation_search.py --sizes 1M 47M --rounds 2

Per size: ``quantize(objective="size", check=False)`` with ``int8_kernels`` portable (the search
and the error feedback run), portable without the input moments (``runtime_check.saturation.
input_moments`` off: the search alone, as before the error feedback) and vnni (no search)
interleaved, ``--rounds`` times; the time inside ``int8_saturation.saturation_free`` and inside
``input_moments`` is summed separately. Prints the load average.
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
    import gencompress.runtime_check.saturation as saturation
    from gencompress import quantize

    spent = {"search": [], "moments": []}

    def timed(function, into):
        def run(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[into][-1] += time.perf_counter() - started

        return run

    insert_qdq.saturation_free = timed(insert_qdq.saturation_free, "search")
    with_moments = timed(saturation.input_moments, "moments")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            src = Path(tmp) / f"{size}.onnx"
            build_generator(SIZES[size], src)
            times = {"portable": [], "portable, no moments": [], "vnni": []}
            inside = {("portable", "search"): [], ("portable", "moments"): [], ("portable, no moments", "search"): []}
            for _ in range(args.rounds):
                for variant in times:
                    for into in spent:
                        spent[into].append(0.0)
                    saturation.input_moments = with_moments if variant == "portable" else None
                    started = time.perf_counter()
                    quantize(src, Path(tmp) / f"{size}_int8.onnx", objective="size", int8_kernels=variant.split(",")[0], check=False)
                    times[variant].append(time.perf_counter() - started)
                    for v, into in inside:
                        if v == variant:
                            inside[v, into].append(spent[into][-1])
            rows.append((size, *(np.median(t) for t in times.values()), *(np.median(t) for t in inside.values())))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"quantize --objective size, median of {args.rounds} interleaved rounds; load average {load}")
    print("| model | portable | portable, no moments | vnni (no search) | portable: saturation_free / input_moments | no moments: saturation_free |")
    print("|---|---|---|---|---|---|")
    for size, portable, plain, vnni, search, moments, plain_search in rows:
        print(f"| {size} DCGAN | {portable:.1f} s | {plain:.1f} s | {vnni:.1f} s | {search:.1f} / {moments:.1f} s | {plain_search:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
