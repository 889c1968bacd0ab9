"""Does a model's int8 gain at a smaller batch stand for its gain at batch 64? (issue 25)

The plan times a model whose float run at batch 64 would take over ``int8_plan.MODEL_RUN_SECONDS``
at a smaller batch (at least ``MODEL_MIN_BATCH``). This prints, per model, float's time and every-
layer-int8's speed against float (``--objective size``, so no plan decides anything) at batches 1,
8, 16, 32 and 64: float and int8 in one process, interleaved, spinning off, 2 threads, about a
second of float runs per batch. Run by hand:

    .venv/bin/python benchmarks/stand_in_batch.py rrdb gan style stylegan2_nonfused unet zoo-vae

Model names as in benchmarks/plan_cost.py. Every line carries /proc/loadavg.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_cost  # noqa: E402  (model builders)

BATCHES = (1, 8, 16, 32, 64)


def main(names: list[str]) -> None:
    os.environ.setdefault("GENCOMPRESS_CACHE", tempfile.mkdtemp(prefix="stand-in-"))
    import onnx

    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.runtime_check.latency import time_interleaved
    from gencompress.runtime_check.sessions import cast_feeds, make_session
    from gencompress.verbs.quantize import quantize

    with tempfile.TemporaryDirectory(prefix="stand-in-") as tmp:
        for name in names:
            src = plan_cost.make_model(name, Path(tmp))
            out = Path(tmp) / f"{name}.int8.onnx"
            quantize(src, out, calib_size=64, check=False, objective="size")
            specs = specs_of_model(onnx.load(str(src), load_external_data=False))
            sessions = {"float": make_session(str(src), threads=2, label="float"), "int8": make_session(str(out), threads=2, label="int8")}
            row = []
            for b in BATCHES:
                inputs = sample_inputs(specs, b, 0)
                feeds = {k: cast_feeds(s, inputs) for k, s in sessions.items()}
                probe = time_interleaved(sessions, feeds, runs=1, warmup=1)
                times = time_interleaved(sessions, feeds, runs=int(np.clip(1.0 / probe["float"][0], 5, 200)), warmup=0)
                f, i = float(np.median(times["float"])), float(np.median(times["int8"]))
                row.append(f"b{b} float {f * 1e3:.1f} ms int8 {f / i:.2f}x")
            print(f"{name:20s} " + " | ".join(row) + f"  load {plan_cost.load()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["rrdb", "gan", "style"])
