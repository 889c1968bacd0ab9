"""Measure, then decide (verbs/int8_plan.py): the decision given stubbed measurements, the
Cast*Mul weight form onnxruntime folds at load, and the --objective plumbing. No wall-clock
assertions: every timing here is a stub."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.errors import GencompressError
from gencompress.passes.fold_weights import cast_mul_weights
from gencompress.verbs.int8_plan import int8_pays, plan_layers


def stub(costs: dict[str, dict[int, float]], base: dict[int, float] = {1: 1.0, 64: 1.0}):
    """A timer: a configuration's time ratio to float = base + the listed cost of each int8 layer
    (a negative cost is a speed-up); records every configuration asked for."""
    asked = []

    def measure(configs, reference=True, give_up=None):
        asked.extend(configs)
        out = [{} for _ in configs]
        for b in sorted(base):  # ascending, as the interleaved timer does
            for ratios, c in zip(out, configs):
                ratios[b] = base[b] + sum(costs[n][b] for n in c)
            if give_up is not None and give_up(*out):
                break
        return out

    return measure, asked


COSTS = {  # int8 pays at both batches / only at batch 64 and loses at 1 / loses at both
    "fast": {1: -0.3, 64: -0.4},
    "mixed": {1: +0.2, 64: -0.3},
    "slow": {1: +0.2, 64: +0.1},
}


def test_balanced_keeps_int8_only_where_no_batch_gets_slower():
    measure, asked = stub(COSTS)
    result = plan_layers(["fast", "mixed", "slow"], measure, "balanced")
    assert result.int8 == {"fast"}
    assert {r["node"]: r["choice"] for r in result.layers} == {"fast": "int8", "mixed": "float", "slow": "float"}
    assert "does not pay" in next(r["reason"] for r in result.layers if r["node"] == "slow")
    assert result.ratios == pytest.approx({1: 0.7, 64: 0.6})
    assert frozenset(COSTS) in asked  # all-int8 compared with the plan
    assert frozenset() not in asked  # no-int8 runs float's kernels: taken as 1.0x, not timed beside a faster plan


def test_balanced_prefers_small_among_not_slower():
    """Faster but 20% larger than the smallest not-slower configuration: balanced keeps the small one, speed the fast one."""
    measure, _ = stub({"big": {1: -0.01, 64: -0.5}})
    size = lambda c: 120 if c else 100  # noqa: E731  (int8 compute stores more: activation scales, int32 biases)
    assert plan_layers(["big"], measure, "balanced", size=size).int8 == frozenset()
    assert plan_layers(["big"], measure, "speed", size=size).int8 == {"big"}
    assert plan_layers(["big"], measure, "balanced", size=lambda c: 105 if c else 100).int8 == {"big"}  # within 10%


def test_speed_takes_a_layer_that_wins_on_average():
    measure, _ = stub(COSTS)
    assert plan_layers(["fast", "mixed", "slow"], measure, "speed").int8 == {"fast", "mixed"}


def test_size_times_nothing():
    measure, asked = stub(COSTS)
    result = plan_layers(["fast", "mixed", "slow"], measure, "size")
    assert result.int8 == set(COSTS) and asked == []


def test_balanced_falls_back_to_float_compute_when_everything_is_slower():
    measure, _ = stub({"a": {1: 0.1, 64: 0.1}}, base={1: 1.2, 64: 1.2})  # even no-int8 is 1.2x float
    result = plan_layers(["a"], measure, "balanced")
    assert result.int8 == frozenset() and "slower than float" in result.message


def test_batch_64_is_not_timed_when_every_group_of_a_step_lost_at_batch_1():
    measure, _ = stub(COSTS)
    result = plan_layers(["mixed", "slow", "fast"], measure, "balanced", groups=[["mixed"], ["slow"], ["fast"]])
    assert result.int8 == {"fast"}
    assert {r["node"]: sorted(r["int8_gain"]) for r in result.layers} == {"fast": ["1", "64"], "mixed": ["1", "64"], "slow": ["1", "64"]}
    result = plan_layers(["mixed", "slow"], measure, "balanced")  # both lose at batch 1: one step, batch 64 never timed
    assert result.int8 == frozenset()
    assert {r["node"]: sorted(r["int8_gain"]) for r in result.layers} == {"mixed": ["1"], "slow": ["1"]}


def test_groups_are_decided_together_with_one_measurement_each():
    """Two groups: one greedy step times the plan and each group flipped to float beside it, and
    every layer of a group gets the group's choice, reported in graph order."""
    costs = {"a1": COSTS["fast"], "b1": COSTS["slow"], "a2": COSTS["fast"], "b2": COSTS["slow"]}
    measure, asked = stub(costs)
    result = plan_layers(["a1", "b1", "a2", "b2"], measure, "balanced", groups=[["a1", "a2"], ["b1", "b2"]])
    assert result.int8 == {"a1", "a2"}
    assert [r["node"] for r in result.layers] == ["a1", "b1", "a2", "b2"]
    assert len(asked) == 3 + 2  # one greedy step: the plan and each group flipped to float; then plan and all (none not needed)
    assert all("decided with 1 more" in r["reason"] for r in result.layers)


