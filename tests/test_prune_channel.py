"""Structured channel pruning: consumers rewritten, shapes shrink, blocked channels explained."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.inputs import sample_inputs, specs_of_model
from gencompress.verbs.prune import prune


def _model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _run(model_or_path, feeds):
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _kept(before, after, axis):
    """Indices along ``axis`` of ``before`` whose slices survive (in order) in ``after``."""
    b, a = np.moveaxis(before, axis, 0), np.moveaxis(after, axis, 0)
    kept = [next(i for i in range(len(b)) if np.array_equal(b[i], s)) for s in a]
    assert kept == sorted(kept) and len(set(kept)) == len(kept)
    return kept


def _masked(model, zero):
    """``model`` with the named initializers' slices zeroed: {name: (axis, indices)}."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.name in zero:
            axis, idx = zero[init.name]
            a = numpy_helper.to_array(init).copy()
            sl = [slice(None)] * a.ndim
            sl[axis] = list(idx)
            a[tuple(sl)] = 0
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    return m


def _removed(n, kept):
    return sorted(set(range(n)) - set(kept))


def _check(path):
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ---- Conv -> BatchNormalization -> Relu -> Conv -> Relu -> Flatten -> Gemm --------------------


def conv_bn_model(rng):
    inits = {
        "c1.w": _w(rng, 8, 3, 3, 3),
        "c1.b": _w(rng, 8),
        "bn.scale": _w(rng, 8, scale=2.0),
        "bn.bias": _w(rng, 8),
        "bn.mean": _w(rng, 8, scale=0.1),
        "bn.var": (rng.random(8) + 0.5).astype(np.float32),
        "c2.w": _w(rng, 6, 8, 3, 3),
        "c2.b": _w(rng, 6),
        "fc.w": _w(rng, 6 * 5 * 5, 10),
        "fc.b": _w(rng, 10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Flatten", ["r2"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc"),
    ]
    return _model(nodes, [_vi("x", ["N", 3, 5, 5])], [_vi("y", ["N", 10])], inits)


