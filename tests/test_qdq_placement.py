"""Q/DQ placement for Conv-only generators (issue 14): LeakyRelu, Concat, Mul by a constant, residual
Add and nearest Resize run on int8 data in onnxruntime, as in onnxruntime's own quantize_static
output. Checked on the graph onnxruntime actually runs (``optimized_model_filepath``), on tiny
hand-built graphs and tiny instances of the three families in ``models/conv_families.py``."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from gencompress.passes.insert_qdq import InsertQDQPass
from gencompress.runtime_check.calibration import calibrate_ranges

RNG = np.random.default_rng(14)
FLOAT_COMPUTE = {"Conv", "LeakyRelu", "Concat", "Mul", "Add", "Relu"}  # none of these may be left in float


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def block_model():
    """x[N,4,6,6] -> Conv c1 -> LeakyRelu l1 -> Concat(x, l1) -> Conv c2 -> Mul 0.2 -> Add(x) ->
    Resize x2 nearest -> Conv c3 -> y (a graph output): one dense step with a scaled residual and
    an upsampler, the structure of a super-resolution block."""
    w1 = RNG.normal(size=(4, 4, 3, 3)) * 0.3
    w2 = RNG.normal(size=(4, 8, 3, 3)) * 0.2
    w3 = RNG.normal(size=(3, 4, 3, 3)) * 0.3
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=pads),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], name="l1", alpha=0.2),
        helper.make_node("Concat", ["x", "l1"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w2", "b2"], ["c2"], name="c2", pads=pads),
        helper.make_node("Mul", ["c2", "res_scale"], ["m"], name="mul"),
        helper.make_node("Add", ["x", "m"], ["a"], name="add"),
        helper.make_node("Resize", ["a", "", "up"], ["u"], name="up", mode="nearest"),
        helper.make_node("Conv", ["u", "w3", "b3"], ["y"], name="c3", pads=pads),
    ]
    inits = [
        _init("w1", w1), _init("b1", RNG.normal(size=4) * 0.1), _init("w2", w2), _init("b2", RNG.normal(size=4) * 0.1),
        _init("w3", w3), _init("b3", RNG.normal(size=3) * 0.1), _init("res_scale", 0.2), _init("up", [1, 1, 2, 2]),
    ]
    x = helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TP.FLOAT, ["N", 3, 12, 12])
    model = helper.make_model(helper.make_graph(nodes, "block", [x], [y], inits), opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def static(proto):
    model = ir.serde.deserialize_model(proto)
    InsertQDQPass(InsertQDQPass.Options(calib_size=32), calibrate=calibrate_ranges)(model)
    return ir.serde.serialize_model(model)


def optimized(proto, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED) -> onnx.ModelProto:
    """The graph onnxruntime runs after its QDQ fusions (level extended: no hardware-specific layouts)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    data = proto if isinstance(proto, (str, bytes)) else proto.SerializeToString()
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


