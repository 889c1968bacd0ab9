"""Unstructured magnitude pruning and N:M pruning: on tiny hand-built graphs and on the zoo."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.inputs import sample_inputs, specs_of_model
from gencompress.verbs.prune import prune

RNG_SEED = 1234


# ---- tiny graphs -------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits, opset=17, meta=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_gemm_model(rng, *, ties=False):
    """x[N,4,6,6] -> Conv(8) -> Relu -> ConvTranspose(6) -> Relu -> Flatten -> Gemm(12) -> MatMul(5)."""
    w = {
        "conv.w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "conv.b": rng.standard_normal(8).astype(np.float32),
        "convt.w": 0.5 * rng.standard_normal((8, 6, 2, 2)).astype(np.float32),
        "gemm.w": 0.05 * rng.standard_normal((12, 6 * 12 * 12)).astype(np.float32),  # layers differ in scale
        "mm.w": 0.3 * rng.standard_normal((12, 5)).astype(np.float32),
    }
    if ties:  # many equal magnitudes, with both signs
        for k in ("conv.w", "convt.w"):
            w[k] = (np.round(w[k] * 2) / 2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "convt.w"], ["t"], name="convt", strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm.w"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "mm.w"], ["y"], name="mm"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        w,
        meta={"gencompress.inputs": '[{"name": "x", "shape": [1, 4, 6, 6], "dtype": "float32", "low": 0, "high": 1}]'},
    )


WEIGHTS = ("conv.w", "convt.w", "gemm.w", "mm.w")


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def tiny(tmp_path):
    return _save(conv_gemm_model(np.random.default_rng(RNG_SEED)), tmp_path / "tiny.onnx")


# ---- unstructured ------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_layer_scope_hits_target_and_prunes_the_smallest(tiny, tmp_path, sparsity):
    out = tmp_path / "out.onnx"
    prune(tiny, out, sparsity=sparsity, min_size=0)
    before, after = _inits(tiny), _inits(out)
    for name in WEIGHTS:
        w0, w1 = before[name], after[name]
        zeroed = w1 == 0
        assert abs(zeroed.mean() - sparsity) <= 0.005 + 0.5 / w0.size
        # kept weights are bit-identical, zeroed ones are exactly 0
        np.testing.assert_array_equal(w1[~zeroed], w0[~zeroed])
        # every zeroed weight is no larger in magnitude than every kept weight
        assert np.abs(w0[zeroed]).max() <= np.abs(w0[~zeroed]).min()
    np.testing.assert_array_equal(after["conv.b"], before["conv.b"])  # a bias is not a weight


def test_global_scope_uses_one_threshold_across_tensors(tiny, tmp_path):
    out = tmp_path / "out.onnx"
    report = prune(tiny, out, sparsity=0.6, scope="global", min_size=0)
    before, after = _inits(tiny), _inits(out)
    w0 = np.concatenate([before[n].ravel() for n in WEIGHTS])
    w1 = np.concatenate([after[n].ravel() for n in WEIGHTS])
    zeroed = w1 == 0
    assert abs(zeroed.mean() - 0.6) <= 0.005
    assert np.abs(w0[zeroed]).max() <= np.abs(w0[~zeroed]).min()
    per_tensor = [np.mean(after[n] == 0) for n in WEIGHTS]
    assert max(per_tensor) - min(per_tensor) > 0.3  # global: layers end up at different sparsities
    assert abs(report["totals"]["sparsity_pruned"] - zeroed.mean()) < 1e-12


def test_ties_are_broken_deterministically(tmp_path):
    model = _save(conv_gemm_model(np.random.default_rng(5), ties=True), tmp_path / "ties.onnx")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    prune(model, a, sparsity=0.5, min_size=0)
    prune(model, b, sparsity=0.5, min_size=0)
    assert a.read_bytes() == b.read_bytes()
    before, after = _inits(model), _inits(a)
    for name in ("conv.w", "convt.w"):
        w0, zeroed = before[name], after[name] == 0
        assert abs(zeroed.mean() - 0.5) <= 0.5 / w0.size + 1e-12  # exact count even with many ties
        assert np.abs(w0[zeroed]).max() <= np.abs(w0[~zeroed]).min()


def test_seed_sketch_kept_the_small_weights_ours_keeps_the_large(tiny, tmp_path):
    w = _inits(tiny)["gemm.w"]
    threshold = np.quantile(np.abs(w), 0.5)
    sketch = np.where(np.abs(w) < threshold, w, 0)  # the seed's sketch: mask = abs(w) < threshold
    kept = sketch != 0
    assert np.abs(w[kept]).max() < np.abs(w[~kept]).min()  # it kept the smallest half: wrong

    out = tmp_path / "out.onnx"
    prune(tiny, out, sparsity=0.5, min_size=0)
    ours = _inits(out)["gemm.w"]
    kept = ours != 0
    assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()  # we keep the largest half
    assert np.abs(ours).sum() > np.abs(sketch).sum()


def test_sparsity_zero_is_the_identity(tiny, tmp_path):
    out = tmp_path / "out.onnx"
    report = prune(tiny, out, sparsity=0)
    assert report["totals"]["params_removed"] == 0
    feeds = sample_inputs(specs_of_model(onnx.load(str(tiny))), 5, seed=0)
    for a, b in zip(_run(tiny, feeds), _run(out, feeds)):
        np.testing.assert_array_equal(a, b)
    for name, array in _inits(tiny).items():
        assert _inits(out)[name].tobytes() == array.tobytes()


def test_exclude_min_size_and_keep_first_last(tiny, tmp_path):
    out = tmp_path / "out.onnx"
    report = prune(tiny, out, sparsity=0.5, exclude=["gem*"], min_size=200)
    rows = {r["name"]: r for r in report["initializers"]}
    after = _inits(out)
    assert rows["gemm.w"]["status"] == "dense" and "exclude" in rows["gemm.w"]["reason"]
    assert rows["mm.w"]["status"] == "dense" and "min-size" in rows["mm.w"]["reason"]  # 60 elements
    assert np.count_nonzero(after["gemm.w"] == 0) == 0 and np.count_nonzero(after["mm.w"] == 0) == 0
    assert rows["conv.w"]["status"] == "pruned"

    report = prune(tiny, out, sparsity=0.5, keep_first_last=True, min_size=0, exclude=["convt"])  # node name
    rows = {r["name"]: r for r in report["initializers"]}
    assert "first layer" in rows["conv.w"]["reason"] and "last layer" in rows["mm.w"]["reason"]
    assert rows["convt.w"]["status"] == "dense"
    assert rows["gemm.w"]["status"] == "pruned"
    assert report["warnings"] == []

    report = prune(tiny, out, sparsity=0.5, exclude=["nothing_like_this*"])
    assert any("nothing_like_this" in w for w in report["warnings"])


def test_report_rows_add_up(tiny, tmp_path):
    report = prune(tiny, tmp_path / "out.onnx", sparsity=0.5, min_size=0)
    rows = report["initializers"]
    assert [r["name"] for r in rows] == list(WEIGHTS)
    t = report["totals"]
    assert t["params_removed"] == sum(r["removed"] for r in rows)
    assert t["params_before"] == t["params_after"]  # zeros do not change shapes
    for r in rows:
        assert r["shape_before"] == r["shape_after"]
        assert r["removed"] == r["zeros_after"] - r["zeros_before"]
    # zeros compress: the deflated file shrinks, the raw one does not
    assert t["deflate_after"] < 0.8 * t["deflate_before"]
    assert t["bytes_after"] >= 0.95 * t["bytes_before"]


# ---- N:M ---------------------------------------------------------------------------------------


def _groups_ok(w, axis, n, m):
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool(((groups != 0).sum(axis=-1) <= n).all())


def test_nm_pattern_along_the_reduction_axis(tiny, tmp_path):
    out = tmp_path / "out.onnx"
    report = prune(tiny, out, mode="nm", nm="2:4", min_size=0)
    before, after = _inits(tiny), _inits(out)
    # reduction axes: Conv 1 (C_in), ConvTranspose 0 (C_in), Gemm transB=1 -> 1 (K), MatMul 0 (K)
    for name, axis in (("conv.w", 1), ("convt.w", 0), ("gemm.w", 1), ("mm.w", 0)):
        w0, w1 = before[name], after[name]
        assert _groups_ok(w1, axis, 2, 4), name
        assert np.mean(w1 == 0) == pytest.approx(0.5)
        kept = w1 != 0
        np.testing.assert_array_equal(w1[kept], w0[kept])
        # in every group the kept entries are the largest of the group
        g0 = np.moveaxis(np.abs(w0), axis, -1).reshape(-1, 4)
        g1 = np.moveaxis(w1 != 0, axis, -1).reshape(-1, 4)
        assert all(g0[i][g1[i]].min() >= g0[i][~g1[i]].max() for i in range(len(g0)))
    assert {r["name"]: r["axis"] for r in report["initializers"]} == {"conv.w": 1, "convt.w": 0, "gemm.w": 1, "mm.w": 0}


def test_nm_leaves_non_multiples_dense_and_lists_them(tiny, tmp_path):
    out = tmp_path / "out.onnx"
    report = prune(tiny, out, mode="nm", nm="1:3", min_size=0)
    rows = {r["name"]: r for r in report["initializers"]}
    # conv: C_in 4, convt: C_in 8, gemm: K 864, mm: K 12 -> gemm.w and mm.w are multiples of 3
    assert rows["gemm.w"]["status"] == rows["mm.w"]["status"] == "pruned"
    assert _groups_ok(_inits(out)["gemm.w"], 1, 1, 3) and _groups_ok(_inits(out)["mm.w"], 0, 1, 3)
    listed = {d["name"] for d in report["left_dense"]}
    assert listed == {"conv.w", "convt.w"}
    for name in listed:
        assert rows[name]["status"] == "dense" and "multiple of 3" in rows[name]["reason"]
        np.testing.assert_array_equal(_inits(out)[name], _inits(tiny)[name])
    assert any("left dense" in w for w in report["warnings"])


# ---- zoo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_zoo_unstructured_layer_scope(name, zoo_onnx, tmp_path):
    src = zoo_onnx(name)
    out = tmp_path / f"{name}.pruned.onnx"
    report = prune(src, out, sparsity=0.5)
    before, after = _inits(src), _inits(out)
    pruned = [r for r in report["initializers"] if r["status"] == "pruned"]
    assert pruned
    zeros = size = 0
    for r in pruned:
        w1 = after[r["name"]]
        w0 = before.get(r["name"])
        zeroed = w1 == 0
        zeros, size = zeros + zeroed.sum(), size + w1.size
        assert abs(zeroed.mean() - 0.5) <= 0.005
        if w0 is not None:  # (rvae's GRU R is folded from Slice/Concat of weight_hh into a new initializer)
            assert np.abs(w0[zeroed]).max() <= np.abs(w0[~zeroed]).min()
    assert abs(zeros / size - 0.5) <= 0.005

    proto_in, proto_out = onnx.load(str(src)), onnx.load(str(out))
    onnx.checker.check_model(proto_out, full_check=True)
    assert [(i.name, i.type) for i in proto_out.graph.input] == [(i.name, i.type) for i in proto_in.graph.input]
    assert [o.name for o in proto_out.graph.output] == [o.name for o in proto_in.graph.output]
    assert {p.key: p.value for p in proto_out.metadata_props} == {p.key: p.value for p in proto_in.metadata_props}
    feeds = sample_inputs(specs_of_model(proto_in), 3, seed=0)
    assert [a.shape for a in _run(out, feeds)] == [a.shape for a in _run(src, feeds)]


def test_zoo_rvae_gru_weights_are_pruned(zoo_onnx, tmp_path):
    report = prune(zoo_onnx("rvae"), tmp_path / "r.onnx", sparsity=0.5, mode="unstructured")
    ops = [r["op"] for r in report["initializers"] if r["status"] == "pruned"]
    assert ops.count("GRU") == 2  # W and R (R computed from weight_hh by Slice/Concat, folded first)
    report = prune(zoo_onnx("rvae"), tmp_path / "r24.onnx", mode="nm")
    out = _inits(tmp_path / "r24.onnx")
    for r in report["initializers"]:
        if r["op"] == "GRU":
            assert r["status"] == "pruned" and r["axis"] == 2
            assert _groups_ok(out[r["name"]], 2, 2, 4)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_zoo_dcgan_identity_and_determinism(zoo_onnx, tmp_path, scope):
    src = zoo_onnx("dcgan")
    feeds = sample_inputs(specs_of_model(onnx.load(str(src))), 4, seed=3)
    zero = tmp_path / "zero.onnx"
    prune(src, zero, sparsity=0.0, scope=scope)
    for a, b in zip(_run(src, feeds), _run(zero, feeds)):
        np.testing.assert_array_equal(a, b)  # bit-identical outputs

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    report = prune(src, a, sparsity=0.7, scope=scope)
    prune(src, b, sparsity=0.7, scope=scope)
    assert a.read_bytes() == b.read_bytes()
    assert abs(report["totals"]["sparsity_pruned"] - 0.7) <= 0.005
    if scope == "global":
        before, after = _inits(src), _inits(a)
        names = [r["name"] for r in report["initializers"] if r["status"] == "pruned"]
        w0 = np.concatenate([before[n].ravel() for n in names])
        w1 = np.concatenate([after[n].ravel() for n in names])
        assert np.abs(w0[w1 == 0]).max() <= np.abs(w0[w1 != 0]).min()


def test_zoo_nm_every_group(zoo_onnx, tmp_path):
    src = zoo_onnx("cgan")
    out = tmp_path / "cgan24.onnx"
    report = prune(src, out, mode="nm", nm="2:4")
    after = _inits(out)
    for r in report["initializers"]:
        assert r["status"] == "pruned", r
        assert _groups_ok(after[r["name"]], r["axis"], 2, 4)
        assert r["sparsity"] == pytest.approx(0.5)


# ---- registry: the passes compose as a recipe --------------------------------------------------


def test_passes_compose_through_the_registry(tiny):
    from gencompress.errors import GencompressError
    from gencompress.onnx_io import load_ir, to_proto
    from gencompress.passes.registry import available, make_options
    from gencompress.verbs.recipe import run_recipe

    assert {"magnitude_prune", "nm_prune", "channel_prune"} <= set(available())
    recipe = [
        {"pass": "channel_prune", "options": {"sparsity": 0.5, "min_size": 0, "criterion": "l2"}},
        {"pass": "magnitude_prune", "options": {"sparsity": 0.5, "min_size": 0, "exclude": ["mm"]}},
    ]
    model, reports = run_recipe(load_ir(tiny), recipe)
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    after = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert after["conv.w"].shape == (4, 4, 3, 3) and after["convt.w"].shape == (4, 3, 2, 2)
    assert after["gemm.w"].shape == (6, 3 * 144) and after["mm.w"].shape == (6, 5)
    for name in ("conv.w", "convt.w", "gemm.w"):
        assert abs(np.mean(after[name] == 0) - 0.5) <= 0.5 / after[name].size + 1e-12
    assert np.count_nonzero(after["mm.w"] == 0) == 0
    assert [r["pass"] for r in reports] == ["channel_prune", "magnitude_prune"]
    feeds = sample_inputs(specs_of_model(proto), 2, seed=0)
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert out.shape == (2, 5)

    for name, options in [
        ("magnitude_prune", {"sparsity": 1.0}),
        ("magnitude_prune", {"scope": "model"}),
        ("nm_prune", {"n": 4, "m": 4}),
        ("channel_prune", {"criterion": "l3"}),
        ("channel_prune", {"min_size": -1}),
        ("magnitude_prune", {"keep_first_last": "false"}),  # a YAML string is not a bool
        ("nm_prune", {"n": 2.0}),
        ("rewrite_for_int8", {"hoist_activations": "no"}),
    ]:
        with pytest.raises(GencompressError):
            make_options(name, options)
