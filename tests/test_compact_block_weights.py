"""compact_block_weights: a pixel-block Conv's int8 weight stored as its kernel, rebuilt by constant
ops that onnxruntime folds at load; the rebuilt weight equals the stored one, outputs are
bit-identical, the Conv still runs as QLinearConv; a weight the ops cannot rebuild is left."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from gencompress.passes.compact_block_weights import CompactBlockWeightsPass
from gencompress.passes.conv_space_to_depth import block_taps, space_to_depth_weight

RNG = np.random.default_rng(5)


def block_qdq_model(kernel, c_in, c_out, pads, r, size=(8, 8), dtype=np.int8, zero=0):
    """x -> SpaceToDepth r -> Q -> DQ -> Conv(DQ(w' int8)) -> Q -> DQ -> DepthToSpace: the quantized form of
    a rewritten Conv, its w' built by ``conv_space_to_depth``'s own function from a random kernel."""
    lo, hi = (-127, 128) if dtype == np.int8 else (0, 256)
    k = RNG.integers(lo, hi, size=(c_out, c_in, *kernel)).astype(dtype)
    k[k == 0] = 1  # no accidental zero border: the kernel size is then unambiguous
    w2 = space_to_depth_weight(k.astype(np.int32) - zero, pads, r) + zero  # structural "zeros" = the zero point
    (t0, th), (s0, tw) = block_taps(kernel[0], pads[0], r), block_taps(kernel[1], pads[1], r)
    rows, cols = w2.shape[:2]
    inits = [
        numpy_helper.from_array(w2.astype(dtype), "wq"),
        numpy_helper.from_array(np.full(rows, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.full(rows, zero, dtype), "wz"),
        numpy_helper.from_array(np.float32(0.02), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
    ]
    nodes = [
        helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=r),
        helper.make_node("QuantizeLinear", ["s", "xs", "xz"], ["sq"]),
        helper.make_node("DequantizeLinear", ["sq", "xs", "xz"], ["sd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["sd", "wd"], ["c"], name="block", kernel_shape=[th, tw], pads=[-t0, -s0, th - 1 + t0, tw - 1 + s0]),
        helper.make_node("QuantizeLinear", ["c", "xs", "xz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "xs", "xz"], ["cd"]),
        helper.make_node("DepthToSpace", ["cd"], ["y"], blocksize=r, mode="DCR"),
    ]
    x = helper.make_tensor_value_info("x", TP.FLOAT, ["N", c_in, size[0] * r, size[1] * r])
    y = helper.make_tensor_value_info("y", TP.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    return model, k, w2.astype(dtype)


def compact(proto):
    model = ir.serde.deserialize_model(proto)
    p = CompactBlockWeightsPass()
    p(model)
    return ir.serde.serialize_model(model), p.report


def session(proto, path=None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    if path:
        opts.optimized_model_filepath = str(path)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kernel,pads,r,c_in,c_out,dtype,zero", [
    ((9, 9), [4, 4, 4, 4], 4, 16, 3, np.int8, 0),  # the picture-drawing layer
    ((9, 9), [4, 4, 4, 4], 2, 8, 5, np.int8, 0),
    ((4, 4), [1, 1, 2, 2], 4, 4, 1, np.int8, 0),  # an even kernel, uneven pads
    ((7, 5), [3, 2, 3, 2], 4, 4, 2, np.int8, 0),
    ((5, 5), [2, 2, 2, 2], 2, 4, 3, np.uint8, 128),  # uint8 weights: the "zeros" are the zero point
])
def test_compact_weight_rebuilds_bit_identically(tmp_path, kernel, pads, r, c_in, c_out, dtype, zero):
    proto, k, w2 = block_qdq_model(kernel, c_in, c_out, pads, r, dtype=dtype, zero=zero)
    new, report = compact(proto)
    (item,) = report["compacted"]
    assert item["kernel"] == list(kernel) and item["block"] == r and item["bytes_saved"] == w2.nbytes - k.nbytes
    stored = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert "wq" not in stored
    assert [n for n, a in stored.items() if a.shape == k.shape and np.array_equal(a, k)]  # the kernel itself is stored
    assert sum(a.nbytes for a in stored.values()) < w2.nbytes / 2
    # outputs bit-identical to the stored-w' model, optimized (int8 kernels) and exact (DQ -> float) alike
    x = RNG.normal(size=(3, c_in, 8 * r, 8 * r)).astype(np.float32)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        a, b = (session(m, level=level).run(None, {"x": x})[0] for m in (proto, new))
        assert np.array_equal(a, b)
    # onnxruntime folds the ops into one initializer and still fuses the int8 Conv
    session(new, tmp_path / "opt.onnx")
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    ops_run = collections.Counter(n.op_type for n in optimized.graph.node)
    assert ops_run["QLinearConv"] == 1 and not {"Pad", "Slice", "Concat", "Conv"} & set(ops_run), ops_run
    folded = {t.name: numpy_helper.to_array(t) for t in optimized.graph.initializer}
    assert any(a.shape == w2.shape and np.array_equal(a, w2) for a in folded.values())


def rebuilt_weight(proto) -> np.ndarray:
    """The DequantizeLinear weight input of ``proto``'s block Conv, computed by onnxruntime unoptimized."""
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "wd")
    graph = helper.make_graph(list(proto.graph.node), "g", list(proto.graph.input),
                              [helper.make_tensor_value_info(dq.input[0], TP.INT8, None)], list(proto.graph.initializer))
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    x = np.zeros([1] + [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]], np.float32)
    return session(model, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"x": x})[0]


