"""convtranspose_to_conv and convtranspose_to_gemm on hand-built graphs: exact in onnxruntime, graph contract kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from gencompress.passes.convtranspose_to_conv import ConvTransposeToConvPass
from gencompress.passes.convtranspose_to_gemm import ConvTransposeToGemmPass
from gencompress.passes.insert_qdq import CHANNEL_BLOCK_KEY

TOL = 1e-5
BATCHES = (1, 64)


def convtranspose_model(
    c_in=4,
    c_out=6,
    kernel=4,
    strides=2,
    pads=1,
    output_padding=None,
    group=1,
    dilations=None,
    bias=True,
    activation="Relu",
    spatial=(5, 6),
    auto_pad=None,
    output_shape=None,
    weight_as_input=False,
    opset=17,
    seed=0,
):
    """x [N, c_in, *spatial] -> ConvTranspose -> activation -> out; N symbolic, metadata set."""
    rank = len(spatial)
    rng = np.random.default_rng(seed)
    kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,) * rank
    # scaled so outputs are O(1) and float32 summation-order differences stay far below TOL
    w = (rng.standard_normal((c_in, c_out // group, *kernel)) / np.sqrt(c_in * np.prod(kernel))).astype(np.float32)
    attrs = {"kernel_shape": list(kernel), "group": group}
    attrs["strides"] = list(strides) if isinstance(strides, (tuple, list)) else [strides] * rank
    if pads is not None:
        attrs["pads"] = list(pads) if isinstance(pads, (tuple, list)) else [pads] * (2 * rank)
    if output_padding is not None:
        attrs["output_padding"] = list(output_padding) if isinstance(output_padding, (tuple, list)) else [output_padding] * rank
    if dilations is not None:
        attrs["dilations"] = list(dilations) if isinstance(dilations, (tuple, list)) else [dilations] * rank
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    if output_shape:
        attrs["output_shape"] = list(output_shape)
    inits = [] if weight_as_input else [numpy_helper.from_array(w, "w")]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", c_in, *spatial])]
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape)))
    names = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        names.append("b")
    ct_out = "y" if activation else "out"
    nodes = [helper.make_node("ConvTranspose", names, [ct_out], name="up", **attrs)]
    if activation == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", ["y"], ["out"], name="act", alpha=0.2))
    elif activation:
        nodes.append(helper.make_node(activation, ["y"], ["out"], name="act"))
    out_info = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", c_out, *[None] * rank])
    graph = helper.make_graph(nodes, "g", inputs, [out_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.metadata_props.add(key="gencompress.source", value="hand-built")
    return model


def feeds_for(model: onnx.ModelProto, batch: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in {i.name for i in model.graph.initializer}:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def apply(pass_, model: onnx.ModelProto) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    result = pass_(ir_model)
    return ir.serde.serialize_model(result.model)


def assert_same_contract(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> None:
    onnx.checker.check_model(rewritten, full_check=True)
    assert list(rewritten.graph.input) == list(original.graph.input)
    assert list(rewritten.graph.output) == list(original.graph.output)
    assert {p.key: p.value for p in rewritten.metadata_props} == {p.key: p.value for p in original.metadata_props}


def assert_equivalent(original: onnx.ModelProto, rewritten: onnx.ModelProto, batches=BATCHES, feeds=None) -> None:
    for batch in batches:
        f = feeds(batch) if feeds else feeds_for(original, batch)
        for a, b in zip(run(original, f), run(rewritten, f)):
            assert a.shape == b.shape
            assert np.max(np.abs(a - b)) <= TOL


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def to_conv(model, **options):
    p = ConvTransposeToConvPass(ConvTransposeToConvPass.Options(**options))
    return apply(p, model), p.report


# ---- ConvTranspose -> Conv (+ DepthToSpace + Slice) ------------------------------------------

GRID = [
    dict(kernel=k, strides=s, pads=p, output_padding=op)
    for k in (2, 3, 4, 5)
    for s in (1, 2, 3)
    for p in (0, 1, 2)
    for op in sorted({0, s - 1})
    if s * 4 + op + k - 2 * p > 0
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: "k{kernel}s{strides}p{pads}op{output_padding}".format(**c))
def test_grid_kernels_strides_pads_output_padding(case):
    model = convtranspose_model(**case)
    new, report = to_conv(model)
    assert report["left_alone"] == [] and len(report["rewritten"]) == 1
    assert "ConvTranspose" not in ops(new)
    assert_same_contract(model, new)
    assert_equivalent(model, new)


CASES = {
    "group2": dict(group=2),
    "group3_odd_kernel": dict(c_in=6, c_out=9, group=3, kernel=3, pads=1, output_padding=1),
    "depthwise": dict(c_in=4, c_out=4, group=4),
    "dilation2_stride2": dict(kernel=3, pads=0, dilations=2),
    "dilation2_stride3": dict(kernel=3, strides=3, pads=1, dilations=2),
    "dilation2_stride1": dict(kernel=3, strides=1, pads=1, dilations=2),
    "nonsquare_kernel_strides_pads": dict(kernel=(3, 5), strides=(2, 3), pads=(1, 2, 0, 1)),
    "asymmetric_pads_output_padding": dict(kernel=(4, 2), pads=(1, 0, 2, 1), output_padding=(1, 0)),
    "stride_1x2": dict(strides=(1, 2)),
    "same_upper": dict(pads=None, auto_pad="SAME_UPPER"),
    "same_upper_odd": dict(kernel=3, pads=None, auto_pad="SAME_UPPER"),
    "same_lower_odd": dict(kernel=3, pads=None, auto_pad="SAME_LOWER"),
    "valid": dict(pads=None, auto_pad="VALID"),
    "output_shape_odd": dict(pads=None, output_shape=(11, 13)),
    "output_shape_small": dict(pads=None, output_shape=(9, 11)),
    "pads_beyond_kernel": dict(kernel=3, pads=5, spatial=(6, 7)),
    "large_asymmetric_pads": dict(kernel=5, strides=3, pads=(0, 6, 4, 1)),
    "kernel1_stride2": dict(kernel=1, pads=0),
    "no_bias": dict(bias=False),
    "no_activation": dict(activation=None),
    "leaky_relu": dict(activation="LeakyRelu"),
    "tanh": dict(activation="Tanh"),
    "sigmoid_stride3": dict(activation="Sigmoid", strides=3, kernel=5, pads=1),
    "one_by_one_input": dict(spatial=(1, 1)),
    "1d": dict(spatial=(7,), kernel=4, pads=1),
    "1d_stride3": dict(spatial=(7,), kernel=5, strides=3, pads=2, output_padding=1),
    "3d": dict(spatial=(3, 4, 2), kernel=3, pads=1, output_padding=1, c_in=3, c_out=4),
}


@pytest.mark.parametrize("layout", ["fused", "phases"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_configurations(name, layout):
    model = convtranspose_model(**CASES[name])
    new, report = to_conv(model, layout=layout)
    assert report["left_alone"] == [] and len(report["rewritten"]) == 1
    assert "ConvTranspose" not in ops(new)
    assert_same_contract(model, new)
    assert_equivalent(model, new)


@pytest.mark.parametrize("mode", ["DCR", "reshape"])
@pytest.mark.parametrize("name", ["group2", "nonsquare_kernel_strides_pads", "same_lower_odd", "no_activation"])
def test_interleave_modes(name, mode):
    model = convtranspose_model(**CASES[name])
    new, report = to_conv(model, depth_to_space=mode)
    assert report["left_alone"] == []
    assert_same_contract(model, new)
    assert_equivalent(model, new)


def test_dcgan_layer_is_one_2x2_conv_one_depth_to_space_one_slice():
    """4/2/1 (the DCGAN upsampling layer): 4 phases x 2x2 taps, the fewest MACs of any single-Conv form."""
    model = convtranspose_model(kernel=4, strides=2, pads=1, spatial=(8, 8))
    new, report = to_conv(model)
    assert ops(new) == ["Conv", "Relu", "DepthToSpace", "Slice"]
    conv = new.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["kernel_shape"] == [2, 2]
    weight = next(i for i in new.graph.initializer if i.name == conv.input[1])
    assert list(weight.dims) == [6 * 4, 4, 2, 2]  # 4 phases x C_out, C_in, 2x2
    d2s = new.graph.node[2]
    assert {a.name: helper.get_attribute_value(a) for a in d2s.attribute}["mode"] == b"CRD"
    # taps computed per output pixel vs the ConvTranspose's 16 taps per input pixel (= 4 per output pixel)
    assert report["rewritten"][0]["work_vs_convtranspose"] == pytest.approx((9 * 9) / (8 * 8), abs=1e-3)
    assert_equivalent(model, new)


def test_phases_layout_does_no_extra_work_for_the_dcgan_layer():
    model = convtranspose_model(kernel=4, strides=2, pads=1, spatial=(8, 8))
    new, report = to_conv(model, layout="phases")
    assert ops(new).count("Conv") == 4 and "Slice" not in ops(new)
    assert report["rewritten"][0]["work_vs_convtranspose"] == pytest.approx(1.0)
    assert_equivalent(model, new)


def test_stride1_is_a_plain_conv():
    model = convtranspose_model(kernel=3, strides=1, pads=1)
    new, _ = to_conv(model)
    assert ops(new) == ["Conv", "Relu"]
    assert_equivalent(model, new)


def test_activation_moves_next_to_the_conv():
    model = convtranspose_model(activation="LeakyRelu")
    new, report = to_conv(model)
    assert ops(new)[:2] == ["Conv", "LeakyRelu"]
    leaky = new.graph.node[1]
    assert helper.get_attribute_value(leaky.attribute[0]) == pytest.approx(0.2)
    assert report["rewritten"][0]["hoisted"] == "LeakyRelu"
    new2, _ = to_conv(model, hoist_activations=False)
    assert ops(new2)[-1] == "LeakyRelu"
    assert_equivalent(model, new)
    assert_equivalent(model, new2)


def test_activation_stays_when_the_convtranspose_output_is_also_a_graph_output():
    model = convtranspose_model()
    model.graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6, None, None]))
    new, _ = to_conv(model)
    assert ops(new)[-1] == "Relu"
    assert_same_contract(model, new)
    assert_equivalent(model, new)


def test_dynamic_spatial_size():
    model = convtranspose_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    new, report = to_conv(model)
    assert report["left_alone"] == []
    assert_same_contract(model, new)

    def feeds(batch):
        return {"x": np.random.default_rng(batch).standard_normal((batch, 4, 3 + batch % 5, 7)).astype(np.float32)}

    assert_equivalent(model, new, batches=(1, 2, 64), feeds=feeds)
    # reshape interleave needs all but one spatial size static
    _, report = to_conv(model, depth_to_space="reshape")
    assert report["rewritten"] == [] and "static" in report["left_alone"][0]["reason"]


@pytest.mark.parametrize(
    "case, reason",
    [
        (dict(weight_as_input=True), "weight is not a constant"),
        (dict(kernel=2, strides=3, pads=None, auto_pad="SAME_UPPER"), "negative total padding"),
        (dict(opset=10), "opset"),
    ],
)
def test_left_alone_with_a_reason(case, reason):
    model = convtranspose_model(**case)
    new, report = to_conv(model)
    assert report["rewritten"] == []
    assert reason in report["left_alone"][0]["reason"]
    assert ops(new) == ops(model)


def test_deterministic_and_idempotent():
    model = convtranspose_model(group=2, kernel=(3, 5), strides=(2, 3), pads=(1, 2, 0, 1))
    a, _ = to_conv(model)
    b, _ = to_conv(model)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    again, report = to_conv(a)
    assert report["rewritten"] == [] and ops(again) == ops(a)


def test_replaced_weights_are_dropped_shared_ones_kept():
    model = convtranspose_model()
    new, _ = to_conv(model)
    assert "w" not in {i.name for i in new.graph.initializer}
    shared = convtranspose_model(activation=None)
    shared.graph.node.append(helper.make_node("ConvTranspose", ["x", "w"], ["other"], kernel_shape=[4, 4]))
    shared.graph.output.append(helper.make_tensor_value_info("other", onnx.TensorProto.FLOAT, ["N", 6, None, None]))
    new, report = to_conv(shared)
    assert len(report["rewritten"]) == 2
    assert_equivalent(shared, new)


# ---- ConvTranspose on 1x1 input -> Flatten + Gemm + Reshape -----------------------------------

GEMM_CASES = {
    "latent_projection": dict(kernel=4, strides=1, pads=0),
    "stride2_pad1": dict(kernel=4, strides=2, pads=1),
    "kernel2": dict(kernel=2, strides=1, pads=0),
    "kernel5_stride3": dict(kernel=5, strides=3, pads=1, output_padding=2),
    "groups": dict(kernel=3, strides=1, pads=0, group=2),
    "nonsquare_asymmetric": dict(kernel=(4, 3), strides=1, pads=(1, 0, 0, 1)),
    "dilation": dict(kernel=3, strides=2, pads=0, output_padding=1, dilations=2),
    "no_bias_no_activation": dict(kernel=4, strides=1, pads=0, bias=False, activation=None),
    "tanh": dict(kernel=4, strides=1, pads=0, activation="Tanh"),
    "same_upper": dict(kernel=3, strides=1, pads=None, auto_pad="SAME_UPPER"),
    "1d": dict(kernel=5, strides=2, pads=1, spatial=(1,)),
}


@pytest.mark.parametrize("name", sorted(GEMM_CASES))
def test_gemm_configurations(name):
    model = convtranspose_model(c_in=16, c_out=8, spatial=GEMM_CASES[name].pop("spatial", (1, 1)), **GEMM_CASES[name])
    p = ConvTransposeToGemmPass()
    new = apply(p, model)
    assert len(p.report["rewritten"]) == 1
    assert [op for op in ops(new) if op not in ("Relu", "Tanh")] == ["Flatten", "Gemm", "Reshape"]
    assert_same_contract(model, new)
    assert_equivalent(model, new)
    # the quantizer's hint: Gemm columns come in blocks of prod(output dims), one per channel
    gemm = next(n for n in new.graph.node if n.op_type == "Gemm")
    out_dims = p.report["rewritten"][0]["output"][1:]
    block = int(np.prod(out_dims))
    hints = {e.key: e.value for e in gemm.metadata_props}
    assert hints == ({CHANNEL_BLOCK_KEY: str(block)} if block > 1 else {})


def test_gemm_keeps_the_batch_axis_dynamic():
    model = convtranspose_model(c_in=100, c_out=32, kernel=4, strides=1, pads=0, spatial=(1, 1))
    new = apply(ConvTransposeToGemmPass(), model)
    reshape = next(n for n in new.graph.node if n.op_type == "Reshape")
    target = numpy_helper.to_array(next(i for i in new.graph.initializer if i.name == reshape.input[1]))
    assert target[0] == 0 and list(target[1:]) == [32, 4, 4]
    assert ops(new) == ["Flatten", "Gemm", "Relu", "Reshape"]  # Relu next to the Gemm
    assert_equivalent(model, new, batches=(1, 3, 64))


def test_gemm_only_for_static_1x1_input():
    model = convtranspose_model(spatial=(2, 2))
    p = ConvTransposeToGemmPass()
    assert ops(apply(p, model)) == ops(model) and p.report["rewritten"] == []
    symbolic = convtranspose_model(spatial=(1, 1))
    dims = symbolic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    assert ops(apply(p, symbolic)) == ops(symbolic)


def test_gemm_weight_growth_limit():
    model = convtranspose_model(c_in=8, c_out=8, kernel=3, strides=1, pads=0, group=8, spatial=(1, 1))
    p = ConvTransposeToGemmPass(ConvTransposeToGemmPass.Options(max_weight_growth=4))
    new = apply(p, model)
    assert p.report["rewritten"] == [] and "max_weight_growth" in p.report["left_alone"][0]["reason"]
    assert ops(new) == ops(model)
