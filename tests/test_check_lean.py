"""check and bench on models too large to hold twice or to time 100 times (issue 26): check keeps
one session alive at a time; bench fits its runs into a time budget and says so."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gencompress
from gencompress.arguments import MIN_BUDGET_RUNS
from gencompress.errors import GencompressError


def _model(path, width=64):
    w = np.random.default_rng(0).standard_normal((8, width)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["z", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["out"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", width])], [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.add(key="gencompress.inputs", value='[{"name": "z", "shape": [1, 8]}]')
    onnx.save(m, str(path))
    return path


def test_check_holds_one_session_at_a_time(tmp_path, monkeypatch):
    from gencompress.runtime_check import sessions

    made = []
    real = sessions.make_session

    def counting(*args, **kwargs):
        gc.collect()
        alive = [r for r in made if r() is not None]
        assert not alive, "a session was still alive when the next one was made"
        session = real(*args, **kwargs)
        made.append(weakref.ref(session))
        return session

    monkeypatch.setattr(sessions, "make_session", counting)
    m = _model(tmp_path / "g.onnx")
    result = gencompress.check(m, m, samples=16)
    assert len(made) == 2 and result["outputs"][0]["psnr_db"] == float("inf")


def test_bench_budget_fits_runs_and_says_so(tmp_path, monkeypatch):
    import time

    from gencompress.runtime_check import sessions

    m = _model(tmp_path / "g.onnx")
    full = gencompress.bench(m, reference=m, runs=20, warmup=2, batches=(1,), memory=False, budget=None)
    assert full["notes"] == [] and [r["runs"] for r in full["results"]] == [20]
    real = sessions.run
    # the warm-up round bench times: at least 0.2 s per model (as a large model's run), so 22 rounds cannot fit in 0.5 s
    monkeypatch.setattr(sessions, "run", lambda *a: (time.sleep(0.2), real(*a))[1])
    cut = gencompress.bench(m, reference=m, runs=20, warmup=2, batches=(1, 4), memory=False, budget=0.5)
    assert all(MIN_BUDGET_RUNS <= r["runs"] < 20 for r in cut["results"]), cut["results"]
    assert len(cut["notes"]) == 2 and all("of the 20 asked" in n and "--time-budget" in n for n in cut["notes"])
    for r in cut["results"]:  # every model timed the same number of runs
        assert r["model"] and r["reference"] and r["warmup"] >= 1


@pytest.mark.parametrize("budget", [-1, float("nan"), "fast", 1e30])
def test_bench_budget_out_of_range(budget, tmp_path):
    m = _model(tmp_path / "g.onnx")
    with pytest.raises(GencompressError, match="budget"):
        gencompress.bench(m, runs=2, memory=False, budget=budget)


def test_compress_prints_the_budget_note(tmp_path, run_cli, monkeypatch):
    """A bench cut by its time budget says so on compress's terminal too, not only in report.json."""
    from gencompress.verbs import check as rc

    monkeypatch.setattr(rc, "_within_budget", lambda sessions, feeds, runs, warmup, budget: (MIN_BUDGET_RUNS, 0, 9.0))
    m = _model(tmp_path / "g.onnx")
    r = run_cli("compress", m, tmp_path / "out", "--objective", "size", "--samples", "8", "--calib-size", "8", "--batch", "1")
    assert r.exit_code == 0, r
    assert f"note: batch 1, 2 thread(s): {MIN_BUDGET_RUNS} timed runs of the 50 asked" in r.stderr, r


def test_layer_stats_reads_side_files_a_slice_at_a_time(zoo_onnx, tmp_path, monkeypatch):
    """A model's weights in side files are read a few rows at a time (a 2.4 GB float model read
    whole peaked at 6.2 GB): the same statistics as the model read whole, per-channel zero points
    of uint8 weights included."""
    from gencompress.verbs import check as rc

    out = tmp_path / "q.onnx"
    gencompress.quantize(zoo_onnx("dcgan"), out, objective="size", calib_size=8, check=False, external_data=True)
    whole = rc.layer_stats(onnx.load(str(out)))  # weights loaded with the model
    reads = []
    real = np.fromfile
    monkeypatch.setattr(rc, "_SLICE_ITEMS", 4096)  # many slices per weight
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: reads.append(k["count"]) or real(*a, **k))
    sliced = rc.layer_stats(out)
    assert sliced == whole and any(r["zero_channels"] is not None for r in sliced)
    assert len(reads) > len(sliced) and max(reads) <= 2 * 4096 + max(np.prod(r["shape"][1:]) for r in sliced)