def test_layer_groups_follow_shapes_not_names():
    """A chain of Convs: those with the same weight shape, input shape and reader ops form one
    group; a different input shape or reader starts another; groups in graph order."""
    import onnx_ir as ir

    from gencompress.verbs.int8_plan import layer_groups

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    shapes = {"c0": (8, 3), "c1": (8, 8), "c2": (8, 8), "c3": (8, 8)}
    prev = "x"
    for name, (cout, cin) in shapes.items():
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"{name}.w"))
        nodes.append(helper.make_node("Conv", [prev, f"{name}.w"], [f"{name}.y"], name=name, pads=[1, 1, 1, 1]))
        prev = f"{name}.y"
    nodes.append(helper.make_node("Relu", [prev], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    g = ir.serde.deserialize_model(model).graph
    assert layer_groups(g, ["c0", "c1", "c2", "c3"]) == [["c0"], ["c1", "c2"], ["c3"]]  # c3 is read by a Relu


def test_balanced_breaks_ties_toward_int8_and_the_smaller_file():
    """int8 2% slower at both batches (within noise): balanced keeps it (the smaller form), and of
    plan / all / none, all within noise of each other, keeps the one with the most int8 layers."""
    measure, _ = stub({"tie": {1: 0.02, 64: 0.02}, "other": {1: -0.01, 64: 0.03}})
    result = plan_layers(["tie", "other"], measure, "balanced", size=lambda c: 100 - 30 * len(c))
    assert result.int8 == {"tie", "other"}
    measure, _ = stub({"slow": {1: 0.02, 64: 0.2}})  # beyond noise at batch 64: float
    assert plan_layers(["slow"], measure, "balanced", size=lambda c: 100 - 30 * len(c)).int8 == frozenset()


def test_noise_band():
    assert int8_pays({1: 1.02, 64: 0.5}, {1: 1.0, 64: 1.0}, "balanced")  # 2% slower at b1: within noise
    assert not int8_pays({1: 1.10, 64: 0.5}, {1: 1.0, 64: 1.0}, "balanced")
    assert int8_pays({1: 1.10, 64: 0.5}, {1: 1.0, 64: 1.0}, "speed")


def _gru_model():
    """A GRU behind an int8 DequantizeLinear weight: the form insert_qdq writes for recurrent layers."""
    rng = np.random.default_rng(0)
    h, x = 8, 4
    w = rng.standard_normal((1, 3 * h, x)).astype(np.float32)
    scale = (np.abs(w).max(axis=(0, 2)) / 127).astype(np.float32)
    q = np.clip(np.rint(w / scale[None, :, None]), -127, 127).astype(np.int8)
    r = rng.standard_normal((1, 3 * h, h)).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1, name="dq"),
        helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=h, name="gru"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, x])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 1, 2, h])],
        [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(scale, "ws"), numpy_helper.from_array(r, "r")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cast_mul_weights_same_values_folded_by_onnxruntime(tmp_path):
    import onnx_ir as ir

    proto = _gru_model()
    model = ir.serde.deserialize_model(proto)
    assert cast_mul_weights(model) == 1
    folded = ir.serde.serialize_model(model)
    assert "DequantizeLinear" not in [n.op_type for n in folded.graph.node]
    assert any(i.data_type == TensorProto.INT8 for i in folded.graph.initializer)  # still stored as int8
    x = np.random.default_rng(1).standard_normal((3, 2, 4)).astype(np.float32)
    a = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)
    # onnxruntime folds the Cast*Mul at load: the optimized graph has no Cast/Mul left
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(folded.SerializeToString(), so)
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node] == ["GRU"]
    # the report sees int8 weights; quantize refuses the model as already quantized
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.check import layer_stats

    path = tmp_path / "folded.onnx"
    onnx.save(folded, str(path))
    assert [r["precision"] for r in layer_stats(path) if r["op_type"] == "GRU"][0] == "int8"
    with pytest.raises(GencompressError, match="already quantized"):
        quantize(path, tmp_path / "again.onnx", objective="size")


