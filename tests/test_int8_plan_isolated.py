"""The int8 plan's cheap first step (verbs/int8_plan.py): layers timed alone, float against int8,
decide the clear groups; only the others are timed in the whole model. Timings are stubs: what
is tested is which decisions come from where, what is timed, the kernel timing cache and the
fallback for models too large to plan. No wall-clock assertions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from gencompress.verbs import int8_plan
from gencompress.verbs.int8_plan import PlanInt8Pass, plan_layers, predicted_choice


def stub(costs, base={1: 1.0, 64: 1.0}):
    asked = []

    def measure(configs, reference=True, give_up=None):
        asked.append(list(configs))
        return [{b: base[b] + sum(costs[n][b] for n in c) for b in base} for c in configs]

    return measure, asked


def test_clear_groups_are_not_timed_in_context():
    """Two groups clearly faster alone are decided without a greedy step; the one near the band
    (and the one that could not be isolated) are timed in the model."""
    costs = {"a": {1: -0.2, 64: -0.3}, "b": {1: -0.1, 64: -0.2}, "near": {1: 0.01, 64: -0.01}, "odd": {1: 0.2, 64: 0.2}}
    measure, asked = stub(costs)
    predicted = [{1: 1.5, 64: 2.0}, {1: 1.2, 64: 1.3}, {1: 1.02, 64: 0.98}, None]
    result = plan_layers(list(costs), measure, "balanced", predicted=predicted)
    decided = {r["node"]: r["decided"] for r in result.layers}
    assert decided == {"a": "isolated", "b": "isolated", "near": "in context", "odd": "in context"}
    assert result.int8 == {"a", "b", "near"}
    greedy = [configs for configs in asked if len(configs) > 1]
    assert len(greedy) == 1 and len(greedy[0]) == 3  # one step: the plan and the two undecided groups flipped
    assert all(len(configs) == 1 for configs in asked[1:])  # finals: one configuration beside float at a time


def test_isolation_never_decides_float_and_the_guard_still_applies():
    """An isolated layer much slower alone is timed in context (its edges' Q/DQ are shared there);
    a plan of clear groups that is slower than float in the model is still refused."""
    assert predicted_choice({1: 0.1, 64: 3.0}, "balanced") is None
    assert predicted_choice({1: 1.2, 64: 1.3}, "balanced") == "int8"
    assert predicted_choice({1: 1.05, 64: 1.3}, "balanced") is None
    assert predicted_choice({1: 0.95, 64: 1.3}, "speed") == "int8"  # speed: the geometric mean
    measure, _ = stub({"a": {1: 0.3, 64: 0.3}})  # alone it looked fast; in the model it is 1.3x slower
    result = plan_layers(["a"], measure, "balanced", predicted=[{1: 1.5, 64: 1.5}])
    assert result.int8 == frozenset() and "slower than float" in result.message


def test_a_layer_too_small_to_matter_keeps_int8_untimed():
    """Balanced: a layer 3x slower alone but negligible in the model is int8 (a tie); speed times it."""
    measure, asked = stub({"tiny": {1: 0.01, 64: 0.0}, "big": {1: -0.5, 64: -0.5}})
    result = plan_layers(["tiny", "big"], measure, "balanced", predicted=[{1: 0.33, 64: 1.0}, {1: 2.0, 64: 2.0}], negligible=[True, False])
    assert result.int8 == {"tiny", "big"} and all(r["decided"] == "isolated" for r in result.layers)
    assert "too small a part" in result.layers[0]["reason"] and len(asked) == 1  # only the guard
    result = plan_layers(["tiny", "big"], measure, "speed", predicted=[{1: 0.33, 64: 1.0}, {1: 2.0, 64: 2.0}], negligible=[True, False])
    assert {r["node"]: r["decided"] for r in result.layers} == {"tiny": "in context", "big": "isolated"}


def test_size_budget_is_stated():
    """Balanced keeps a model larger than SIZE_BUDGET x the every-layer-int8 one only when every
    layer in int8 is slower than float, and says so."""
    measure, _ = stub({"big": {1: 0.3, 64: 0.3}, "small": {1: -0.1, 64: -0.1}})
    size = lambda c: 100 if c == {"big", "small"} else 140  # noqa: E731
    result = plan_layers(["big", "small"], measure, "balanced", size=size)
    assert result.int8 == {"small"} and "budget" in result.message


def isolating_timer(threads=2, batches=(1, 64)):
    """A whole-model stub (each quantized activation 1% faster at batch 64, 1% slower at 1) with an
    isolated-layer stub (int8 alone 1.5x faster at every batch) that counts its calls."""
    calls, isolated_calls = [], []

    def measure(models, reference=True, give_up=None):
        calls.append(len(models))
        qdq = [sum(n.op_type == "QuantizeLinear" for n in m.graph.node) for m in models]
        return [{b: 1.0 + (0.01 if b == 1 else -0.01) * q for b in batches} for q in qdq]

    def isolated(float_model, int8_model, feeds_at, clear_at=None):  # the forms may come as functions returning them (called once)
        isolated_calls.append(tuple(m() if callable(m) else m for m in (float_model, int8_model)))
        for b in batches:
            feeds = feeds_at(b)
            assert next(iter(feeds.values())).shape[0] == b
        return {b: (0.003, 0.002) for b in batches}

    measure.settings = {"provider": "CPUExecutionProvider", "threads": threads, "batches": list(batches)}
    measure.isolated = isolated
    return measure, calls, isolated_calls


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "plans"
    monkeypatch.setenv("GENCOMPRESS_PLAN_CACHE", str(folder))
    return folder


def run_plan(model_path, timer, **options):
    p = PlanInt8Pass(PlanInt8Pass.Options(calib_size=16, **options))
    p.timer = timer
    out = p(ir.load(model_path)).model
    return ir.serde.serialize_model(out).SerializeToString(deterministic=True), p.report


def test_isolated_forms_run_and_the_kernel_cache_is_reused(zoo_onnx, cache_dir):
    """dcgan: every group isolated, its float and int8 forms load in onnxruntime with the layer's own
    shapes; a second plan (another objective, so no plan reuse) times no isolated layer."""
    from gencompress.runtime_check.sessions import make_session

    timer, calls, isolated_calls = isolating_timer()
    _, report = run_plan(zoo_onnx("dcgan"), timer)
    n = len(isolated_calls)
    assert n == sum("isolated_gain" in r for r in report["layers"]) > 0  # the zoo dcgan: one layer per group
    assert all(r["decided"] == "isolated" for r in report["layers"] if "isolated_gain" in r)
    float_model, int8_model = isolated_calls[0]
    assert {n.op_type for n in int8_model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    for model in (float_model, int8_model):
        x = model.graph.input[0]
        shape = [4 if d.dim_param else d.dim_value for d in x.type.tensor_type.shape.dim]
        out = make_session(model.SerializeToString()).run(None, {x.name: np.zeros(shape, np.float32)})[0]
        assert out.shape[0] == 4
    assert list(cache_dir.glob("kernels-*.json"))
    run_plan(zoo_onnx("dcgan"), timer, objective="speed")
    assert len(isolated_calls) == n  # the kernel timings of the first plan, reused


def test_cached_plan_with_isolated_groups_writes_the_same_bytes(zoo_onnx, cache_dir):
    timer, calls, isolated_calls = isolating_timer()
    first, report = run_plan(zoo_onnx("dcgan"), timer)
    n, k = len(calls), len(isolated_calls)
    again, report2 = run_plan(zoo_onnx("dcgan"), timer)
    assert again == first and len(calls) == n and len(isolated_calls) == k and report2["cached"]


def test_model_too_large_to_plan_is_streamed_with_a_note(zoo_onnx, tmp_path, monkeypatch):
    from gencompress.verbs.quantize import quantize

    monkeypatch.setattr(int8_plan, "PLAN_PEAK_PER_FILE_BYTE", 1e9)  # every file "needs" more than the machine has

    def never(models, reference=True, give_up=None):
        raise AssertionError("nothing may be timed")

    report = quantize(zoo_onnx("dcgan"), tmp_path / "o.onnx", calib_size=16, check=False, timer=never)
    assert "speed_plan" not in report and any("every layer int8 instead" in n for n in report["notes"])
    assert onnx.load(str(tmp_path / "o.onnx")).graph.node


def test_large_model_decided_alone_is_built_streamed_untimed(zoo_onnx, cache_dir, tmp_path, monkeypatch):
    """A model above ISOLATE_BYTES whose every group is clearly faster alone: no whole-model timing
    (no float session), every layer int8 by the streamed one build; a second run times nothing
    (kernel cache) and writes the same bytes."""
    from gencompress.verbs.quantize import quantize

    monkeypatch.setattr(int8_plan, "ISOLATE_BYTES", 0)
    timer, calls, isolated_calls = isolating_timer()
    first = quantize(zoo_onnx("dcgan"), tmp_path / "a.onnx", calib_size=16, check=False, timer=timer)
    plan = first["speed_plan"]
    assert calls == [] and isolated_calls and plan["chosen_speed"] == {}
    assert all(r["decided"] == "isolated" and r["choice"] == "int8" for r in plan["layers"])
    assert "not timed in the whole model" in plan["message"] and plan["timed_on"]["threads"] == 2
    n = len(isolated_calls)
    quantize(zoo_onnx("dcgan"), tmp_path / "b.onnx", calib_size=16, check=False, timer=timer)
    assert len(isolated_calls) == n and calls == []
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_large_model_near_the_band_is_timed_in_the_model(zoo_onnx, cache_dir, tmp_path, monkeypatch):
    """The same model with one group not clearly faster alone: the plan is timed in the whole model
    (the guard kept), from the same calibration, and says so in a note."""
    from gencompress.verbs.quantize import quantize

    monkeypatch.setattr(int8_plan, "ISOLATE_BYTES", 0)
    timer, calls, isolated_calls = isolating_timer()
    inner = timer.isolated

    def isolated(float_model, int8_model, feeds_at, clear_at=None):  # the first group: 2x slower alone, not negligible
        times = inner(float_model, int8_model, feeds_at)
        return {b: (0.003, 0.006) for b in times} if len(isolated_calls) == 1 else times

    timer.isolated = isolated
    report = quantize(zoo_onnx("dcgan"), tmp_path / "a.onnx", calib_size=16, check=False, timer=timer)
    assert calls and report["speed_plan"]["chosen_speed"]  # timed beside float
    assert any("in the whole model" in n for n in report["notes"])
    assert sum(r["decided"] == "in context" for r in report["speed_plan"]["layers"]) >= 1
    # the same, on a machine where the timed plan would not fit in memory: the streamed one build, untimed
    monkeypatch.setattr(int8_plan, "PLAN_PEAK_PER_FILE_BYTE", 1e9)
    calls.clear()
    isolated_calls.clear()
    report = quantize(zoo_onnx("dcgan"), tmp_path / "b.onnx", calib_size=16, check=False, timer=timer)
    assert calls == [] and "speed_plan" not in report and any("every layer int8 instead" in n for n in report["notes"])


def test_untimed_plan_needs_every_group_decided():
    """plan_layers(untimed=...): nothing timed when isolation decides every group; otherwise the
    greedy step and the guard run as before."""
    measure, asked = stub({"a": {1: -0.2, 64: -0.2}, "b": {1: 0.0, 64: 0.0}})
    result = plan_layers(["a", "b"], measure, "balanced", predicted=[{1: 2.0, 64: 2.0}, {1: 1.5, 64: 1.5}], untimed="why")
    assert asked == [] and result.int8 == {"a", "b"} and result.message == "why"
    result = plan_layers(["a", "b"], measure, "balanced", predicted=[{1: 2.0, 64: 2.0}, {1: 1.0, 64: 1.0}], untimed="why")
    assert asked and result.message != "why"


def test_isolated_forms_quantize_an_output_an_int8_layer_reads(zoo_onnx):
    """The zoo dcgan's first layer feeds an int8 layer: both isolated forms end with its input
    quantization (without it onnxruntime leaves an int8 Gemm unfused); the last layer's output is
    the model's, left as it is. The isolated timer times a large layer at a smaller batch and
    scales its times to the batch asked for."""
    import onnx_ir as ir

    from gencompress.passes.insert_qdq import StaticOptions
    from gencompress.verbs.quantizers import calibrated_ranges, fold_into_layers, prepare

    model = ir.load(zoo_onnx("dcgan"))
    prepare(model)
    fold_into_layers(model)
    static = StaticOptions(calib_size=8)
    iso = int8_plan.isolation_of(model, rewrite=True, static_options=static, exclude=(), ranges=calibrated_ranges(model, static, log=print))
    first, last = iso.groups[0][0], iso.groups[-1][0]
    for name, quantized in ((first, True), (last, False)):
        tiny = int8_plan.isolated_layer(iso.model, name)
        pair = int8_plan.isolated_pair(iso, tiny, name)
        assert all((m.graph.node[-1].op_type == "DequantizeLinear") == quantized for m in pair)
    asked = []
    timer = int8_plan.interleaved_timer(zoo_onnx("dcgan"), header=onnx.load(str(zoo_onnx("dcgan"))), batches=(1, 64))
    feeds_at = int8_plan._feeds_at(tiny.graph.input[0], (0.0, 1.0))
    int8_plan.ISOLATED_RUN_SECONDS, saved = 1e-9, int8_plan.ISOLATED_RUN_SECONDS
    try:
        times = timer.isolated(*pair, lambda b: (asked.append(b), feeds_at(b))[1])
    finally:
        int8_plan.ISOLATED_RUN_SECONDS = saved
    assert set(asked) == {1} and set(times) == {1, 64}  # batch 64 timed at batch 1, scaled


def test_isolated_timing_stops_once_the_decision_is_settled(zoo_onnx, monkeypatch):
    """The same form timed as float and as "int8": at a gain of 100 to decide at, the int8 runs are
    plainly on the slow side after ISOLATED_MIN_RUNS runs, so no more are timed; asked for no gain,
    the timer runs its full count (a sub-millisecond layer: many more)."""
    from gencompress.runtime_check import latency

    runs = []
    timed = latency.time_interleaved

    def counting(sessions, feeds, **kwargs):
        times = timed(sessions, feeds, **kwargs)
        runs.append(len(times["float"]))
        return times

    monkeypatch.setattr(latency, "time_interleaved", counting)
    tiny = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8])]))
    timer = int8_plan.interleaved_timer(zoo_onnx("dcgan"), header=onnx.load(str(zoo_onnx("dcgan"))), batches=(1,))
    feeds_at = int8_plan._feeds_at(tiny.graph.input[0], (0.0, 1.0))
    timer.isolated(tiny, tiny, feeds_at, clear_at=100.0)
    assert runs[-2:] == [1, int8_plan.ISOLATED_MIN_RUNS - 1]  # the probe's run counts among them
    timer.isolated(tiny, tiny, feeds_at)
    assert runs[-1] > 10 * int8_plan.ISOLATED_MIN_RUNS


def _synthetic_timer(monkeypatch, gain: float):
    """An isolated timer whose runs cycle through times 0.7-1.3 ms (float) and the same divided by
    ``gain`` (int8) instead of onnxruntime's: quartiles about 15% either side of the median, which
    holds still; returns (timer, [(runs timed, runs asked)] per call)."""
    from gencompress.runtime_check import latency

    cycle, counts = (0.7, 1.0, 1.3, 0.85, 1.15), []

    def synthetic(sessions, feeds, *, runs, warmup, tick=None, stop=None):
        times = {k: [] for k in sessions}
        for _ in range(runs):
            for k in times:
                times[k].append(1e-3 * cycle[(len(times[k]) + len(counts)) % len(cycle)] / (gain if k == "int8" else 1.0))
            if stop is not None and stop(times):
                break
        counts.append((len(times["float"]), runs))
        return times

    monkeypatch.setattr(latency, "time_interleaved", synthetic)
    monkeypatch.setattr(int8_plan, "ISOLATED_SECONDS", 0.4)  # a cap of 400 runs at 1 ms
    tiny = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8])]))
    timer = int8_plan.interleaved_timer(tiny, header=tiny, batches=(1,))
    return lambda clear_at: timer.isolated(tiny, tiny, int8_plan._feeds_at(tiny.graph.input[0], (0.0, 1.0)), clear_at), counts


def test_isolated_timing_settles_on_the_medians_when_quartiles_overlap(monkeypatch):
    """Runs spread so wide that the quartiles of a 1.3x gain never clear 1.1 beyond the noise band: the
    medians' bounds narrow with the runs and stop the timing well before its full count, on the
    side the full count decides; at a gain on the decision point itself they never settle."""
    isolated, counts = _synthetic_timer(monkeypatch, gain=1.3)
    f, i = isolated(1.1)[1]
    (_, _), (timed, asked) = counts
    assert f / i > 1.1 and asked > 300 and timed < asked / 2
    isolated, counts = _synthetic_timer(monkeypatch, gain=1.1)
    isolated(1.1)
    assert counts[-1][0] == counts[-1][1] > 300


def test_median_bounds_hold_the_median_and_narrow_with_runs():
    """A few runs: their smallest and largest; many: order statistics around the median, narrower
    than the quartiles (``quartiles``: numpy's percentiles)."""
    assert int8_plan.median_bounds([3.0, 1.0, 2.0]) == (1.0, 3.0)
    t = np.random.default_rng(0).lognormal(0.0, 0.3, 400)
    lo, hi = int8_plan.median_bounds(t)
    q1, median, q3 = np.percentile(t, (25, 50, 75))
    assert q1 < lo < median < hi < q3
    for n in (3, 4, 10, 400):  # the timer's quartiles: numpy's
        assert np.allclose(int8_plan.quartiles(t[:n]), np.percentile(t[:n], (25, 75)))


def test_isolated_feeds_are_drawn_once_and_repeated_to_the_batch():
    """An isolated layer's inputs: uniform over the calibrated range, in the input's type; a larger
    batch holds the same seeded samples as a smaller one, repeated."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["N", 3, 5])
    feeds_at = int8_plan._feeds_at(x, (-2.0, 3.0))
    one, many = feeds_at(1)["x"], feeds_at(64)["x"]
    assert one.shape == (1, 3, 5) and many.shape == (64, 3, 5) and many.dtype == np.float16
    assert -2.0 <= many.min() and many.max() <= 3.0 and many.std() > 1.0
    assert np.array_equal(many[:1], one) and len({many[k].tobytes() for k in range(64)}) == int8_plan.FEED_SAMPLES


def test_slow_model_times_a_large_batch_at_a_stand_in(zoo_onnx, monkeypatch):
    """A model whose float run at batch 64 would take over MODEL_RUN_SECONDS is timed there at a
    smaller batch, never below MODEL_MIN_BATCH, and its ratio stands for batch 64; the float session
    is warmed by the probe alone (no second warm-up run of it). A fast model is timed at 64."""
    from gencompress.runtime_check import latency

    feeds_seen, warmups = [], []
    timed = latency.time_interleaved

    def recording(sessions, feeds, **kwargs):  # feeds: one input dict, or one per session
        inputs = next(iter(feeds.values()))
        feeds_seen.append((next(iter(inputs.values())) if isinstance(inputs, dict) else inputs).shape[0])
        warmups.append(kwargs["warmup"])
        return timed(sessions, feeds, **kwargs)

    monkeypatch.setattr(latency, "time_interleaved", recording)
    path = zoo_onnx("dcgan")
    model = onnx.load(str(path))
    monkeypatch.setattr(int8_plan, "MODEL_RUN_SECONDS", 1e-9)  # every model "slow": the stand-in is the floor
    timer = int8_plan.interleaved_timer(path, header=model, batches=(1, 64))
    (ratios,) = timer([model])
    assert set(ratios) == {1, 64} and timer.timed_at == {1: 1, 64: int8_plan.MODEL_MIN_BATCH}
    assert 64 not in feeds_seen and int8_plan.MODEL_MIN_BATCH in feeds_seen
    assert all(w["float"] == 0 for w in warmups if isinstance(w, dict))
    monkeypatch.setattr(int8_plan, "MODEL_RUN_SECONDS", 1e9)  # every model fast: batch 64 itself
    timer = int8_plan.interleaved_timer(path, header=model, batches=(1, 64))
    timer([model])
    assert timer.timed_at == {1: 1, 64: 64}


def test_guard_estimate_counts_the_stand_in_batch():
    """The whole-model timing's estimated cost uses the batch that stands in for a slow large one."""
    slow = {1: 0.01, 64: 0.9}
    at_64 = 2 * max(int8_plan.TARGET_SLOT_SECONDS, (int8_plan.MIN_RUNS + 2) * 0.9)
    assert int8_plan.guard_seconds(slow) < at_64 / 2
    fast = {1: 0.001, 64: 0.02}
    assert int8_plan.guard_seconds(fast) == 2 * 2 * int8_plan.TARGET_SLOT_SECONDS


def test_large_layer_is_timed_on_a_slice_of_its_output_channels(zoo_onnx, monkeypatch):
    """A Conv/ConvTranspose over ISOLATE_WEIGHTS keeps at least 64 of its output channels alone,
    and says by how much its times scale back; below, or asked not to, it is whole."""
    import onnx_ir as ir

    from gencompress.verbs.quantizers import fold_into_layers, prepare

    model = ir.load(zoo_onnx("dcgan"))
    prepare(model)
    fold_into_layers(model)
    shaped = int8_plan.isolation_of(model, rewrite=True, static_options=None, exclude=(), ranges=({}, {})).model
    name = next(n.name for n in shaped.graph if n.op_type == "ConvTranspose" and n.inputs[1].const_value.shape[1] >= 128)
    whole = int8_plan.isolated_layer(shaped, name)
    monkeypatch.setattr(int8_plan, "ISOLATE_WEIGHTS", 1000)
    sliced = int8_plan.isolated_layer(shaped, name)
    kept = {t.name: t.dims[1] for t in sliced.graph.initializer if len(t.dims) == 4}
    full = {t.name: t.dims[1] for t in whole.graph.initializer if len(t.dims) == 4}
    scale = float(next(m.value for m in sliced.metadata_props if m.key == int8_plan.SLICED_KEY))
    assert all(kept[k] == 64 and full[k] / 64 == scale for k in kept) and not whole.metadata_props
    assert not int8_plan.isolated_layer(shaped, name, slice_weights=0).metadata_props
    # the second, larger slice a layer not clear on the first is timed again on
    weight = next(t for t in whole.graph.initializer if len(t.dims) == 4)
    larger = int8_plan.isolated_layer(shaped, name, slice_weights=int(np.prod(weight.dims)) * 3 // 4)
    assert all(64 < t.dims[1] < full[t.name] for t in larger.graph.initializer if len(t.dims) == 4) and larger.metadata_props


def test_compress_takes_quantizes_route(zoo_onnx, cache_dir, tmp_path, monkeypatch):
    """The plan_int8 step (compress's default) plans as quantize does: a large model first from its
    layers alone (decided: every layer int8, no whole-model timing, even where a timed plan would
    not fit in memory); one group left undecided: the memory check, then the untimed fallback."""
    from gencompress.verbs.compress import compress

    monkeypatch.setattr(int8_plan, "ISOLATE_BYTES", 0)
    monkeypatch.setattr(int8_plan, "PLAN_PEAK_PER_FILE_BYTE", 1e9)  # a timed plan never fits
    timer, calls, isolated_calls = isolating_timer()
    monkeypatch.setattr(PlanInt8Pass, "timer", staticmethod(timer))

    def step(out):
        written = compress(zoo_onnx("dcgan"), tmp_path / out, samples=8, bench=False, flags={"calib_size": 16})
        return next(s for s in written["passes"] if s["pass"] == "plan_int8")["summary"]

    alone = step("a")
    assert alone["route"] == int8_plan.ROUTE_ALONE and calls == [] and isolated_calls
    inner = timer.isolated
    timer.isolated = lambda f, i, feeds_at, clear_at=None: {b: (0.003, 0.006) for b in inner(f, i, feeds_at)}  # every group 2x slower alone
    for kernels in cache_dir.glob("kernels-*.json"):
        kernels.unlink()  # timed alone again, with the new stub
    fallback = step("b")
    assert fallback["route"] == int8_plan.ROUTE_MEMORY and calls == [] and "would take about" in fallback["message"]
    monkeypatch.setattr(int8_plan, "PLAN_PEAK_PER_FILE_BYTE", 12)  # fits: timed in the model
    assert step("c")["route"] == "timed in the model" and calls


def _two_branches(tmp_path, add_reads_input=False):
    """x → conv a, conv b → Add → conv c → Tanh → y (the Add reads x itself with ``add_reads_input``)."""
    from onnx import TensorProto, helper, numpy_helper

    w = lambda name: numpy_helper.from_array(np.random.default_rng(len(name)).standard_normal((4, 4, 3, 3)).astype(np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["x" if add_reads_input else "a", "b"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "wc"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["y"], name="tanh")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w("wa"), w("wb"), w("wc")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return int8_plan.isolation_of(model, rewrite=False, static_options=None, exclude=(), ranges=({}, {}))


def test_a_weightless_layer_between_int8_layers_follows_them(tmp_path):
    """An Add whose inputs come from int8 layers and whose reader is one is int8 untimed; one that
    reads the graph input, or feeds a layer not decided alone, is left to the timing."""
    iso = _two_branches(tmp_path)
    by_name = {g[0]: i for i, g in enumerate(iso.groups)}
    assert set(by_name) >= {"conv_a", "add", "conv_c"} and iso.weightless == {"add"}
    clear = [None if g[0] == "add" else {1: 2.0, 64: 2.0} for g in iso.groups]
    follows = int8_plan.followers(iso, clear, None, "balanced")
    assert [g[0] for g, f in zip(iso.groups, follows) if f] == ["add"]
    near = [None if g[0] in ("add", "conv_c") else {1: 2.0, 64: 2.0} for g in iso.groups]
    assert not any(int8_plan.followers(iso, near, None, "balanced"))
    iso = _two_branches(tmp_path, add_reads_input=True)
    clear = [None if g[0] == "add" else {1: 2.0, 64: 2.0} for g in iso.groups]
    assert not any(int8_plan.followers(iso, clear, None, "balanced"))
    # in plan_layers: the follower needs no timing; the guard alone is timed
    measure, asked = stub({n: {1: -0.1, 64: -0.1} for n in iso.layers})
    iso = _two_branches(tmp_path)
    clear = [None if g[0] == "add" else {1: 2.0, 64: 2.0} for g in iso.groups]
    result = plan_layers(iso.layers, measure, "balanced", groups=iso.groups, predicted=clear, follows=int8_plan.followers(iso, clear, None, "balanced"))
    assert {r["node"]: r["decided"] for r in result.layers}["add"] == "neighbours" and len(asked) == 1


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_large_fully_connected_layer_is_sliced_by_its_output_columns(op, monkeypatch):
    """A Gemm (transB=1: weight [N, K]) or MatMul (weight [K, N]) over ISOLATE_WEIGHTS keeps 64 of its
    N outputs alone, bias sliced alike, and runs; its times scale back by N / 64."""
    from onnx import TensorProto, helper, numpy_helper

    from gencompress.runtime_check.sessions import make_session

    rng = np.random.default_rng(0)
    if op == "Gemm":
        node = helper.make_node("Gemm", ["x", "w", "c"], ["h"], name="fc", transB=1)
        inits = [numpy_helper.from_array(rng.standard_normal((256, 32)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "c")]
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["h"], name="fc")
        inits = [numpy_helper.from_array(rng.standard_normal((32, 256)).astype(np.float32), "w")]
    graph = helper.make_graph([node, helper.make_node("Relu", ["h"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    shaped = int8_plan.isolation_of(model, rewrite=False, static_options=None, exclude=(), ranges=({}, {})).model
    monkeypatch.setattr(int8_plan, "ISOLATE_WEIGHTS", 1000)
    sliced = int8_plan.isolated_layer(shaped, "fc")
    assert float(next(m.value for m in sliced.metadata_props if m.key == int8_plan.SLICED_KEY)) == 4.0
    assert {t.name: list(t.dims) for t in sliced.graph.initializer} == ({"w": [64, 32], "c": [64]} if op == "Gemm" else {"w": [32, 64]})
    out = make_session(sliced.SerializeToString()).run(None, {"x": np.ones((3, 32), np.float32)})[0]
    assert out.shape == (3, 64)
