"""The emulated-CPU harness (tests/emulated_cpu.py) really runs onnxruntime's AVX2 int8 kernels.

A crafted int8 Conv whose one weight pair sums to 254 × 255 saturates VPMADDUBSW's int16 on AVX2
(output ≈ 1.01 instead of 2.0) and not on VNNI or in exact arithmetic; under the harness the
pytest process must see the saturated value and name the AVX2 path, while the same model run
natively before it gives the host's own kernels' value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import emulated_cpu
import onnxruntime as ort
from test_int8_portable import _qdq_model
from gencompress.isa import host_isa, saturates

model = _qdq_model("Conv", np.full((4, 2, 1, 1), 127, np.int8), (1, 2, 4, 4), {}, 0).SerializeToString()
x = {"x": np.ones((1, 2, 4, 4), np.float32)}

def run(level):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    return float(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, x)[0].ravel()[0])

native_saturates = saturates(host_isa())
native = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
emulated_cpu.install("Haswell")
print(native_saturates, native, run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), host_isa())
"""


def test_sessions_run_on_the_emulated_cpu(tmp_path):
    import importlib.util

    tests = Path(__file__).parent
    spec = importlib.util.spec_from_file_location("portable", tests / "test_int8_portable.py")
    portable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(portable)
    portable._qemu()  # installs qemu-user when missing, skips where it cannot
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tests)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    native_saturates, native, fused, exact, isa = done.stdout.split(maxsplit=4)
    assert float(exact) == pytest.approx(2.0, abs=0.02)  # DQ -> float: no int16 anywhere
    assert float(fused) == pytest.approx(32767 / (255 * 127), abs=0.02)  # the pair clipped at int16
    assert float(native) == pytest.approx(1.01 if native_saturates == "True" else 2.0, abs=0.02)
    assert isa.strip() == "x86-64 AVX2"
