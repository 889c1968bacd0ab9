"""int8 that computes the same on every x86 CPU: onnxruntime's kernels without VNNI (AVX2,
AVX-512BW) add pairs of u8×s8 products in a saturating int16 (``passes/int8_saturation.py``).

The AVX2 path is run whatever the host is, under ``qemu-x86_64 -cpu Haswell`` (Debian's
qemu-user, installed with apt-get when missing): the pairing order the bound assumes is proved on
crafted weights that saturate in one pairing and not in another, and the quantized zoo models'
fused AVX2 kernels are compared with onnxruntime's exact DQ→float path (optimizations off).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from gencompress.inputs import output_range_of_model, sample_inputs, specs_of_model
from gencompress.isa import host_isa, saturates
from gencompress.passes.insert_qdq import InsertQDQPass
from gencompress.passes.int8_saturation import (
    PAIR_LIMIT, UINT8_ZERO_POINT, Layout, Unfold, as_uint8, moment_blocks, saturation_free, uint8_layers, unsafe_layers, unsafe_pairs,
)

ZOO = ("dcgan", "vae", "rvae", "cgan")
# runs each model at optimization level disabled (exact DQ -> float) and all (fused int8 kernels)
RUNNER = """
import sys, numpy as np, onnxruntime as ort
feeds = dict(np.load(sys.argv[1]))
out = {}
for i, path in enumerate(sys.argv[3:]):
    for name, level in (("exact", ort.GraphOptimizationLevel.ORT_DISABLE_ALL), ("fused", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        mine = {k.partition("/")[2]: v for k, v in feeds.items() if k.partition("/")[0] == str(i)}
        out[f"{i}_{name}"] = s.run(None, mine)[0]
np.savez(sys.argv[2], **out)
"""


def _qemu() -> str:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the AVX2 path is emulated with qemu-x86_64 on x86-64 hosts; this is {platform.machine()}")
    path = shutil.which("qemu-x86_64")
    if path is None:
        if not shutil.which("apt-get"):
            pytest.skip("qemu-x86_64 is not installed and there is no apt-get to install it")
        for cmd in (["apt-get", "install", "-y", "-q", "qemu-user"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "qemu-user"]):
            subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        path = shutil.which("qemu-x86_64")
        if path is None:
            pytest.skip("could not install qemu-user (qemu-x86_64) with apt-get")
    return path


def run_haswell(tmp_path, models: list, feeds: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(exact, fused)]`` per model: its first output at level disabled and at level all, run by
    onnxruntime on an emulated Haswell (AVX2, FMA; no AVX-512, no VNNI)."""
    qemu = _qemu()
    paths = []
    for i, model in enumerate(models):
        path = tmp_path / f"m{i}.onnx"
        onnx.save(model, str(path)) if isinstance(model, onnx.ModelProto) else shutil.copy(model, path)
        paths.append(str(path))
    packed = {f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()}
    np.savez(tmp_path / "feeds.npz", **packed)
    cmd = [qemu, "-cpu", "Haswell", sys.executable, "-c", RUNNER, str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz"), *paths]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    return [(out[f"{i}_exact"], out[f"{i}_fused"]) for i in range(len(models))]


# ---- the pairing order, proved on crafted weights ------------------------------------------------


def _qdq_model(op: str, q: np.ndarray, x_shape, attrs: dict, w_axis: int, w_scale=None, bias=None) -> onnx.ModelProto:
    """x (float, 1.0 everywhere = uint8 255 at scale 1/255) -> Q/DQ -> op(DQ(int8 q, scale
    ``w_scale``, 1/127 by default, per channel), DQ(int32 ``bias``)) -> Q/DQ (range [-3, 3]) -> y:
    onnxruntime fuses it into one int8 kernel."""
    n_out = q.shape[w_axis]
    w_scale = np.full(n_out, 1 / 127, np.float32) if w_scale is None else w_scale
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(w_scale, "w_s"),
        numpy_helper.from_array(np.full(n_out, UINT8_ZERO_POINT if q.dtype == np.uint8 else 0, q.dtype), "w_zp"),
        numpy_helper.from_array(np.float32(1 / 255), "x_s"),
        numpy_helper.from_array(np.uint8(0), "x_zp"),
        numpy_helper.from_array(np.float32(6 / 255), "y_s"),
        numpy_helper.from_array(np.uint8(128), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wd"], axis=w_axis),
        helper.make_node(op, ["xd", "wd", "bd"] if bias is not None else ["xd", "wd"], ["c"], **attrs),
        helper.make_node("QuantizeLinear", ["c", "y_s", "y_zp"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_s", "y_zp"], ["y"]),
    ]
    if bias is not None:
        inits += [numpy_helper.from_array(bias, "b_q"), numpy_helper.from_array((np.float32(1 / 255) * w_scale).astype(np.float32), "b_s")]
        nodes.insert(3, helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["bd"], axis=0))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, list(x_shape))], [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _conv_case(c_out, c_in, group, spots):
    """Conv weights [c_out, c_in/group, 3, 3], zero but for ``spots``: output channel ->
    [(input channel, kernel position 0..8, value)]. Input 1x{c_in}x3x3: one output pixel."""
    q = np.zeros((c_out, c_in // group, 3, 3), np.int8)
    for co, entries in spots.items():
        for ci, pos, v in entries:
            q[co, ci, pos // 3, pos % 3] = v
    # channels 5 and 6 sit at the bound: scale 2 and a bias of -255 * 128 make one step of the
    # int16 sum visible in the output (129: 2.0 exact, 1.0 saturated; 128: 0 either way)
    w_scale = np.full(c_out, 1 / 127, np.float32)
    bias = np.zeros(c_out, np.int32)
    for co in (5, 6):
        if co in spots and group == 1:
            w_scale[co], bias[co] = 2.0, -255 * PAIR_LIMIT
    attrs = {"group": group} if group > 1 else {}
    return _qdq_model("Conv", q, (1, c_in, 3, 3), attrs, 0, w_scale, bias), q, Layout("Conv", group=group), (1, c_in, 3, 3)


# the same pairs in every Conv case: two 127s that are neighbours in one order and not in another
CONV_SPOTS = {
    0: [(0, 0, 127), (1, 0, 127)],  # input channels 0, 1 at one kernel position
    1: [(0, 0, 127), (0, 1, 127)],  # one input channel at kernel positions 0, 1 (NCHW neighbours)
    2: [(1, 0, 127), (2, 0, 127)],  # input channels 1, 2
    3: [(2, 4, -127), (3, 4, -127)],  # input channels 2, 3, negative
    4: [(0, 0, 127), (1, 0, -127)],  # opposite signs
    5: [(0, 0, 100), (1, 0, 29)],  # 129: over the bound by one step
    6: [(2, 0, 100), (3, 0, 28)],  # 128: on the bound
}


def _gemm_case(op, trans_b, k=8, n=4, m=1):
    q = np.zeros((k, n), np.int8)
    q[0, 0] = q[1, 0] = 127  # K 0, 1: a pair
    q[1, 1] = q[2, 1] = 127  # K 1, 2: not a pair
    q[2, 2] = q[3, 2] = -127  # K 2, 3: a pair
    q[4, 3], q[5, 3] = 127, -127
    w = q.T.copy() if trans_b else q
    attrs = {"transB": 1} if trans_b else {}
    return _qdq_model(op, w, (m, k), attrs, 0 if trans_b else 1), w, Layout(op, trans_b=trans_b), (m, k)


def _cases():
    cases = {
        "conv_symmetric_kernel": _conv_case(16, 4, 1, CONV_SPOTS),  # C_in % 4 == 0, C_out >= 16: ConvSym
        "conv_gemm": _conv_case(8, 4, 1, CONV_SPOTS),  # C_out < 16: im2col + QGEMM
        "conv_odd_channels": _conv_case(8, 3, 1, {0: [(0, 0, 127), (1, 0, 127)], 1: [(2, 0, 127), (0, 1, 127)], 2: [(1, 0, 127), (2, 0, 127)]}),
        "conv_grouped": _conv_case(16, 8, 2, {0: [(0, 0, 127), (1, 0, 127)], 8: [(2, 0, 127), (3, 0, 127)], 9: [(1, 0, 127), (2, 0, 127)]}),
        "depthwise_16": _conv_case(16, 16, 16, {0: [(0, 0, 127), (0, 1, 127)], 1: [(0, 3, -127), (0, 4, -127)]}),
        "depthwise_4": _conv_case(4, 4, 4, {0: [(0, 0, 127), (0, 1, 127)]}),
        "gemm": _gemm_case("Gemm", False),
        "gemm_trans_b": _gemm_case("Gemm", True),
        "gemm_batch_4": _gemm_case("Gemm", False, m=4),
        "matmul": _gemm_case("MatMul", False),
    }
    return cases


def _predicted(q, layout) -> np.ndarray:
    """Per output channel: does it hold a pair the bound calls unsafe?"""
    found = layout.rows(q)
    n = q.shape[0] if layout.op == "Conv" or layout.trans_b else q.shape[-1]
    if found is None:
        return np.zeros(n, bool)
    rows, channel = found
    return np.array([unsafe_pairs(rows[channel == c], Layout("Gemm", trans_b=True)) > 0 for c in range(n)])


def test_pairing_order_on_emulated_avx2(tmp_path):
    """On AVX2 a fused output channel differs from exact arithmetic exactly where the bound
    predicts an unsafe pair (channels-last K order for Conv, K pairs for Gemm/MatMul, none for
    depthwise), and not where the weights are neighbours in another order."""
    cases = _cases()
    models = [c[0] for c in cases.values()]
    feeds = [{"x": np.ones(c[3], np.float32)} for c in cases.values()]
    results = run_haswell(tmp_path, models, feeds)
    for (name, (_, q, layout, _shape)), (exact, fused) in zip(cases.items(), results):
        diff = np.abs(exact - fused).reshape(exact.shape[0], exact.shape[1], -1).max(axis=(0, 2)) if layout.op == "Conv" else np.abs(exact - fused).max(axis=0)
        predicted = _predicted(q, layout)
        assert np.array_equal(diff > 0, predicted), f"{name}: differs on {np.flatnonzero(diff > 0)}, predicted {np.flatnonzero(predicted)}"
        if not name.startswith("depthwise"):
            assert predicted.any() and not predicted.all(), name  # the case tells the orders apart


def _with_weights(model: onnx.ModelProto, q: np.ndarray, scale: np.ndarray) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.name == "w_q":
            init.CopyFrom(numpy_helper.from_array(q, "w_q"))
        if init.name == "w_s":
            init.CopyFrom(numpy_helper.from_array(scale.astype(np.float32), "w_s"))
        if init.name == "w_zp":
            init.CopyFrom(numpy_helper.from_array(np.full(init.dims, UINT8_ZERO_POINT if q.dtype == np.uint8 else 0, q.dtype), "w_zp"))
    return m


def test_saturation_free_weights_are_exact_on_emulated_avx2(tmp_path):
    """The same crafted weights after ``saturation_free``, and unchanged but stored as uint8 (zero
    point 128: onnxruntime's u8×u8 kernels): no unsafe pair left, and the fused AVX2 kernels
    compute what exact arithmetic does (to one output step)."""
    cases = _cases()
    models, feeds, names = [], [], []
    for name, (model, q, layout, shape) in cases.items():
        models.append(_with_weights(model, as_uint8(q), np.full(q.shape[1 if layout.op in ("Gemm", "MatMul") and not layout.trans_b else 0], 1 / 127, np.float32)))
        feeds.append({"x": np.ones(shape, np.float32)})
        names.append(f"{name} uint8")
    for model, q, layout, shape in cases.values():
        axis = 1 if layout.op in ("Gemm", "MatMul") and not layout.trans_b else 0
        scale = np.full(q.shape[axis], 1 / 127, np.float32)
        w = q.astype(np.float32) / 127 * 0.999
        q2, s2, _ = saturation_free(w, q, scale, axis, layout)
        assert unsafe_pairs(q2, layout) == 0
        models.append(_with_weights(model, q2, s2))
        feeds.append({"x": np.ones(shape, np.float32)})
    names += list(cases)
    for name, (exact, fused) in zip(names, run_haswell(tmp_path, models, feeds)):
        assert np.abs(exact - fused).max() <= 6 / 255 + 1e-6, name


# ---- the bound in the pass --------------------------------------------------------------------


def _random_conv_model():
    rng = np.random.default_rng(3)
    # on 8x8: Conv 73,728 and Gemm 81,920 multiply-adds, both above int8_saturation.UINT8_MACS and
    # each over the other's UINT8_SHARE: neither is kept uint8, so both get the int16 pair bound
    w = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    g = rng.normal(size=(16 * 8 * 8, 80)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 8, 8, 8])], [helper.make_tensor_value_info("y", TP.FLOAT, [1, 80])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def _quantized(model, **options):
    import onnx_ir as ir

    ranges = (("x", -2.0, 2.0), ("c", -20.0, 20.0), ("r", 0.0, 20.0), ("f", 0.0, 20.0), ("y", -200.0, 200.0))
    irm = ir.serde.deserialize_model(model)
    p = InsertQDQPass(InsertQDQPass.Options(ranges=ranges, **options))
    p(irm)
    return ir.serde.serialize_model(irm), p.report


def _int8_weights(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == TP.INT8 and i.name.endswith("_quantized")}


def test_portable_by_default_and_vnni_keeps_full_weights():
    model = _random_conv_model()
    portable, report = _quantized(model)
    vnni, vnni_report = _quantized(model, int8_kernels="vnni")
    layouts = {"w_quantized": Layout("Conv"), "g_quantized": Layout("Gemm")}
    assert report["int8_kernels"] == "portable" and vnni_report["int8_kernels"] == "vnni"
    for name, layout in layouts.items():
        assert unsafe_pairs(_int8_weights(portable)[name], layout) == 0
        assert unsafe_pairs(_int8_weights(vnni)[name], layout) > 0  # random weights: the peak has a same-sign neighbour
    rows = {r["node"]: r for r in report["layers"]}
    for node in ("conv", "gemm"):
        info = rows[node]["saturation"]
        assert 0 < info["channels"] <= info["of"] and "AVX2" in info["reason"]
        assert "saturation" not in {r["node"]: r for r in vnni_report["layers"]}[node]
    # the verdict read back from the written graphs
    import onnx_ir as ir

    assert unsafe_layers(ir.serde.deserialize_model(portable).graph) == []
    assert {e["node"] for e in unsafe_layers(ir.serde.deserialize_model(vnni).graph)} == {"conv", "gemm"}
    # byte-identical reruns
    assert _quantized(model)[0].SerializeToString() == portable.SerializeToString()


def test_unsafe_channels_only_change():
    rng = np.random.default_rng(5)
    # neighbouring input channels of opposite signs: no unsafe pair, but in channel 3
    w = np.abs(rng.normal(size=(8, 6, 3, 3))).astype(np.float32) * np.array([1, -1] * 3, np.float32)[None, :, None, None]
    w[3, 0, 0, 0], w[3, 1, 0, 0] = 5.0, 4.5
    from gencompress.passes.insert_qdq import quantize_symmetric

    q, s = quantize_symmetric(w, 0)
    layout = Layout("Conv")
    for method in ("best", "scale", "nudge"):
        q2, s2, info = saturation_free(w, q, s, 0, layout, method=method)
        assert unsafe_pairs(q2, layout) == 0
        others = [c for c in range(8) if c != 3]
        assert np.array_equal(q2[others], q[others]) and np.array_equal(s2[others], s[others])
        assert info["channels"] == 1 and info["of"] == 8


@pytest.mark.parametrize("shape, axis, layout, block", [
    ((48, 17, 3, 3), 0, Layout("Conv"), 1),  # odd K: the last entry pairs with a zero
    ((48, 16, 3, 3), 0, Layout("Conv"), 4),  # a channel block shares one scale
    ((200, 40), 1, Layout("Gemm"), 1),  # rows are columns of B
    ((40, 201), 0, Layout("Gemm", trans_b=True), 2),
    ((201, 40), 1, Layout("MatMul"), 1),
])
def test_search_in_chunks_changes_nothing(monkeypatch, shape, axis, layout, block):
    """The search streams output channels a chunk at a time: any chunk size gives the same weights,
    scales and report, saturation-free."""
    import gencompress.passes.int8_saturation as sat
    from gencompress.passes.insert_qdq import quantize_symmetric

    w = np.random.default_rng(3).standard_t(3, size=shape).astype(np.float32)  # heavy tails: many unsafe channels
    q, s = quantize_symmetric(w, axis, block=block)
    assert unsafe_pairs(q, layout)
    results = []
    for chunk in (1 << 24, 1 << 10, 1):  # all rows at once, a few rows, one scale group at a time
        monkeypatch.setattr(sat, "CHUNK", chunk)
        results.append(saturation_free(w, q, s, axis, layout, block=block))
        assert unsafe_pairs(results[-1][0], layout) == 0
    for q2, s2, info in results[1:]:
        assert np.array_equal(q2, results[0][0]) and np.array_equal(s2, results[0][1]) and info == results[0][2]


def test_search_holds_no_float_copy_of_a_large_layer(monkeypatch):
    """Temporaries of the search stay a few chunks (``CHUNK`` weights): here below half the layer's
    float weights (it held about five float copies of them before it streamed)."""
    import tracemalloc

    import gencompress.passes.int8_saturation as sat
    from gencompress.passes.insert_qdq import quantize_symmetric

    monkeypatch.setattr(sat, "CHUNK", 1 << 16)  # a layer of 32 chunks
    w = np.random.default_rng(4).standard_normal((1024, 512, 2, 2), dtype=np.float32)  # 2 MiB of int8, 8 MiB of float
    q, s = quantize_symmetric(w, 0)
    tracemalloc.start()
    try:
        q2, _, info = saturation_free(w, q, s, 0, Layout("Conv"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["channels"] > 900 and unsafe_pairs(q2, Layout("Conv")) == 0  # nearly every channel changed
    assert peak < q.nbytes + w.nbytes // 2


def test_unfold_rows_are_the_kernels_k_order():
    """``Unfold.rows`` times ``Layout.rows`` of the weight is the Conv's output (strides, dilations,
    uneven pads), and the last axis for Gemm/MatMul: the moments are over the K the pairs follow."""
    import torch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 9, 8)).astype(np.float32)
    w = rng.normal(size=(5, 6, 3, 2)).astype(np.float32)
    unfold = Unfold((3, 2), (1, 0, 2, 1), (2, 1), (1, 2))
    rows = unfold.rows(x, 10**6, rng)  # every window, sample by sample, in raster order
    xp = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 1, 2))  # (left, right, top, bottom)
    want = torch.nn.functional.conv2d(xp, torch.from_numpy(w), stride=(2, 1), dilation=(1, 2)).numpy()
    got = rows @ Layout("Conv").rows(w)[0].T
    assert np.allclose(got, want.transpose(0, 2, 3, 1).reshape(-1, 5), atol=1e-4)
    assert len(unfold.rows(x, 7, rng)) == 7
    tokens = rng.normal(size=(3, 4, 10)).astype(np.float32)
    assert np.array_equal(Unfold().rows(tokens, 100, rng), tokens.reshape(-1, 10))
    assert moment_blocks(7) == [(0, 8)] and moment_blocks(3000) == [(0, 1152), (1152, 2304), (2304, 3000)]


def test_moments_run_stops_once_every_ask_has_its_rows(monkeypatch):
    """``collect_stats`` runs no batch after every ``_Moments`` ask has ``MOMENT_ROWS`` rows (later
    batches would change nothing): the same moments as a run over every batch."""
    from gencompress.runtime_check import saturation
    from gencompress.runtime_check.calibration import collect_stats

    monkeypatch.setattr(saturation, "MOMENT_ROWS", 40)  # 16 windows a sample: full within the 2nd batch of 2
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 3, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.random.default_rng(1).normal(size=(10, 4, 6, 6)).astype(np.float32)}
    asks = [("conv", Unfold((3, 3), (0, 0, 0, 0), (1, 1), (1, 1)), 36, False)]
    seen = []
    real = saturation._Moments.update
    monkeypatch.setattr(saturation._Moments, "update", lambda self, x: (seen.append(len(x)), real(self, x))[1])
    early = collect_stats(model, ["x"], feeds, stats={"x": saturation._Moments(asks, 0)}, batch_size=2)["x"]
    assert seen == [2, 2]
    monkeypatch.setattr(saturation._Moments, "full", property(lambda self: False))
    every = collect_stats(model, ["x"], feeds, stats={"x": saturation._Moments(asks, 0)}, batch_size=2)["x"]
    assert len(seen) == 7 and early.rows == every.rows == {"conv": 40}
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(early.blocks("conv"), every.blocks("conv")))


def test_statistics_on_several_threads_are_those_of_one(monkeypatch):
    """``collect_stats`` with ``workers`` threads (tensor by tensor, each tensor's batches in order)
    keeps the statistics one thread keeps: histograms and input moments over several batches."""
    from gencompress.runtime_check import saturation
    from gencompress.runtime_check.calibration import collect_stats

    monkeypatch.setattr(saturation, "MOMENT_ROWS", 100)  # 16 windows a sample: rows from 4 batches of 2
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.normal(size=(10, 4, 8, 8)).astype(np.float32)}
    unfold = Unfold((3, 3), (0, 0, 0, 0), (1, 1), (1, 1))

    def run(workers):
        hist = collect_stats(model, ["x", "c", "r"], feeds, batch_size=2, workers=workers)
        moments = collect_stats(model, ["x", "r"], feeds, batch_size=2, workers=workers,
                                stats={n: saturation._Moments([(n, unfold, 36, False)], 0) for n in ("x", "r")})
        return hist, moments

    (h1, m1), (h3, m3) = run(1), run(3)
    for n in ("x", "c", "r"):
        assert (h1[n].lo, h1[n].hi, h1[n].count, h1[n].zeros) == (h3[n].lo, h3[n].hi, h3[n].count, h3[n].zeros)
        assert np.array_equal(h1[n].counts, h3[n].counts)
    for n in ("x", "r"):
        assert m1[n].rows == m3[n].rows == {n: 100}
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(m1[n].blocks(n), m3[n].blocks(n)))


