"""fold_batchnorm on hand-built graphs: BatchNormalization gone, outputs unchanged in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from gencompress.passes.fold_batchnorm import FoldBatchNormPass

TOL = 1e-5
F = onnx.TensorProto.FLOAT


def bn_initializers(prefix: str, channels: int, rng) -> list:
    return [
        numpy_helper.from_array((1 + 0.3 * rng.standard_normal(channels)).astype(np.float32), f"{prefix}.scale"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"{prefix}.bias"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"{prefix}.mean"),
        numpy_helper.from_array((0.5 + rng.random(channels)).astype(np.float32), f"{prefix}.var"),
    ]


def bn_node(x: str, out: str, prefix: str = "bn", **attrs):
    names = [x] + [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", names, [out], name=prefix, **attrs)


def model_of(nodes, inputs, outputs, inits, opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)])
    model.metadata_props.add(key="gencompress.source", value="hand-built")
    return model


def conv_bn_model(op="Conv", group=1, bias=True, activation=True, seed=0):
    rng = np.random.default_rng(seed)
    c_in, c_out = 4, 6
    shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 4, 4)
    w = (rng.standard_normal(shape) / 6).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), *bn_initializers("bn", c_out, rng)]
    names = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        names.append("b")
    attrs = {"group": group, "pads": [1, 1, 1, 1]}
    if op == "ConvTranspose":
        attrs["strides"] = [2, 2]
    nodes = [helper.make_node(op, names, ["y"], name="layer", **attrs), bn_node("y", "z" if activation else "out", epsilon=1e-3)]
    if activation:
        nodes.append(helper.make_node("Relu", ["z"], ["out"]))
    return model_of(
        nodes,
        [helper.make_tensor_value_info("x", F, ["N", c_in, 5, 5])],
        [helper.make_tensor_value_info("out", F, ["N", c_out, None, None])],
        inits,
    )


def dense_bn_model(kind: str, seed=0):
    rng = np.random.default_rng(seed)
    k, n = 5, 6
    inits = bn_initializers("bn", n, rng)
    if kind == "MatMul":
        inits.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w"))
        layer = helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")
    elif kind == "Gemm":
        inits += [
            numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((1, n)).astype(np.float32), "c"),
        ]
        layer = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="layer", alpha=0.5, beta=2.0)
    else:  # Gemm with transB and a scalar C
        inits += [
            numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(0.7, np.float32), "c"),
        ]
        layer = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="layer", transB=1, alpha=1.5)
    return model_of(
        [layer, bn_node("y", "out")],
        [helper.make_tensor_value_info("x", F, ["N", k])],
        [helper.make_tensor_value_info("out", F, ["N", n])],
        inits,
    )


def run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def fold(model):
    p = FoldBatchNormPass()
    ir_model = ir.serde.deserialize_model(model)
    result = p(ir_model)
    return ir.serde.serialize_model(result.model), p.report


def assert_equivalent(a, b, batches=(1, 64)):
    for batch in batches:
        rng = np.random.default_rng(batch)
        feeds = {}
        for value in a.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
        for x, y in zip(run(a, feeds), run(b, feeds)):
            assert x.shape == y.shape
            assert np.max(np.abs(x - y)) <= TOL


def assert_contract(original, new):
    onnx.checker.check_model(new, full_check=True)
    assert list(new.graph.input) == list(original.graph.input)
    assert list(new.graph.output) == list(original.graph.output)
    assert {p.key: p.value for p in new.metadata_props} == {p.key: p.value for p in original.metadata_props}


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_folds_into_conv_and_convtranspose(op, group, bias):
    model = conv_bn_model(op, group, bias)
    new, report = fold(model)
    assert [n.op_type for n in new.graph.node] == [op, "Relu"]
    assert len(report["folded"]) == 1 and report["folded"][0]["op"] == op
    assert_contract(model, new)
    assert_equivalent(model, new)


@pytest.mark.parametrize("kind", ["Gemm", "GemmTransB", "MatMul"])
def test_folds_into_gemm_and_matmul(kind):
    model = dense_bn_model(kind)
    new, report = fold(model)
    assert [n.op_type for n in new.graph.node] == ["Gemm"]
    assert len(report["folded"]) == 1
    assert_contract(model, new)
    assert_equivalent(model, new)


def test_bn_output_that_is_a_graph_output_keeps_its_name():
    model = conv_bn_model(activation=False)
    new, _ = fold(model)
    assert [n.op_type for n in new.graph.node] == ["Conv"]
    assert new.graph.node[0].output[0] == "out"
    assert_contract(model, new)
    assert_equivalent(model, new)


def test_not_folded_when_the_conv_output_has_another_consumer():
    model = conv_bn_model()
    model.graph.node.append(helper.make_node("Sigmoid", ["y"], ["side"]))
    model.graph.output.append(helper.make_tensor_value_info("side", F, ["N", 6, None, None]))
    new, report = fold(model)
    assert "BatchNormalization" in [n.op_type for n in new.graph.node]
    assert report["folded"] == [] and "other consumers" in report["left_alone"][0]["reason"]
    assert_equivalent(model, new)


def test_not_folded_when_parameters_are_inputs():
    model = conv_bn_model()
    scale = next(i for i in model.graph.initializer if i.name == "bn.scale")
    model.graph.input.append(helper.make_tensor_value_info("bn.scale", F, list(scale.dims)))  # overridable
    new, report = fold(model)
    assert report["folded"] == [] and "not constants" in report["left_alone"][0]["reason"]


def test_parameters_behind_identity_and_constant_nodes_fold():
    """The TorchScript exporter routes some BatchNorm parameters through Identity nodes."""
    model = conv_bn_model()
    inits = {i.name: i for i in model.graph.initializer}
    mean = inits.pop("bn.mean")
    var = inits.pop("bn.var")
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits.values())
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(mean), "mean_src"))
    model.graph.node.insert(0, helper.make_node("Identity", ["mean_src"], ["bn.mean"]))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["bn.var"], value=var))
    new, report = fold(model)
    assert len(report["folded"]) == 1
    assert "BatchNormalization" not in [n.op_type for n in new.graph.node]
    assert_equivalent(model, new)


def test_shared_weight_is_not_changed_in_place():
    """Two Convs share one weight, each with its own BatchNorm: both fold, each with its own scaling."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 4, 3, 3)) / 6).astype(np.float32), "w")]
    inits += bn_initializers("bn1", 6, rng) + bn_initializers("bn2", 6, rng)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w"], ["y2"], pads=[1, 1, 1, 1]),
        bn_node("y1", "o1", "bn1"),
        bn_node("y2", "o2", "bn2"),
    ]
    model = model_of(
        nodes,
        [helper.make_tensor_value_info("x", F, ["N", 4, 5, 5])],
        [helper.make_tensor_value_info(o, F, ["N", 6, 5, 5]) for o in ("o1", "o2")],
        inits,
    )
    new, report = fold(model)
    assert len(report["folded"]) == 2
    assert_contract(model, new)
    assert_equivalent(model, new)


