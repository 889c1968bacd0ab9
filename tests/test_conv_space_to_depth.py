"""conv_space_to_depth: a Conv with few output channels computed on r x r pixel blocks
(SpaceToDepth -> Conv with r*r times the channels -> DepthToSpace). Equal in float to the original
Conv for every padding it accepts; left alone where the blocks would not fit or would cost more
than ``max_work``; in an int8 graph onnxruntime runs the block Conv as a QLinearConv and the pixel
moves on uint8 data; the speed plan and compress's recipe use the same rewrite as quantize."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from gencompress.passes.conv_space_to_depth import ConvSpaceToDepthPass, rewritable_convs

RNG = np.random.default_rng(11)


def conv_model(c_in=16, c_out=3, kernel=(9, 9), size=(16, 12), batch="N", bias=True, before=True, **attrs):
    """x[batch, 4, h, w] -> (Conv 3x3 4->c_in -> Relu, if ``before``) -> Conv ``kernel`` c_in->c_out (``attrs``) -> Tanh -> y."""
    h, w = size
    if "pads" not in attrs and "auto_pad" not in attrs:
        attrs["pads"] = [(kernel[0] - 1) // 2, (kernel[1] - 1) // 2, kernel[0] // 2, kernel[1] // 2]
    fan_in = c_in * kernel[0] * kernel[1]
    inits = [numpy_helper.from_array((RNG.normal(size=(c_out, c_in, *kernel)) / np.sqrt(fan_in)).astype(np.float32), "w")]
    inputs = ["h", "w"]
    if bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=c_out).astype(np.float32) * 0.1, "b"))
        inputs.append("b")
    nodes = []
    if before:
        inits.append(numpy_helper.from_array((RNG.normal(size=(c_in, 4, 3, 3)) / 6).astype(np.float32), "w0"))
        nodes += [helper.make_node("Conv", ["x", "w0"], ["c0"], name="first", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["h"], name="act")]
    nodes += [helper.make_node("Conv", inputs, ["c"], name="last", **attrs), helper.make_node("Tanh", ["c"], ["y"], name="tanh")]
    x = helper.make_tensor_value_info("x" if before else "h", TP.FLOAT, [batch, 4 if before else c_in, h, w])
    y = helper.make_tensor_value_info("y", TP.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def rewrite(proto, **options):
    model = ir.serde.deserialize_model(proto)
    p = ConvSpaceToDepthPass(ConvSpaceToDepthPass.Options(**options))
    p(model)
    return ir.serde.serialize_model(model), p.report


def run(proto, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("c_out,kernel,attrs,block", [
    (3, (9, 9), {}, 4),  # the style-transfer net's last layer
    (1, (9, 9), {}, 4),  # one-channel output (a mask)
    (6, (5, 5), {}, 2),  # 24 channels with 2x2 blocks
    (6, (7, 5), {"pads": [2, 1, 4, 3]}, 2),  # rectangular kernel, uneven "same" padding
    (6, (8, 8), {"auto_pad": "SAME_UPPER"}, 2),  # even kernel: the extra pad at the end
    (6, (8, 8), {"auto_pad": "SAME_LOWER"}, 2),
])
def test_rewritten_conv_computes_the_same(c_out, kernel, attrs, block):
    proto = conv_model(c_out=c_out, kernel=kernel, **attrs)
    new, report = rewrite(proto)
    (item,) = report["rewritten"]
    assert item["node"] == "last" and item["block"] == block and item["out_channels"] == [c_out, block * block * c_out]
    ops = [n.op_type for n in new.graph.node]
    assert ops == ["Conv", "Relu", "SpaceToDepth", "Conv", "DepthToSpace", "Tanh"]
    onnx.checker.check_model(new, full_check=True)
    x = RNG.normal(size=(2, 4, 16, 12)).astype(np.float32)
    want, got = run(proto, x), run(new, x)
    assert got.shape == want.shape == (2, c_out, 16, 12)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert item["work_vs_conv"] <= 2.0


def test_graph_output_and_no_bias():
    """The Conv's output is the graph's (no Tanh after it), no bias, input straight from the graph."""
    proto = conv_model(bias=False, before=False)
    nodes = [n for n in proto.graph.node if n.op_type != "Tanh"]
    nodes[-1].output[0] = "y"
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    new, report = rewrite(proto)
    assert [r["node"] for r in report["rewritten"]] == ["last"]
    assert [o.name for o in new.graph.output] == ["y"] and new.graph.node[-1].op_type == "DepthToSpace"
    x = RNG.normal(size=(1, 16, 16, 12)).astype(np.float32)
    np.testing.assert_allclose(run(new, x), run(proto, x), atol=2e-5)


@pytest.mark.parametrize("change,reason", [
    ({"kernel": (3, 3)}, "16.0x the multiply-adds"),  # a 3x3 Conv gains zero taps, not speed (measured)
    ({"c_out": 16}, None),  # 16 channels fill the tiles: not reported
    ({"strides": [2, 2], "pads": [4, 4, 4, 4]}, "grouped, strided or dilated"),
    ({"dilations": [2, 2], "pads": [8, 8, 8, 8]}, "grouped, strided or dilated"),
    ({"pads": [0, 0, 0, 0]}, "output size differs"),
    ({"size": (18, 12)}, "not divisible by 4"),
    ({"size": ("H", 12)}, "not static"),
])
def test_left_alone(change, reason):
    proto = conv_model(**change)
    new, report = rewrite(proto)
    assert report["rewritten"] == [] and new.graph.node[-2].op_type == "Conv"
    left = {item["node"]: item["reason"] for item in report["left_alone"]}
    if reason is None:
        assert "last" not in left
    else:
        assert reason in left["last"], left


def test_exclude_and_rewritable_convs():
    proto = conv_model()
    assert rewritable_convs(ir.serde.deserialize_model(proto)) == {"last"}
    for pattern in ("last", "w"):  # node name or weight name, as --exclude
        new, report = rewrite(proto, exclude=(pattern,))
        assert report["rewritten"] == [] and "SpaceToDepth" not in [n.op_type for n in new.graph.node]


def test_int8_block_conv_runs_in_int8(tmp_path):
    """Through quantize (objective size): onnxruntime's optimized graph runs both Convs as QLinearConv,
    the pixel moves on uint8 data, no float Conv; PSNR stays high; compress writes the same graph."""
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.compress import compress

    path = tmp_path / "g.onnx"
    onnx.save(conv_model(batch=1), path)
    report = quantize(path, tmp_path / "q.onnx", objective="size", calib_size=32, eval_size=16)
    assert report["rewrite"]["conv_space_to_depth"] == ["last"]
    assert any("SpaceToDepth + Conv 3x3 -> 48 channels" in line for line in report["rewrite"]["changes"])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(tmp_path / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "opt.onnx")).graph
    ops = collections.Counter(n.op_type for n in optimized.node)
    assert ops["QLinearConv"] == 2 and "Conv" not in ops and ops["SpaceToDepth"] + ops["DepthToSpace"] >= 1, ops
    assert report["psnr_db"] > 35
    compress(path, tmp_path / "out", flags={"objective": "size"}, bench=False, samples=32)
    graphs = [[n.op_type for n in onnx.load(str(p)).graph.node] for p in (tmp_path / "q.onnx", tmp_path / "out" / "model.onnx")]
    assert graphs[0] == graphs[1] and "SpaceToDepth" in graphs[0]


@pytest.mark.parametrize("name,options,message", [
    ("conv_space_to_depth", {"max_out_channels": -5}, "max_out_channels -5 is out of range"),
    ("conv_space_to_depth", {"max_work": float("nan")}, "max_work must be a finite number"),
    ("conv_space_to_depth", {"max_work": 0.5}, "max_work must be a finite number"),
    ("conv_space_to_depth", {"exclude": 3}, "option exclude must be a list of names"),
    ("insert_qdq", {"exclude": "conv1"}, "option exclude must be a list of names"),  # not the letters c, o, n, v, 1
    ("insert_qdq", {"include": ["a", 3]}, "option include must be a list of names"),
    ("resize_nhwc", {"exclude": {"a": 1}}, "option exclude must be a list of names"),
])
def test_recipe_options_refused_in_one_line(name, options, message):
    from gencompress.errors import GencompressError
    from gencompress.passes.registry import make_options

    with pytest.raises(GencompressError, match=message) as e:
        make_options(name, options)
    assert "\n" not in str(e.value)
    make_options(name, {"exclude": ["conv1"]})  # a list of names is taken