def test_cast_mul_weights_leaves_int8_kernels_alone():
    import onnx_ir as ir

    model = ir.serde.deserialize_model(_gru_model())
    assert cast_mul_weights(model, frozenset({"gru"})) == 0


def test_quantize_plan_with_stubbed_timer(zoo_onnx, tmp_path):
    """vae: a timer saying int8 never pays gives float compute with int8 weights folded at load."""
    from gencompress.verbs.quantize import quantize

    def never(models, reference=True, give_up=None):
        return [{1: 1.0 + 0.1 * sum(n.op_type == "QuantizeLinear" for n in m.graph.node), 64: 1.0} for m in models]

    out = tmp_path / "vae.onnx"
    report = quantize(zoo_onnx("vae"), out, calib_size=32, eval_size=16, timer=never)
    plan = report["speed_plan"]
    assert plan["objective"] == "balanced" and all(r["choice"] == "float" for r in plan["layers"])
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops and "ConvTranspose" in ops
    assert report["ratio"] < 0.30 and report["psnr_db"] > 45


def test_objective_flag_errors(run_cli, user_error, zoo_onnx, tmp_path):
    r = run_cli("quantize", zoo_onnx("vae"), tmp_path / "o.onnx", "--objective", "fastest")
    assert r.exit_code == 2 and "fastest" in r.stderr
    user_error(run_cli("quantize", zoo_onnx("vae"), tmp_path / "o.onnx", "--threads", "0"), "--threads")
    user_error(run_cli("compress", zoo_onnx("vae"), tmp_path / "out", "--mode", "fp16", "--objective", "speed"), "--objective")
    vae = zoo_onnx("vae")
    user_error(run_cli("compress", vae, tmp_path / "out", "--target-psnr", 40, "--sweep", "calib=minmax,mse"), "--target-psnr")
    user_error(run_cli("compress", vae, tmp_path / "out", "--target-psnr", -3), "--target-psnr")
    user_error(run_cli("compress", vae, tmp_path / "out", "--target-psnr", 40, "--mode", "weight-only"), "--target-psnr")
    assert not (tmp_path / "out").exists()
    with pytest.raises(GencompressError, match="objective"):
        from gencompress.passes.registry import validate_recipe

        validate_recipe([{"pass": "plan_int8", "options": {"objective": "fast"}}])