def op_counts(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def run(proto, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    data = proto if isinstance(proto, (str, bytes)) else proto.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def rel_rms(out, ref) -> float:
    return float(np.sqrt(np.mean((out.astype(np.float64) - ref) ** 2) / np.mean(ref.astype(np.float64) ** 2)))


def test_block_ops_run_on_int8_data(tmp_path):
    proto = block_model()
    q = static(proto)
    onnx.checker.check_model(q, full_check=True)
    producers = {o: n for n in q.graph.node for o in n.output}
    # every input and the output of LeakyRelu, Concat, Mul, Add, Resize are quantized
    for name in ("l1", "cat", "mul", "add", "up"):
        node = next(n for n in q.graph.node if n.name == name)
        data_inputs = node.input[:1] if node.op_type == "Resize" else node.input
        assert all(producers[i].op_type == "DequantizeLinear" for i in data_inputs if i in producers), name
        assert {n.op_type for n in q.graph.node if node.output[0] in n.input} == {"QuantizeLinear"}, name
    # the Mul's constant is stored quantized (uint8, its own range) behind a DequantizeLinear
    const_dq = producers[next(n for n in q.graph.node if n.name == "mul").input[1]]
    assert const_dq.op_type == "DequantizeLinear" and const_dq.input[0] in {i.name for i in q.graph.initializer}
    # Resize keeps its input's scale: the same initializers on both sides
    resize = next(n for n in q.graph.node if n.name == "up")
    q_after = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == resize.output[0])
    assert producers[resize.input[0]].input[1:] == q_after.input[1:]
    # the graph output keeps its name and float type; the last Conv's output is quantized before it
    assert [o.name for o in q.graph.output] == ["y"] and q.graph.output[0].type.tensor_type.elem_type == TP.FLOAT
    assert producers["y"].op_type == "DequantizeLinear"

    ops = op_counts(optimized(q, tmp_path))
    assert ops["QLinearConv"] == 3 and ops["QLinearLeakyRelu"] == 1 and ops["QLinearConcat"] == 1
    assert ops["QLinearMul"] == 1 and ops["QLinearAdd"] == 1
    assert not FLOAT_COMPUTE & set(ops), ops
    opt = optimized(q, tmp_path)
    makers = {o: n for n in opt.graph.node for o in n.output}
    resize = next(n for n in opt.graph.node if n.op_type == "Resize")
    assert makers[resize.input[0]].op_type == "QLinearAdd"  # Resize reads the int8 sum, not a DequantizeLinear

    x = RNG.normal(size=(16, 4, 6, 6)).astype(np.float32)
    (ref,) = run(proto, {"x": x})
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        (out,) = run(q, {"x": x}, level)
        assert out.shape == ref.shape and rel_rms(out, ref) < 0.03


def test_concat_input_nothing_else_reads_shares_the_output_scale():
    """Relu(x) read only by the Concat takes the Concat output's scale (the int8 Concat then only
    copies); the Conv output beside it keeps its own."""
    w = RNG.normal(size=(4, 4, 1, 1)) * 0.5
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Concat", ["r", "c"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="out"),
    ]
    inits = [_init("w", w), _init("w2", RNG.normal(size=(2, 8, 1, 1)))]
    x = helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 5, 5])
    y = helper.make_tensor_value_info("y", TP.FLOAT, ["N", 2, 5, 5])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    q = static(proto)
    scale_of = {n.input[0]: n.input[1] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert scale_of["r"] == scale_of["cat"] == "cat_scale"
    assert scale_of["c"] == "c_scale"


# ---- the three families, tiny ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    """``tiny_family(name) -> (float path, ours path, ours report)`` (exported and quantized once)."""
    from gencompress.exporter.families import export_family
    from gencompress.models.conv_families import TINY
    from gencompress.verbs.quantize import quantize

    folder = tmp_path_factory.mktemp("families")
    cache = {}

    def get(name):
        if name not in cache:
            path, out = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
            export_family(name, path, legacy=True, **TINY[name])  # TorchScript: seconds faster than dynamo
            cache[name] = (path, out, quantize(path, out, calib_size=64, eval_size=32, objective="size"))
        return cache[name]

    return get


# the int8 kernels onnxruntime runs on our output; float ops that must not be left
EXPECTED = {
    "rrdb": ({"QLinearConv", "QLinearLeakyRelu", "QLinearConcat", "QLinearAdd", "QLinearMul"}, {"Conv", "LeakyRelu", "Concat", "Add", "Mul"}),
    "gan": ({"QLinearConv", "QLinearLeakyRelu", "QGemm"}, {"Conv", "LeakyRelu", "Gemm"}),
    "style": ({"QLinearConv", "QLinearAdd"}, {"Conv", "Add", "Relu"}),
}


@pytest.mark.parametrize("name", ["rrdb", "gan", "style"])
def test_family_runs_int8_where_onnxruntime_has_kernels(name, tiny_family, tmp_path):
    path, out, report = tiny_family(name)
    want, never = EXPECTED[name]
    opt = optimized(onnx.load(str(out)), tmp_path)
    ops = op_counts(opt)
    assert want <= set(ops), ops
    assert not never & set(ops), ops
    # Resize (nearest Upsample) reads int8 data: no DequantizeLinear feeds it
    makers = {o: n for n in opt.graph.node for o in n.output}
    for resize in (n for n in opt.graph.node if n.op_type == "Resize"):
        assert makers[resize.input[0]].op_type != "DequantizeLinear"
    # InstanceNormalization stays float, after a DequantizeLinear (and the pixel shuffle of a Conv
    # computed on pixel blocks, conv_space_to_depth) and before a QuantizeLinear
    for norm in (n for n in opt.graph.node if n.op_type == "InstanceNormalization"):
        maker = makers[norm.input[0]]
        maker = makers[maker.input[0]] if maker.op_type == "DepthToSpace" else maker
        assert maker.op_type == "DequantizeLinear"
    assert report["psnr_db"] is not None and report["psnr_db"] > 25.0


def test_family_fidelity_close_to_onnxruntime_quantizer(tiny_family, tmp_path):
    """PSNR of ours vs onnxruntime's quant_pre_process + quantize_static (same calibration latents)
    on the tiny super-resolution net: not more than 0.5 dB below."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model
    from gencompress.runtime_check.calibration import calibration_inputs

    path, out, _ = tiny_family("rrdb")
    model = load_model(path)
    feeds = calibration_inputs(model, size=64, seed=0)  # the latents quantize(calib_size=64) used

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v[i : i + 64] for k, v in feeds.items()} for i in range(0, len(feeds["image"]), 64)])

        def get_next(self):
            return next(self.batches, None)

    pre, theirs = tmp_path / "pre.onnx", tmp_path / "ort.onnx"
    quant_pre_process(str(path), str(pre))
    quantize_static(str(pre), str(theirs), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    held_back = sample_inputs(specs_of_model(model), 64, 777)
    (ref,) = run(str(path), held_back)
    peak = float(np.ptp(ref))

    def psnr(p):
        (o,) = run(str(p), held_back)
        return 10 * np.log10(peak**2 / np.mean((o.astype(np.float64) - ref) ** 2))

    assert psnr(out) >= psnr(theirs) - 0.5


def test_quantize_folds_the_residual_scale_into_the_conv(tmp_path):
    """Conv-only graph (no ConvTranspose to rewrite): quantize still folds the Conv -> Mul(0.2)
    into the Conv's weights, as onnxruntime's quant_pre_process does, so no QLinearMul runs."""
    from gencompress.verbs.quantize import quantize

    proto = block_model()
    onnx.save(proto, tmp_path / "block.onnx")
    report = quantize(tmp_path / "block.onnx", tmp_path / "q.onnx", objective="size", calib_size=32, eval_size=16)
    assert [f["node"] for f in report["rewrite"]["folded_into_layers"]] == ["mul"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert "mul" not in {n.name for n in q.graph.node}
    ops = op_counts(optimized(q, tmp_path))
    assert ops["QLinearConv"] == 3 and "QLinearMul" not in ops and not FLOAT_COMPUTE & set(ops), ops
    x = RNG.normal(size=(16, 4, 6, 6)).astype(np.float32)
    (ref,) = run(proto, {"x": x})
    (out,) = run(q, {"x": x})
    assert rel_rms(out, ref) < 0.03