def test_rebuilt_weight_equals_the_stored_one():
    proto, _, w2 = block_qdq_model((9, 9), 16, 3, [4, 4, 4, 4], 4)
    new, report = compact(proto)
    assert report["compacted"]
    got = rebuilt_weight(new)
    assert got.dtype == w2.dtype and np.array_equal(got, w2)


def test_weight_not_rebuilt_exactly_is_left():
    """One copy of one tap differs (as a per-copy weight search could make it): no kernel rebuilds
    w', so it stays stored as it was, with the reason."""
    proto, _, w2 = block_qdq_model((9, 9), 16, 3, [4, 4, 4, 4], 4)
    changed = w2.copy()
    nz = np.flatnonzero(changed)
    changed.flat[nz[len(nz) // 2]] += 1 if changed.flat[nz[len(nz) // 2]] < 127 else -1
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(changed, "wq"))
    new, report = compact(proto)
    assert report["compacted"] == [] and report["left_alone"][0]["reason"] == "not rebuilt exactly from a kernel"
    assert [n.op_type for n in new.graph.node] == [n.op_type for n in proto.graph.node]


def test_plain_conv_untouched():
    """A Conv that does not read SpaceToDepth's output is not a candidate at all."""
    proto, _, _ = block_qdq_model((9, 9), 16, 3, [4, 4, 4, 4], 4)
    proto.graph.node[1].input[0] = "x"
    del proto.graph.node[0]
    new, report = compact(proto)
    assert report == {"compacted": [], "left_alone": []}


def test_quantize_stores_the_kernel(tmp_path):
    """Through quantize (objective size) on a tiny SRGAN-style net: the 9x9 -> 3 Conv runs on pixel
    blocks, its int8 weight stored as the 9x9 kernel, with the default portable weights (the
    saturation search gives the block Conv no error feedback, which would make its copies differ)."""
    from gencompress.exporter.families import export_family
    from gencompress.models.conv_families import TINY
    from gencompress.verbs.quantize import quantize

    path = tmp_path / "g.onnx"
    export_family("srgan", path, legacy=True, **TINY["srgan"])
    report = quantize(path, tmp_path / "q.onnx", objective="size", calib_size=16, eval_size=8)
    assert len(report["rewrite"]["conv_space_to_depth"]) == 1
    model = onnx.load(str(tmp_path / "q.onnx"))
    shapes = [list(t.dims) for t in model.graph.initializer if t.data_type == TP.INT8]
    nf = TINY["srgan"]["nf"]
    assert [3, nf, 9, 9] in shapes and [48, 16 * nf, 3, 3] not in shapes
    assert report["psnr_db"] > 30


def test_saturation_check_reads_the_compact_weight():
    """The portability check (unsafe int8 pairs on kernels without VNNI) sees the rebuilt weight of a
    compacted Conv, not nothing: the same finding as on the stored w'."""
    from gencompress.passes.compact_block_weights import folded_weight
    from gencompress.passes.int8_saturation import unsafe_layers

    proto, _, w2 = block_qdq_model((9, 9), 16, 3, [4, 4, 4, 4], 4)
    new, _ = compact(proto)
    before, after = (unsafe_layers(ir.serde.deserialize_model(m).graph) for m in (proto, new))
    assert before and after == before  # random int8 values: unsafe pairs, found in both
    dq = next(n for n in ir.serde.deserialize_model(new).graph if n.op_type == "DequantizeLinear" and n.outputs[0].name == "wd")
    assert np.array_equal(folded_weight(dq.inputs[0]), w2)


@pytest.mark.parametrize("op, args, attributes", [
    ("Pad", [np.arange(6, dtype=np.int8).reshape(2, 3), np.array([0, 1, 2, 0]), np.int8(-3)], {}),
    ("Slice", [np.arange(24).reshape(2, 3, 4), np.array([1, -3]), np.array([3, 99]), np.array([1, 2])], {}),
    ("Concat", [np.ones((1, 2), np.uint8), np.zeros((2, 2), np.uint8)], {"axis": 0}),
    ("Reshape", [np.arange(12), np.array([3, 4])], {}),
    ("Transpose", [np.arange(24).reshape(2, 3, 4)], {"perm": [1, 2, 0]}),
    ("Transpose", [np.arange(24).reshape(2, 3, 4)], {}),  # no perm: reversed
])
def test_evaluate_is_what_onnx_computes(op, args, attributes):
    """The one numpy evaluator of the constant ops (the pass's proof and the saturation check's
    reading) agrees with onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    from gencompress.passes.compact_block_weights import evaluate

    names = [f"a{i}" for i in range(len(args))]
    node = helper.make_node(op, names, ["y"], **attributes)
    want = ReferenceEvaluator(node).run(None, dict(zip(names, args)))[0]
    got = evaluate(op, args, attributes)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_evaluate_refuses_forms_it_does_not_cover():
    from gencompress.passes.compact_block_weights import evaluate

    x = np.zeros((2, 3), np.int8)
    assert evaluate("Pad", [x, np.array([0, -1, 0, 0])], {}) is None  # a crop
    assert evaluate("Pad", [x, np.array([0, 1, 0, 0])], {"mode": "reflect"}) is None
    assert evaluate("Reshape", [x, np.array([-1])], {}) is None
    assert evaluate("Slice", [x, np.array([0]), np.array([1]), np.array([0]), np.array([2])], {}) is None  # steps