def test_choose_candidate_per_objective():
    from gencompress.verbs.target_search import choose_candidate

    rows = [
        {"label": "small-slow", "bytes": 100, "psnr": 45.0, "ratios": {1: 1.5, 64: 1.4}},
        {"label": "mid-fast", "bytes": 200, "psnr": 44.0, "ratios": {1: 0.6, 64: 0.5}},
        {"label": "mid-even", "bytes": 150, "psnr": 50.0, "ratios": {1: 1.0, 64: 1.02}},
        {"label": "fastest-bad", "bytes": 90, "psnr": 30.0, "ratios": {1: 0.3, 64: 0.3}},
    ]
    assert choose_candidate(rows, 40, "speed")[0]["label"] == "mid-fast"
    near = [*rows, {"label": "smaller-as-fast", "bytes": 120, "psnr": 41.0, "ratios": {1: 0.61, 64: 0.51}}]
    assert choose_candidate(near, 40, "speed")[0]["label"] == "smaller-as-fast"  # within noise of the fastest: the smaller
    assert choose_candidate(rows, 40, "size")[0]["label"] == "small-slow"
    assert choose_candidate(rows, 40, "balanced")[0]["label"] == "mid-even"  # smallest not slower than float
    pick, message = choose_candidate(rows, 60, "speed")
    assert pick is None and "cannot be met" in message and "mid-even" in message


def test_target_search_stubbed_timer_real_psnr(zoo_onnx, tmp_path):
    """vae, objective speed, a timer that calls Q/DQ pairs slow: the pick meets the target with the
    fewest quantized activations; every candidate carries its measured PSNR."""
    from gencompress.verbs.target_search import search_target

    def timer(models, reference=True, give_up=None):
        return [{1: 1.0 + 0.05 * sum(n.op_type == "QuantizeLinear" for n in m.graph.node), 64: 1.0} for m in models]

    result = search_target(zoo_onnx("vae"), tmp_path, target=40.0, objective="speed", calib_size=32, timer=timer)
    assert result["met"]
    chosen = next(r for r in result["rows"] if r["chosen"])
    assert chosen["psnr"] >= 40.0
    assert chosen["ratios"][1] == min(r["ratios"][1] for r in result["rows"] if r["psnr"] >= 40.0)
    labels = {r["label"] for r in result["rows"]}
    assert {"int8 every layer", "weight-only int4", "fp16 weights"} <= labels
    far = search_target(zoo_onnx("vae"), tmp_path / "far", target=200.0, objective="speed", calib_size=32, timer=timer)
    assert not far["met"] and "cannot be met" in far["message"]


def _conv_d2s_model(mode="DCR"):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4 * 3, 5, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("DepthToSpace", ["r"], ["d"], blocksize=2, mode=mode, name="d2s"),
        helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["y"], name="crop"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 6, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 1], np.int64), "starts"),
         numpy_helper.from_array(np.array([-1, -2], np.int64), "ends"), numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_depth_to_space_nhwc_exact_and_crd_left_alone():
    import onnx_ir as ir

    from gencompress.passes.depth_to_space_nhwc import DepthToSpaceNHWCPass

    proto = _conv_d2s_model()
    model = ir.serde.deserialize_model(proto)
    p = DepthToSpaceNHWCPass()
    model = p(model).model
    assert p.report["rewritten"] == ["d2s"]
    out = ir.serde.serialize_model(model)
    assert "DepthToSpace" not in [n.op_type for n in out.graph.node] and [o.name for o in out.graph.output] == ["y"]
    x = np.random.default_rng(3).standard_normal((2, 5, 6, 7)).astype(np.float32)
    a = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)
    crd = ir.serde.deserialize_model(_conv_d2s_model("CRD"))
    assert not DepthToSpaceNHWCPass()(crd).modified  # channel-inner gather: slower than DepthToSpace