def test_conv_bn_flatten_gemm(tmp_path):
    rng = np.random.default_rng(0)
    model = conv_bn_model(rng)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    proto = _check(out)
    before, after = _inits(src), _inits(out)

    # shapes really shrink, along the right axes
    assert after["c1.w"].shape == (4, 3, 3, 3) and after["c1.b"].shape == (4,)
    assert all(after[k].shape == (4,) for k in ("bn.scale", "bn.bias", "bn.mean", "bn.var"))
    assert after["c2.w"].shape == (3, 4, 3, 3) and after["c2.b"].shape == (3,)
    assert after["fc.w"].shape == (3 * 25, 10)  # each removed channel takes a block of 5*5 K rows
    assert after["fc.b"].shape == (10,)  # the last layer feeds the graph output: kept
    channels = {c["node"]: c for c in report["channels"]}
    assert channels["fc"]["status"] == "kept" and "graph output" in channels["fc"]["reason"]

    # c1's channels are ranked by L1 norm times the BN scale |gamma| / sqrt(var + eps)
    k1 = _kept(before["c1.w"], after["c1.w"], 0)
    score = np.abs(before["c1.w"]).reshape(8, -1).sum(1) * np.abs(before["bn.scale"]) / np.sqrt(before["bn.var"] + 1e-5)
    assert set(_removed(8, k1)) == set(np.argsort(score)[:4])
    k2 = _kept(before["c2.w"][:, k1], after["c2.w"], 0)  # c2 also lost the input channels of c1
    assert set(_removed(6, k2)) == set(np.argsort(np.abs(before["c2.w"]).reshape(6, -1).sum(1))[:3])

    # the result equals the original with the removed channels zeroed where the next layer reads them
    flat_rows = [c * 25 + i for c in _removed(6, k2) for i in range(25)]
    reference = _masked(model, {"c2.w": (1, _removed(8, k1)), "fc.w": (0, flat_rows)})
    feeds = {"x": rng.standard_normal((3, 3, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(_run(proto, feeds), _run(reference, feeds), rtol=1e-5, atol=1e-5)

    t = report["totals"]
    assert t["params_after"] == sum(a.size for a in after.values())
    assert t["params_before"] == sum(a.size for a in before.values())
    rows = {r["name"]: r for r in report["initializers"]}
    assert rows["c1.w"]["shape_after"] == [4, 3, 3, 3] and rows["c1.w"]["removed"] == 4 * 27
    assert rows["fc.w"]["status"] == "pruned" and "input channels only" in rows["fc.w"]["reason"]


def test_l2_criterion_ranks_by_l2_norm(tmp_path):
    rng = np.random.default_rng(1)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(conv_bn_model(rng), str(src))
    prune(src, out, mode="channel", sparsity=0.5, criterion="l2", min_size=0)
    before, after = _inits(src), _inits(out)
    k1 = _kept(before["c1.w"], after["c1.w"], 0)
    k2 = _kept(before["c2.w"][:, k1], after["c2.w"], 0)
    norms = np.sqrt((before["c2.w"].astype(np.float64) ** 2).reshape(6, -1).sum(1))
    assert set(_removed(6, k2)) == set(np.argsort(norms)[:3])


def test_sparsity_zero_and_determinism(tmp_path):
    rng = np.random.default_rng(2)
    model = conv_bn_model(rng)
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    feeds = {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)}
    prune(src, tmp_path / "zero.onnx", mode="channel", sparsity=0)
    np.testing.assert_array_equal(_run(tmp_path / "zero.onnx", feeds), _run(src, feeds))
    prune(src, tmp_path / "a.onnx", mode="channel", sparsity=0.4, min_size=0)
    prune(src, tmp_path / "b.onnx", mode="channel", sparsity=0.4, min_size=0)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


# ---- Gemm -> Reshape -> ConvTranspose: features prune in blocks of H*W --------------------------


def test_gemm_reshape_convtranspose_groups_features(tmp_path):
    rng = np.random.default_rng(3)
    inits = {
        "fc.w": _w(rng, 64, 8),
        "fc.b": _w(rng, 64),
        "shape": np.array([-1, 4, 4, 4], dtype=np.int64),
        "ct.w": _w(rng, 4, 2, 3, 3),
        "ct.b": _w(rng, 2),
    }
    nodes = [
        helper.make_node("Gemm", ["z", "fc.w", "fc.b"], ["h"], name="fc", transB=1),
        helper.make_node("Reshape", ["h", "shape"], ["hr"], name="reshape"),
        helper.make_node("Relu", ["hr"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "ct.w", "ct.b"], ["ct"], name="ct", strides=[2, 2]),
        helper.make_node("Sigmoid", ["ct"], ["y"], name="sig"),
    ]
    model = _model(nodes, [_vi("z", ["N", 8])], [_vi("y", ["N", 2, 9, 9])], inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    proto = _check(out)
    before, after = _inits(src), _inits(out)
    assert after["fc.w"].shape == (32, 8) and after["fc.b"].shape == (32,)
    assert after["shape"].tolist() == [-1, 2, 4, 4]
    assert after["ct.w"].shape == (2, 2, 3, 3)
    assert {c["node"]: c["group"] for c in report["channels"]}["fc"] == 16

    kept = _kept(before["fc.w"], after["fc.w"], 0)
    removed_features = _removed(64, kept)
    removed_channels = sorted({f // 16 for f in removed_features})
    assert removed_features == [c * 16 + i for c in removed_channels for i in range(16)]  # whole blocks
    # blocks ranked by the L1 norm of their 16 rows
    block_l1 = np.abs(before["fc.w"]).reshape(4, -1).sum(1)
    assert set(removed_channels) == set(np.argsort(block_l1)[:2])
    reference = _masked(model, {"ct.w": (0, removed_channels)})
    feeds = {"z": rng.standard_normal((4, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(proto, feeds), _run(reference, feeds), rtol=1e-5, atol=1e-6)


# ---- MatMul -> Add(bias) -> Tanh -> MatMul ------------------------------------------------------


def test_matmul_bias_chain(tmp_path):
    rng = np.random.default_rng(4)
    inits = {"w1": _w(rng, 8, 16), "b1": _w(rng, 16), "w2": _w(rng, 16, 4)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["b1", "m1"], ["a1"], name="add"),
        helper.make_node("Tanh", ["a1"], ["t1"], name="tanh"),
        helper.make_node("MatMul", ["t1", "w2"], ["y"], name="mm2"),
    ]
    model = _model(nodes, [_vi("x", ["N", 5, 8])], [_vi("y", ["N", 5, 4])], inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    prune(src, out, mode="channel", sparsity=0.25, min_size=0)
    proto = _check(out)
    before, after = _inits(src), _inits(out)
    assert after["w1"].shape == (8, 12) and after["b1"].shape == (12,) and after["w2"].shape == (12, 4)
    kept = _kept(before["w1"], after["w1"], 1)
    np.testing.assert_array_equal(after["b1"], before["b1"][kept])
    reference = _masked(model, {"w2": (0, _removed(16, kept))})
    feeds = {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(proto, feeds), _run(reference, feeds), rtol=1e-5, atol=1e-6)


# ---- Concat along channels: both sides shrink, offsets respected ------------------------------


def test_concat_along_channels(tmp_path):
    rng = np.random.default_rng(5)
    inits = {"a.w": _w(rng, 4, 3, 1, 1), "b.w": _w(rng, 6, 3, 1, 1), "c.w": _w(rng, 2, 10, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "a.w"], ["a"], name="a"),
        helper.make_node("Relu", ["a"], ["ar"], name="ar"),
        helper.make_node("Conv", ["x", "b.w"], ["b"], name="b"),
        helper.make_node("Concat", ["ar", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "c.w"], ["y"], name="c"),
    ]
    model = _model(nodes, [_vi("x", ["N", 3, 4, 4])], [_vi("y", ["N", 2, 4, 4])], inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    proto = _check(out)
    before, after = _inits(src), _inits(out)
    assert after["a.w"].shape[0] == 2 and after["b.w"].shape[0] == 3 and after["c.w"].shape[1] == 5
    ka = _kept(before["a.w"], after["a.w"], 0)
    kb = _kept(before["b.w"], after["b.w"], 0)
    removed = _removed(4, ka) + [4 + i for i in _removed(6, kb)]
    reference = _masked(model, {"c.w": (1, removed)})
    feeds = {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(_run(proto, feeds), _run(reference, feeds), rtol=1e-5, atol=1e-6)


# ---- what stays, and why ----------------------------------------------------------------------


def test_residual_add_and_other_concat_axis_keep_their_channels(tmp_path):
    rng = np.random.default_rng(6)
    inits = {
        "c1.w": _w(rng, 4, 3, 3, 3),
        "c2.w": _w(rng, 4, 4, 3, 3),
        "c3.w": _w(rng, 4, 3, 3, 3),
        "c4.w": _w(rng, 2, 4, 3, 3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "c2.w"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r1", "c2"], ["res"], name="residual"),
        helper.make_node("Conv", ["x", "c3.w"], ["c3"], name="c3", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["res", "c3"], ["cat"], name="cat_h", axis=2),  # along H
        helper.make_node("Conv", ["cat", "c4.w"], ["y"], name="c4", pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_vi("x", ["N", 3, 4, 4])], [_vi("y", ["N", 2, 8, 4])], inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    channels = {c["node"]: c for c in report["channels"]}
    assert all(c["status"] == "kept" for c in channels.values())
    assert "residual" in channels["c2"]["reason"]  # Add(r1, c2): r1 does not carry c2's channels
    assert "residual" in channels["c1"]["reason"] or "Concat" in channels["c1"]["reason"]  # both hold for c1
    assert "Concat" in channels["c3"]["reason"] and "axis 2" in channels["c3"]["reason"]
    assert "graph output" in channels["c4"]["reason"]
    assert any("nothing was pruned" in w for w in report["warnings"])
    feeds = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(_run(_check(out), feeds), _run(model, feeds))


def test_global_scope_and_exclusions(tmp_path):
    rng = np.random.default_rng(7)
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(rng), str(src))
    report = prune(src, tmp_path / "g.onnx", mode="channel", sparsity=0.5, scope="global", min_size=0)
    _check(tmp_path / "g.onnx")
    prunable = [c for c in report["channels"] if "reason" not in c]
    removed = sum(c["channels_before"] - c["channels_after"] for c in prunable)
    assert removed == round(0.5 * sum(c["channels_before"] for c in prunable))
    assert all(c["channels_after"] >= 1 for c in prunable)

    report = prune(src, tmp_path / "e.onnx", mode="channel", sparsity=0.5, exclude=["c1"], min_size=0)
    channels = {c["node"]: c for c in report["channels"]}
    assert channels["c1"]["status"] == "kept" and "exclude" in channels["c1"]["reason"]
    assert channels["c2"]["status"] == "pruned"
    assert _inits(tmp_path / "e.onnx")["c1.w"].shape == (8, 3, 3, 3)


# ---- zoo ---------------------------------------------------------------------------------------


def test_zoo_dcgan_channel_prune_half(zoo_onnx, tmp_path):
    src = zoo_onnx("dcgan")
    out = tmp_path / "dcgan.ch50.onnx"
    report = prune(src, out, mode="channel", sparsity=0.5)
    proto = _check(out)
    params = lambda p: sum(numpy_helper.to_array(i).size for i in onnx.load(str(p)).graph.initializer if i.data_type == TensorProto.FLOAT)  # noqa: E731
    assert params(out) <= 0.6 * params(src)
    assert report["totals"]["params_after"] == params(out) and report["totals"]["params_before"] == params(src)
    src_proto = onnx.load(str(src))
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in src_proto.metadata_props}
    assert [i.name for i in proto.graph.input] == [i.name for i in src_proto.graph.input]
    assert [o.name for o in proto.graph.output] == [o.name for o in src_proto.graph.output]
    feeds = sample_inputs(specs_of_model(src_proto), 5, seed=0)
    assert _run(out, feeds).shape == _run(src, feeds).shape
    assert report["totals"]["bytes_after"] < 0.6 * report["totals"]["bytes_before"]
    # same command twice: byte-identical files
    prune(src, tmp_path / "again.onnx", mode="channel", sparsity=0.5)
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("name", ["vae", "cgan", "rvae"])
def test_zoo_channel_prune_runs(name, zoo_onnx, tmp_path):
    src = zoo_onnx(name)
    out = tmp_path / f"{name}.ch.onnx"
    report = prune(src, out, mode="channel", sparsity=0.5)
    _check(out)
    src_proto = onnx.load(str(src))
    feeds = sample_inputs(specs_of_model(src_proto), 3, seed=0)
    assert _run(out, feeds).shape == _run(src, feeds).shape
    for c in report["channels"]:
        assert (c["status"] == "pruned") == (c["channels_after"] < c["channels_before"])
        if c["status"] == "kept" and report["options"]["sparsity"] > 0:
            assert c.get("reason")
    if name in ("vae", "cgan"):  # Gemm -> Reshape -> ConvTranspose: the Gemm prunes in blocks
        assert report["totals"]["params_after"] < 0.6 * report["totals"]["params_before"]
        first = report["channels"][0]
        assert first["op"] in ("Gemm", "MatMul") and first["status"] == "pruned" and first["group"] == 16


def test_fan_out_through_per_channel_ops_transpose_and_concat_with_an_input(tmp_path):
    rng = np.random.default_rng(8)
    inits = {
        "a.w": _w(rng, 6, 3, 1, 1),
        "scale": _w(rng, 1, 6, 1, 1),
        "slope": _w(rng, 6, 1, 1, scale=0.1),
        "lo": np.array(-1.0, dtype=np.float32),
        "hi": np.array(6.0, dtype=np.float32),
        "b.w": _w(rng, 2, 6, 1, 1),
        "c.w": _w(rng, 6, 3),
        "d.w": _w(rng, 2, 9, 1, 1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "a.w"], ["a"], name="a"),
        helper.make_node("Mul", ["a", "scale"], ["s"], name="scale"),
        helper.make_node("PRelu", ["s", "slope"], ["p"], name="prelu"),
        helper.make_node("Clip", ["p", "lo", "hi"], ["t"], name="clip"),
        helper.make_node("Conv", ["t", "b.w"], ["yb"], name="b"),
        helper.make_node("Transpose", ["t"], ["tt"], name="nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["tt", "c.w"], ["yc"], name="c"),
        helper.make_node("Concat", ["x", "t"], ["cat"], name="cat", axis=1),  # x is an input: it cannot shrink
        helper.make_node("Conv", ["cat", "d.w"], ["yd"], name="d"),
    ]
    outputs = [_vi("yb", ["N", 2, 4, 4]), _vi("yc", ["N", 4, 4, 3]), _vi("yd", ["N", 2, 4, 4])]
    model = _model(nodes, [_vi("x", ["N", 3, 4, 4])], outputs, inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    report = prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    proto = _check(out)
    before, after = _inits(src), _inits(out)
    assert {c["node"]: c["status"] for c in report["channels"]}["a"] == "pruned"
    kept = _kept(before["a.w"], after["a.w"], 0)
    removed = _removed(6, kept)
    assert len(removed) == 3
    np.testing.assert_array_equal(after["scale"], before["scale"][:, kept])
    np.testing.assert_array_equal(after["slope"], before["slope"][kept])
    assert after["b.w"].shape == (2, 3, 1, 1) and after["c.w"].shape == (3, 3) and after["d.w"].shape == (2, 6, 1, 1)
    reference = _masked(model, {"b.w": (1, removed), "c.w": (0, removed), "d.w": (1, [3 + i for i in removed])})
    feeds = {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for got, want in zip(sess(proto), sess(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_legacy_layout_bn_parameters_behind_identity(tmp_path):
    """The TorchScript exporter feeds BN from Identity nodes and shares one zero tensor for bias and mean."""
    rng = np.random.default_rng(9)
    inits = {
        "ct.w": _w(rng, 5, 8, 2, 2),
        "bn.weight": _w(rng, 8, scale=2.0),
        "bn.bias": np.zeros(8, np.float32),
        "bn.var": (rng.random(8) + 0.5).astype(np.float32),
        "out.w": _w(rng, 1, 8, 3, 3),
    }
    nodes = [
        helper.make_node("Identity", ["bn.bias"], ["bn.running_mean"], name="id_mean"),
        helper.make_node("ConvTranspose", ["z", "ct.w"], ["ct"], name="ct"),
        helper.make_node("BatchNormalization", ["ct", "bn.weight", "bn.bias", "bn.running_mean", "bn.var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "out.w"], ["y"], name="out", pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_vi("z", ["N", 5, 1, 1])], [_vi("y", ["N", 1, 2, 2])], inits)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    prune(src, out, mode="channel", sparsity=0.5, min_size=0)
    proto = _check(out)
    assert not [n for n in proto.graph.node if n.op_type == "Identity"]
    before, after = _inits(src), _inits(out)
    kept = _kept(before["ct.w"], after["ct.w"], 1)  # ConvTranspose: output channels on axis 1
    assert len(kept) == 4
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    assert all(after[name].shape == (4,) for name in bn.input[1:])
    np.testing.assert_array_equal(after[bn.input[1]], before["bn.weight"][kept])
    reference = _masked(model, {"out.w": (1, _removed(8, kept))})
    feeds = {"z": rng.standard_normal((3, 5, 1, 1)).astype(np.float32)}
    np.testing.assert_allclose(_run(proto, feeds), _run(reference, feeds), rtol=1e-5, atol=1e-6)