def test_matmul_with_unknown_input_rank_is_left_alone():
    model = dense_bn_model("MatMul")
    model.graph.input[0].type.tensor_type.ClearField("shape")
    new, report = fold(model)
    assert report["folded"] == [] and "rank" in report["left_alone"][0]["reason"]
    assert "BatchNormalization" in [n.op_type for n in new.graph.node]


def test_deterministic():
    model = conv_bn_model("ConvTranspose", group=2)
    a, _ = fold(model)
    b, _ = fold(model)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def conv_mul_model(op: str, const: np.ndarray, const_first: bool = False):
    """layer -> Mul(constant) -> Relu, the residual scaling of super-resolution nets."""
    rng = np.random.default_rng(3)
    c_in, c_out = 4, 6
    shape = (c_out, c_in, 3, 3) if op == "Conv" else (c_in, c_out, 4, 4)
    attrs = {"pads": [1, 1, 1, 1], **({"strides": [2, 2]} if op == "ConvTranspose" else {})}
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 6).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"),
             numpy_helper.from_array(const.astype(np.float32), "scale")]
    nodes = [helper.make_node(op, ["x", "w", "b"], ["y"], name="layer", **attrs),
             helper.make_node("Mul", ["scale", "y"] if const_first else ["y", "scale"], ["z"], name="mul"),
             helper.make_node("Relu", ["z"], ["out"])]
    return model_of(nodes, [helper.make_tensor_value_info("x", F, ["N", c_in, 5, 5])],
                    [helper.make_tensor_value_info("out", F, ["N", c_out, None, None])], inits)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("const,const_first", [
    (np.array(0.2), False),  # scalar
    (np.array([0.2]), True),  # one element, constant first
    (np.linspace(0.5, 2, 6).reshape(6, 1, 1), False),  # per channel
    (np.linspace(0.5, 2, 6).reshape(1, 6, 1, 1), True),
])
def test_constant_mul_folds_into_the_layer(op, const, const_first):
    model = conv_mul_model(op, const, const_first)
    new, report = fold(model)
    assert [n.op_type for n in new.graph.node] == [op, "Relu"]
    assert report["folded"][0]["op_type"] == "Mul"
    assert_contract(model, new)
    assert_equivalent(model, new)


@pytest.mark.parametrize("const", [np.linspace(0.5, 2, 5).reshape(1, 1, 1, 5), np.ones((2, 6, 1, 1))])
def test_mul_that_is_not_per_channel_is_left_alone(const):
    """Along the width, or along the batch: not one value per output channel."""
    model = conv_mul_model("Conv", const)
    new, report = fold(model)
    assert [n.op_type for n in new.graph.node] == ["Conv", "Mul", "Relu"]
    assert report["left_alone"] and report["left_alone"][0]["op_type"] == "Mul"