def _output_error(w, q, scale, layout, h):
    """Per output channel, ``e H eᵀ`` of the weight error ``e = w - s q`` in the kernel's K order."""
    wr, ch = layout.rows(w)
    e = wr.astype(np.float64) - layout.rows(q)[0] * np.asarray(scale, np.float64).reshape(-1)[ch][:, None]
    return np.einsum("ij,jk,ik->i", e, h, e)


def test_error_feedback_lowers_the_output_error():
    """With the input's moments (correlated neighbouring kernel positions, as in images), the changed
    channels' output error is at most that of the weight-error search, much lower in total, with no
    unsafe pair, only the unsafe channels changed, and the same bytes on a rerun."""
    from gencompress.passes.insert_qdq import quantize_symmetric

    rng = np.random.default_rng(2)
    c_in, c_out = 16, 24
    base = np.abs(rng.normal(size=(4000, c_in, 4, 4)))
    x = base[:, :, :3, :3] + 0.5 * base[:, :, 1:, 1:]  # overlapping windows: neighbours correlate
    rows = Unfold((3, 3), (0, 0, 0, 0), (1, 1), (1, 1)).rows(x.astype(np.float32), 10**6, rng).astype(np.float64)
    h = rows.T @ rows / len(rows)
    w = rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    w[::2] = np.abs(w[::2]) * np.array([1, -1] * (c_in // 2), np.float32)[None, :, None, None]  # pairs of opposite signs: safe
    q, s = quantize_symmetric(w, 0)
    layout = Layout("Conv")
    plain, s_plain, _ = saturation_free(w, q, s, 0, layout)
    blocks = [(a, b, h[a:b, a:b]) for a, b in moment_blocks(h.shape[0])]
    fed, s_fed, info = saturation_free(w, q, s, 0, layout, moments=blocks)
    assert unsafe_pairs(fed, layout) == 0 and np.array_equal(s_fed, s_plain)
    assert np.array_equal(fed[::2], q[::2]) and unsafe_pairs(q[1::2], layout) > 0
    e_plain, e_fed = _output_error(w, plain, s_plain, layout, h), _output_error(w, fed, s_fed, layout, h)
    assert np.all(e_fed <= e_plain) and e_fed.sum() < 0.7 * e_plain.sum()
    assert 0 < info["error_feedback_channels"] <= info["channels"]
    again = saturation_free(w, q, s, 0, layout, moments=blocks)[0]
    assert again.tobytes() == fed.tobytes()


def test_uint8_layers_are_the_cheapest_within_the_share():
    macs = {"big": 1000, "small": 30, "tiny": 10, "mid": 60}
    assert uint8_layers(macs, share=0.05, small=0) == {"tiny", "small"}  # 40 of 1100 ≤ 55; + mid would be 100
    assert uint8_layers(macs, share=0.005, small=0) == set()
    assert uint8_layers(macs, share=0.005, small=30) == {"tiny", "small"}  # small layers whatever the share
    assert uint8_layers({**macs, "unknown": None}, small=20) == {"tiny"}  # no share without every layer's count


def _two_conv_model():
    """Conv 32 -> 64 (3x3) -> Relu -> Conv 64 -> 1 (3x3) on 8x8: the last conv holds 1/32 of the
    multiply-adds."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(64, 32, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(1, 64, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 32, 8, 8])], [helper.make_tensor_value_info("y", TP.FLOAT, [1, 1, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model  # no value shapes: the pass infers the layers' output sizes to count their multiply-adds


def test_cheap_layer_keeps_full_weights_as_uint8():
    """The cheap last layer keeps the vnni weights' values, stored uint8 with zero point 128; the
    costly one gets saturation-free int8; the verdict reads the model as saturation-free."""
    import onnx_ir as ir

    ranges = (("x", -2.0, 2.0), ("c", -50.0, 50.0), ("r", 0.0, 50.0), ("y", -300.0, 300.0))

    def build(**options):
        irm = ir.serde.deserialize_model(_two_conv_model())
        p = InsertQDQPass(InsertQDQPass.Options(ranges=ranges, **options))
        p(irm)
        return ir.serde.serialize_model(irm), {r["node"]: r for r in p.report["layers"]}

    portable, rows = build()
    vnni, _ = build(int8_kernels="vnni")
    inits = {i.name: numpy_helper.to_array(i) for i in portable.graph.initializer}
    vnni_inits = {i.name: numpy_helper.to_array(i) for i in vnni.graph.initializer}
    assert rows["conv2"]["saturation"]["weights"] == "uint8" and "uint8" in rows["conv2"]["saturation"]["reason"]
    assert inits["w2_quantized"].dtype == np.uint8 and np.all(inits["w2_zero_point"] == UINT8_ZERO_POINT)
    assert np.array_equal(inits["w2_quantized"].astype(np.int16) - UINT8_ZERO_POINT, vnni_inits["w2_quantized"])
    assert unsafe_pairs(vnni_inits["w2_quantized"], Layout("Conv")) > 0  # it had an unsafe pair
    assert inits["w1_quantized"].dtype == np.int8 and rows["conv1"]["saturation"]["channels"] > 0
    assert unsafe_pairs(inits["w1_quantized"], Layout("Conv")) == 0
    assert unsafe_layers(ir.serde.deserialize_model(portable).graph) == []


def _correlated_moments(asked: dict, correlated: bool):
    """A moments callable for the pass (records what it was asked): H of neighbouring K entries
    correlated (error feedback then lowers the output error) or the identity (it cannot)."""

    def moments(model, asks, options):
        asked.update(asks)
        out = {}
        for key, (_, _, k, *_) in asks.items():
            r = np.random.default_rng(k).normal(size=(4096, k))
            h = (lambda a: a.T @ a / len(a))(np.abs(r + np.roll(r, 1, axis=1) + np.roll(r, 2, axis=1))) if correlated else np.eye(k)
            out[key] = [(a, b, h[a:b, a:b]) for a, b in moment_blocks(k)]
        return out

    return moments


def test_cheap_layer_takes_the_bound_where_it_costs_little():
    """A cheap layer's moments are asked as optional; where the bound with error feedback keeps its
    output error within ``uint8_cost`` of full 8-bit weights' it gets saturation-free int8 weights
    (u8×s8 kernels, no unsafe pair), else it keeps full 8-bit weights as uint8; the cost is reported."""
    import onnx_ir as ir

    from gencompress.passes.insert_qdq import quantize_symmetric
    from gencompress.passes.int8_saturation import UINT8_COST, bound_cost

    ranges = (("x", -2.0, 2.0), ("c", -50.0, 50.0), ("r", 0.0, 50.0), ("y", -300.0, 300.0))

    def build(correlated, **options):
        asked = {}
        irm = ir.serde.deserialize_model(_two_conv_model())
        p = InsertQDQPass(InsertQDQPass.Options(ranges=ranges, **options), moments=_correlated_moments(asked, correlated))
        p(irm)
        model = ir.serde.serialize_model(irm)
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}, {r["node"]: r["saturation"] for r in p.report["layers"]}, asked

    inits, rows, asked = build(True)
    assert sorted(bool(a[3]) for a in asked.values()) == [False, True]  # conv1 needed, conv2 (cheap) optional
    assert inits["w2_quantized"].dtype == np.int8 and unsafe_pairs(inits["w2_quantized"], Layout("Conv")) == 0
    assert rows["conv2"]["bound_cost"] <= UINT8_COST and rows["conv2"]["channels"] == 1
    inits, rows, _ = build(False, uint8_cost=1.0)  # identity moments: feedback cannot pay for the bound
    assert inits["w2_quantized"].dtype == np.uint8 and rows["conv2"]["weights"] == "uint8" and rows["conv2"]["bound_cost"] > 1.0
    w = np.random.default_rng(0).normal(size=(4, 8, 3, 3)).astype(np.float32)
    q, s = quantize_symmetric(w, 0)
    blocks = [(a, b, np.eye(b - a)) for a, b in moment_blocks(72)]
    assert bound_cost(w, (q, s), (q, s), 0, Layout("Conv"), blocks) == 1.0


def test_error_feedback_on_several_threads_writes_the_same_model(monkeypatch):
    """The layers' error feedback runs on threads of their own (``_unsafe_weights``): the same model
    and report as on one thread, the cheap layer's choice included."""
    import onnx_ir as ir

    from gencompress.passes import insert_qdq

    ranges = (("x", -2.0, 2.0), ("c", -50.0, 50.0), ("r", 0.0, 50.0), ("y", -300.0, 300.0))

    def build(threads):
        monkeypatch.setattr(insert_qdq, "worker_threads", lambda: threads)
        irm = ir.serde.deserialize_model(_two_conv_model())
        p = InsertQDQPass(InsertQDQPass.Options(ranges=ranges), moments=_correlated_moments({}, True))
        p(irm)
        return ir.serde.serialize_model(irm).SerializeToString(), p.report

    one, many = build(1), build(4)
    assert one == many
    assert all("error_feedback_channels" in r["saturation"] for r in one[1]["layers"])  # both layers fed back


# ---- the zoo, fused AVX2 kernels against exact arithmetic ----------------------------------------


def _psnr(a, b, peak):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.mark.parametrize("objective", ["size"])
def test_zoo_fused_avx2_matches_exact(zoo_onnx, tmp_path, objective):
    """Every zoo model quantized (all int8 layers): on emulated AVX2 the fused int8 kernels are
    within 0.3 dB of exact arithmetic (PSNR vs the float model, 16 seeded latents)."""
    from gencompress import quantize

    models, feeds, refs, peaks = [], [], [], []
    for name in ZOO:
        src = zoo_onnx(name)
        out = tmp_path / f"{name}_int8.onnx"
        quantize(src, out, objective=objective, check=False)
        ref = onnx.load(str(src))
        f = sample_inputs(specs_of_model(ref), 16, seed=11)
        models.append(out)
        feeds.append(f)
        refs.append(src)
        peaks.append(output_range_of_model(ref) or 1.0)
    import onnxruntime as ort

    results = run_haswell(tmp_path, models, feeds)
    for name, src, f, peak, (exact, fused) in zip(ZOO, refs, feeds, peaks, results):
        floats = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, f)[0]
        exact_db, fused_db = _psnr(floats, exact, peak), _psnr(floats, fused, peak)
        assert fused_db >= exact_db - 0.3, f"{name}: fused AVX2 {fused_db:.1f} dB, exact {exact_db:.1f} dB"


def test_host_isa_named():
    isa = host_isa()
    assert isa and (saturates(isa) in (True, False))
