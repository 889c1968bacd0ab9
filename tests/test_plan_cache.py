"""The int8 plan cache (verbs/plan_cache.py): a second plan of the same model, options and machine
kind reuses the first plan, times nothing and builds the same bytes; anything else is a miss.
No wall-clock assertions: the timer is a stub that says what it would time."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from gencompress.verbs.int8_plan import PlanInt8Pass
from gencompress.verbs.plan_cache import PlanCache, model_digest


def counting_timer(threads=2, batches=(1, 64)):
    """A stub: each quantized activation makes the model 1% faster at batch 64 and 1% slower at
    batch 1 (within noise: the plan keeps int8). Counts calls."""
    calls = []

    def measure(models, reference=True, give_up=None):
        calls.append(len(models))
        qdq = [sum(n.op_type == "QuantizeLinear" for n in m.graph.node) for m in models]
        return [{b: 1.0 + (0.01 if b == 1 else -0.01) * q for b in batches} for q in qdq]

    measure.settings = {"provider": "CPUExecutionProvider", "threads": threads, "batches": list(batches)}
    return measure, calls


def run_plan(model_path, timer, **options):
    p = PlanInt8Pass(PlanInt8Pass.Options(calib_size=16, **options))
    p.timer = timer
    out = p(ir.load(model_path)).model
    return ir.serde.serialize_model(out).SerializeToString(deterministic=True), p.report


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plans"
    monkeypatch.setenv("GENCOMPRESS_PLAN_CACHE", str(folder))
    return folder


def test_cached_replan_times_nothing_and_writes_the_same_bytes(zoo_onnx, cache_dir):
    src = zoo_onnx("dcgan")
    timer, calls = counting_timer()
    first, report = run_plan(src, timer)
    assert calls and report["cached"] is None
    assert report["timed_on"]["threads"] == 2 and report["timed_on"]["isa"] and report["timed_on"]["onnxruntime"]
    entries = list(cache_dir.glob("*.json"))
    assert len(entries) == 1 and not list(cache_dir.glob("*.tmp"))
    n = len(calls)
    again, report2 = run_plan(src, timer)
    assert len(calls) == n  # nothing timed
    assert again == first
    assert report2["cached"] == str(entries[0])
    assert report2["layers"] == report["layers"] and report2["speed"] == report["speed"]


def test_other_options_or_machine_kind_miss(zoo_onnx, cache_dir):
    src = zoo_onnx("dcgan")
    timer, calls = counting_timer()
    run_plan(src, timer)
    for other_timer, options in ((counting_timer(threads=4)[0], {}), (timer, {"objective": "speed"}), (timer, {"seed": 1}),
                                 (timer, {"exclude": ("node_conv2d",)})):
        before = len(list(cache_dir.glob("*.json")))
        run_plan(src, other_timer, **options)
        assert len(list(cache_dir.glob("*.json"))) == before + 1, options


def test_changed_weights_miss(zoo_onnx, cache_dir, tmp_path):
    src = zoo_onnx("dcgan")
    model = onnx.load(str(src))
    w = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(w).copy()
    array.flat[0] += 1e-3
    w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    assert model_digest(model) != model_digest(onnx.load(str(src)))
    timer, calls = counting_timer()
    run_plan(src, timer)
    n = len(calls)
    run_plan(changed, timer)
    assert len(calls) > n and len(list(cache_dir.glob("*.json"))) == 2


def test_damaged_or_foreign_entry_is_a_miss_not_an_error(zoo_onnx, cache_dir):
    src = zoo_onnx("dcgan")
    timer, calls = counting_timer()
    first, _ = run_plan(src, timer)
    (entry,) = cache_dir.glob("*.json")
    good = json.loads(entry.read_text())
    for damaged in ("{not json", json.dumps({**good, "int8": ["no_such_layer"]}), json.dumps({**good, "layers": 3}), json.dumps([1])):
        entry.write_text(damaged)
        n = len(calls)
        again, report = run_plan(src, timer)
        assert len(calls) > n and report["cached"] is None and again == first


def test_unwritable_cache_folder_still_plans(zoo_onnx, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GENCOMPRESS_PLAN_CACHE", str(blocker / "plans"))  # a folder under a file cannot be made
    timer, calls = counting_timer()
    _, report = run_plan(zoo_onnx("dcgan"), timer)
    assert calls and report["cached"] is None
    assert PlanCache(blocker / "plans").store("k", {"a": 1}) is None


def test_a_timer_that_does_not_say_what_it_times_is_not_cached(zoo_onnx, cache_dir):
    timer, calls = counting_timer()
    del timer.settings
    run_plan(zoo_onnx("dcgan"), timer)
    run_plan(zoo_onnx("dcgan"), timer)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.json"))


def test_quantize_twice_reuses_the_plan_and_writes_the_same_bytes(zoo_onnx, cache_dir, tmp_path):
    from gencompress.verbs.quantize import quantize

    src = zoo_onnx("dcgan")
    timer, calls = counting_timer()
    first = quantize(src, tmp_path / "a.onnx", calib_size=16, check=False, timer=timer)
    n = len(calls)
    assert n and first["speed_plan"]["cached"] is None and first["speed_plan"]["timed_on"]["isa"]
    second = quantize(src, tmp_path / "b.onnx", calib_size=16, check=False, timer=timer)
    assert len(calls) == n
    assert second["speed_plan"]["cached"] and second["speed_plan"]["layers"] == first["speed_plan"]["layers"]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    from gencompress.cli.quantize import _summary

    assert "timed on" in _summary(first) and "plan reused from" in _summary(second)


def test_calibration_ranges_are_reused_with_the_same_bytes(zoo_onnx, cache_dir, tmp_path, monkeypatch):
    """A second quantize of the same file and calibration options reads the ranges back (no
    calibration run) and writes the same bytes; another seed, or a damaged entry, calibrates."""
    import gencompress.verbs.quantizers as quantizers
    from gencompress.verbs.quantize import quantize

    runs = []
    real = quantizers.calibrated_ranges
    monkeypatch.setattr(quantizers, "calibrated_ranges", lambda *a, **k: (runs.append(1), real(*a, **k))[1])
    logs = []
    quantize(zoo_onnx("dcgan"), tmp_path / "a.onnx", calib_size=16, check=False, objective="size")
    quantize(zoo_onnx("dcgan"), tmp_path / "b.onnx", calib_size=16, check=False, objective="size", log=logs.append)
    assert len(runs) == 1 and any("calibration ranges reused" in m for m in logs)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    quantize(zoo_onnx("dcgan"), tmp_path / "c.onnx", calib_size=16, check=False, objective="size", seed=1)
    assert len(runs) == 2
    for entry in (cache_dir / "calibration").glob("*.json"):
        entry.write_text(entry.read_text().replace('"float"', '"load"'))  # a type that is not a float's: a miss
    quantize(zoo_onnx("dcgan"), tmp_path / "d.onnx", calib_size=16, check=False, objective="size")
    assert len(runs) == 3 and (tmp_path / "d.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