def test_planned_dcgan_has_no_transposes_between_int8_convs(zoo_onnx, tmp_path):
    """All-int8 plan (stub timer: int8 always pays): onnxruntime's optimized graph keeps one
    Transpose per rewritten layer (the shuffle) plus one at each end, and no DepthToSpace."""
    from gencompress.verbs.quantize import quantize

    def int8_pays(models, reference=True, give_up=None):
        return [{1: 1.0 / (1 + sum(n.op_type == "QuantizeLinear" for n in m.graph.node)), 64: 1.0} for m in models]

    out = tmp_path / "dcgan.onnx"
    report = quantize(zoo_onnx("dcgan"), out, calib_size=32, eval_size=16, objective="speed", timer=int8_pays)
    assert all(r["choice"] == "int8" for r in report["speed_plan"]["layers"]) and report["psnr_db"] > 40
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "DepthToSpace" not in ops and ops.count("QLinearConv") == 3
    assert ops.count("Transpose") == 2 + 2, ops  # in, out, and the two rewritten layers' shuffles


def test_many_near_tie_groups_are_decided_as_one_block():
    """More groups than one greedy step takes: the plan beside the whole block in float, one
    comparison; the block's int8 pays (each group a tie), so every group keeps int8."""
    costs = {f"g{i}": {1: 0.004, 64: 0.004} for i in range(12)}
    costs["fast"] = {1: -0.3, 64: -0.3}
    measure, asked = stub(costs)
    result = plan_layers(list(costs), measure, "balanced")
    assert result.int8 == set(costs)
    assert len(asked) == 3  # the plan and the block in float; then the plan (every layer int8) beside float
    assert all("one block of 13 groups" in r["reason"] for r in result.layers)


def test_a_block_faster_in_float_is_halved_down_to_its_slow_group():
    """A block slower in int8 beyond noise is halved; halves not slower keep int8, the half holding
    the slow group is halved again until the group is found."""
    costs = {f"g{i}": {1: 0.0, 64: 0.0} for i in range(8)}
    costs["g5"] = {1: 0.2, 64: 0.2}
    measure, _ = stub(costs)
    result = plan_layers(list(costs), measure, "balanced")
    assert result.int8 == set(costs) - {"g5"}


def test_ties_summed_over_a_block_are_not_kept_in_int8():
    """Every group 2% slower in int8 (a tie alone) and 16 of them 1.32x slower together: halves of
    the block that lost keep int8 only where it is not slower at all; the model computes in float."""
    costs = {f"g{i}": {1: 0.02, 64: 0.02} for i in range(16)}
    measure, _ = stub(costs)
    result = plan_layers(list(costs), measure, "balanced")
    assert result.int8 == frozenset()
    assert all(r["choice"] == "float" for r in result.layers)


def test_greedy_steps_stop_at_the_budget_and_say_so():
    """A stubbed clock (10 s per measurement) and a 15 s budget: after the first step the next would
    pass the budget, so the groups left are decided untimed (int8, or float where their block
    measured float), the rows and the message say so, and the plan is still measured beside float."""
    costs = {f"g{i}": {1: 0.0, 64: 0.0} for i in range(8)}
    costs["g1"] = {1: 0.3, 64: 0.3}
    measure, asked = stub(costs)
    now = [0.0]

    def clock():
        now[0] += 10.0  # read when a step starts and when it ends: 10 s per step
        return now[0]

    result = plan_layers(list(costs), measure, "balanced", budget=15.0, clock=clock)
    untimed = [r for r in result.layers if r["decided"] == "budget"]
    assert len(untimed) == 8 and all("budget" in r["reason"] for r in untimed)
    assert all(r["choice"] == "float" for r in untimed)  # their block measured faster in float
    assert "8 layer group(s) decided untimed" in result.message and "budget (15 s)" in result.message
    assert len(asked) == 2 + 2 and result.int8 == frozenset()  # one step; then the plan and every layer int8 beside float
    # the same plan with no budget times every step and keeps int8 where it pays
    assert plan_layers(list(costs), stub(costs)[0], "balanced").int8 == set(costs) - {"g1"}
