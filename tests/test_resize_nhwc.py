"""resize_nhwc: nearest upsampling before a Conv spelled channels-last (Transpose, Reshape,
Expand, Reshape, Transpose). Exact (bit-identical in onnxruntime) where the Resize's nearest
pixel is floor(y / f); left alone elsewhere; in an int8 graph onnxruntime then runs no Resize and
keeps only the Transposes at the graph's ends."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from gencompress.passes.resize_nhwc import ResizeNHWCPass, upsample_factors

RNG = np.random.default_rng(7)


def upsample_conv(transform="asymmetric", nearest="floor", factors=(2, 2), by_sizes=False, mode="nearest", reader="Conv", batch="N",
                  after="Conv"):
    """x[batch,4,5,6] -> Conv 1x1 (``after``; None: nothing) -> Resize -> Conv 3x3 (or another reader) -> y."""
    h, w = 5, 6
    inits = [numpy_helper.from_array((RNG.normal(size=(3, 4, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((RNG.normal(size=(4, 4, 1, 1)) * 0.5).astype(np.float32), "w0")]
    if by_sizes:
        inits.append(numpy_helper.from_array(np.array([3, 4, h * factors[0], w * factors[1]], np.int64), "sizes"))
        resize_inputs = ["x0", "", "", "sizes"]
    else:
        inits.append(numpy_helper.from_array(np.array([1, 1, *factors], np.float32), "scales"))
        resize_inputs = ["x0", "", "scales"]
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest
    if after == "Conv":
        nodes = [helper.make_node("Conv", ["x", "w0"], ["x0"], name="first")]
    else:
        nodes = [helper.make_node(after, ["x"], ["x0"], name="first")]
    nodes.append(helper.make_node("Resize", resize_inputs, ["u"], name="up", **attrs))
    if reader == "Conv":
        nodes.append(helper.make_node("Conv", ["u", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node(reader, ["u"], ["y"], name="reader"))
    x = helper.make_tensor_value_info("x", TP.FLOAT, [batch, 4, h, w])
    y = helper.make_tensor_value_info("y", TP.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def rewrite(proto):
    model = ir.serde.deserialize_model(proto)
    p = ResizeNHWCPass()
    p(model)
    return ir.serde.serialize_model(model), p.report["rewritten"]


def run(proto, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("transform,nearest,factors,by_sizes", [
    ("asymmetric", "floor", (2, 2), False),  # torch nn.Upsample(scale_factor=2)
    ("half_pixel", "round_prefer_floor", (2, 2), False),  # the ONNX defaults
    ("pytorch_half_pixel", "round_prefer_ceil", (3, 2), False),
    ("asymmetric", "floor", (2, 3), True),  # sizes instead of scales (they fix the batch: 3)
    ("asymmetric", "round_prefer_floor", (2, 2), False),  # y/2 = k + 0.5 rounds down: still floor(y/2)
])
def test_exact_where_the_nearest_pixel_is_floor(transform, nearest, factors, by_sizes):
    proto = upsample_conv(transform, nearest, factors, by_sizes, batch=3 if by_sizes else "N")
    new, done = rewrite(proto)
    assert done == ["up"]
    ops = [n.op_type for n in new.graph.node]
    assert "Resize" not in ops and ops.count("Transpose") == 2 and "Expand" in ops
    onnx.checker.check_model(new, full_check=True)
    x = RNG.normal(size=(3, 4, 5, 6)).astype(np.float32)
    assert np.array_equal(run(proto, x), run(new, x))


@pytest.mark.parametrize("kwargs", [
    {"transform": "asymmetric", "nearest": "round_prefer_floor", "factors": (3, 3)},  # y/3 = k + 2/3 rounds up
    {"transform": "align_corners", "nearest": "ceil"},
    {"transform": "half_pixel", "nearest": "floor"},
    {"factors": (1.5, 2)},  # not a whole factor
    {"mode": "linear"},
    {"reader": "Relu"},  # not read by a Conv
    {"by_sizes": True},  # sizes fix the batch, the input's is symbolic
    {"after": "Sigmoid"},  # after a float op: onnxruntime keeps that Resize channels-first, its fast path
])
def test_left_alone_otherwise(kwargs):
    new, done = rewrite(upsample_conv(**kwargs))
    assert done == [] and "Resize" in [n.op_type for n in new.graph.node]


def test_factors_need_static_channels_and_size():
    proto = upsample_conv()
    model = ir.serde.deserialize_model(proto)
    resize = next(n for n in model.graph if n.op_type == "Resize")
    assert upsample_factors(resize) == (4, 5, 6, 2, 2)
    resize.inputs[0].shape = ir.Shape(["N", "C", 5, 6])
    assert upsample_factors(resize) is None


def conv_upsample_conv(tmp_path):
    """x -> Conv -> LeakyRelu -> Resize x2 (nearest, torch's) -> Conv -> y, saved; its path."""
    w2 = (RNG.normal(size=(4, 4, 3, 3)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w2"], ["c"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c"], ["l"], name="act", alpha=0.2),
        helper.make_node("Resize", ["l", "", "scales"], ["u"], name="up", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["u", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(w2, "w2"), numpy_helper.from_array((RNG.normal(size=(3, 4, 3, 3)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 5, 6])],
                              [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 3, 10, 12])], inits)
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.save(proto, tmp_path / "g.onnx")
    return tmp_path / "g.onnx"


def test_quantized_upsampler_runs_no_resize(tmp_path):
    """Through quantize (objective size, a Conv-only graph): onnxruntime's optimized graph has no
    Resize, int8 Convs on both sides, and only the two Transposes at the graph's ends."""
    from gencompress.verbs.quantize import quantize

    report = quantize(conv_upsample_conv(tmp_path), tmp_path / "q.onnx", objective="size", calib_size=32, eval_size=16)
    assert report["rewrite"]["applied"] and report["rewrite"]["resize_nhwc"] == ["up"]
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert "Resize" not in ops and ops["QLinearConv"] == 2 and ops["Transpose"] == 2, ops
    assert report["psnr_db"] > 35


def test_compress_and_quantize_write_the_same_graph(tmp_path):
    """The recipe compress builds (objective size) rewrites the upsampling as quantize does."""
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.compress import compress

    path = conv_upsample_conv(tmp_path)
    quantize(path, tmp_path / "q.onnx", objective="size", calib_size=32, eval_size=16)
    compress(path, tmp_path / "out", flags={"objective": "size"}, bench=False, samples=32)
    ops = [[n.op_type for n in onnx.load(str(p)).graph.node] for p in (tmp_path / "q.onnx", tmp_path / "out" / "model.onnx")]
    assert ops[0] == ops[1] and "Resize" not in ops[0] and "Expand" in ops[0]
