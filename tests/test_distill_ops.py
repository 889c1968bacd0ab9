"""The distillation mirror op by op: every op it runs for the generator families equals onnxruntime
(float, <= 1e-5 of the output's peak), gradients reach the float inputs, and the family graphs as
the exporter writes them run whole. An op it lacks is refused in one line before any training.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
_NP = {F32: np.float32, I64: np.int64, BOOL: np.bool_}


def _x(*shape, positive=False, seed=0):
    v = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(v) + 0.1 if positive else v


def _i(*values):
    return np.array(values, np.int64)


def _f(*values):
    return np.array(values, np.float32)


# (id, op, graph inputs {name: array}, constant inputs {name: array}, input order ("" = absent), attrs, opset, outputs)
CASES = [
    # Resize: every coordinate transformation and rounding the exporters write, up and down
    ("resize-nearest-asymmetric-floor", "Resize", {"x": _x(2, 3, 4, 5)}, {"s": _f(1, 1, 2, 2)}, ["x", "", "s"],
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 17, 1),
    ("resize-nearest-half-pixel-sizes-down", "Resize", {"x": _x(1, 2, 7, 9)}, {"n": _i(1, 2, 3, 4)}, ["x", "", "", "n"],
     {"mode": "nearest"}, 17, 1),
    ("resize-nearest-half-pixel-sizes-up", "Resize", {"x": _x(1, 2, 5, 4)}, {"n": _i(1, 2, 11, 7)}, ["x", "", "", "n"],
     {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, 17, 1),
    ("resize-nearest-ceil-align", "Resize", {"x": _x(1, 2, 5, 4)}, {"n": _i(1, 2, 9, 6)}, ["x", "", "", "n"],
     {"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "align_corners"}, 17, 1),
    ("resize-nearest-scale-1.5", "Resize", {"x": _x(1, 2, 6, 4)}, {"s": _f(1, 1, 1.5, 1.5)}, ["x", "", "s"],
     {"mode": "nearest", "coordinate_transformation_mode": "pytorch_half_pixel"}, 17, 1),
    ("resize-linear-half-pixel", "Resize", {"x": _x(2, 3, 4, 5)}, {"s": _f(1, 1, 2, 2)}, ["x", "", "s"], {"mode": "linear"}, 17, 1),
    ("resize-linear-align-corners", "Resize", {"x": _x(1, 2, 4, 5)}, {"n": _i(1, 2, 7, 11)}, ["x", "", "", "n"],
     {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 17, 1),
    ("resize-linear-pytorch-half-pixel-down", "Resize", {"x": _x(1, 2, 8, 9)}, {"n": _i(1, 2, 3, 1)}, ["x", "", "", "n"],
     {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, 17, 1),
    ("resize-linear-asymmetric", "Resize", {"x": _x(1, 2, 4, 4)}, {"s": _f(1, 1, 3, 2)}, ["x", "", "s"],
     {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, 17, 1),
    ("resize-linear-half-pixel-symmetric", "Resize", {"x": _x(1, 2, 5, 4)}, {"s": _f(1, 1, 2.5, 1.5)}, ["x", "", "s"],
     {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}, 19, 1),
    ("resize-cubic", "Resize", {"x": _x(1, 2, 5, 6)}, {"s": _f(1, 1, 2, 2)}, ["x", "", "s"], {"mode": "cubic"}, 17, 1),
    ("resize-cubic-exclude-outside", "Resize", {"x": _x(1, 2, 6, 5)}, {"n": _i(1, 2, 4, 9)}, ["x", "", "", "n"],
     {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, 17, 1),
    ("resize-axes", "Resize", {"x": _x(1, 2, 4, 5)}, {"s": _f(2, 3)}, ["x", "", "s"], {"mode": "nearest", "axes": [2, 3]}, 18, 1),
    ("resize-3d-linear", "Resize", {"x": _x(1, 2, 7)}, {"s": _f(1, 1, 2)}, ["x", "", "s"], {"mode": "linear"}, 17, 1),
    # Pad: reflection (CycleGAN), edge, wrap, constant, cropping, axes, the attribute form
    ("pad-reflect", "Pad", {"x": _x(2, 3, 5, 6)}, {"p": _i(0, 0, 2, 1, 0, 0, 1, 3)}, ["x", "p"], {"mode": "reflect"}, 17, 1),
    ("pad-edge", "Pad", {"x": _x(2, 3, 5, 6)}, {"p": _i(0, 1, 2, 1, 0, 0, 1, 3)}, ["x", "p"], {"mode": "edge"}, 17, 1),
    ("pad-wrap", "Pad", {"x": _x(1, 3, 4, 5)}, {"p": _i(0, 0, 2, 1, 0, 0, 3, 2)}, ["x", "p"], {"mode": "wrap"}, 19, 1),
    ("pad-constant-value", "Pad", {"x": _x(2, 3, 4)}, {"p": _i(1, 0, 2, 0, 2, 1), "v": _f(0.5)}, ["x", "p", "v"], {}, 17, 1),
    ("pad-negative", "Pad", {"x": _x(1, 2, 6, 6)}, {"p": _i(0, 0, -1, 2, 0, 0, 1, -2)}, ["x", "p"], {"mode": "reflect"}, 17, 1),
    ("pad-axes", "Pad", {"x": _x(1, 2, 4, 5)}, {"p": _i(1, 2, 2, 1), "a": _i(-1, 2)}, ["x", "p", "", "a"], {"mode": "reflect"}, 18, 1),
    ("pad-attribute-form", "Pad", {"x": _x(1, 2, 4, 5)}, {}, ["x"], {"mode": "edge", "pads": [0, 0, 1, 2, 0, 0, 2, 1]}, 10, 1),
    # LSTM: biases and initial states, bidirectional, peepholes, batch-first layout
    ("lstm", "LSTM", {"x": _x(5, 2, 3), "h": _x(1, 2, 4, seed=1), "c": _x(1, 2, 4, seed=2)},
     {"w": _x(1, 16, 3, seed=3), "r": _x(1, 16, 4, seed=4), "b": _x(1, 32, seed=5)}, ["x", "w", "r", "b", "", "h", "c"], {"hidden_size": 4}, 17, 3),
    ("lstm-bidirectional-peepholes", "LSTM", {"x": _x(4, 2, 3)},
     {"w": _x(2, 16, 3, seed=3), "r": _x(2, 16, 4, seed=4), "b": _x(2, 32, seed=5), "p": _x(2, 12, seed=6)},
     ["x", "w", "r", "b", "", "", "", "p"], {"hidden_size": 4, "direction": "bidirectional"}, 17, 3),
    ("lstm-reverse", "LSTM", {"x": _x(5, 2, 3)}, {"w": _x(1, 16, 3, seed=3), "r": _x(1, 16, 4, seed=4)}, ["x", "w", "r"],
     {"hidden_size": 4, "direction": "reverse"}, 17, 3),
    # reductions (axes as input from opset 13 for ReduceSum, 18 for the others)
    ("reducesum", "ReduceSum", {"x": _x(2, 3, 4, 5)}, {"a": _i(2, -1)}, ["x", "a"], {"keepdims": 1}, 17, 1),
    ("reducesum-all-no-keepdims", "ReduceSum", {"x": _x(2, 3, 4)}, {}, ["x"], {"keepdims": 0}, 17, 1),
    ("reducesum-noop", "ReduceSum", {"x": _x(2, 3)}, {}, ["x"], {"noop_with_empty_axes": 1}, 17, 1),
    ("reducemean-attribute", "ReduceMean", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [1], "keepdims": 0}, 17, 1),
    ("reducemean-input", "ReduceMean", {"x": _x(2, 3, 4)}, {"a": _i(0, 2)}, ["x", "a"], {}, 18, 1),
    ("reducemax", "ReduceMax", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [1]}, 17, 1),
    ("reducemin", "ReduceMin", {"x": _x(2, 3, 4)}, {"a": _i(2)}, ["x", "a"], {}, 18, 1),
    ("reduceprod", "ReduceProd", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [0, 2]}, 17, 1),
    ("reducesumsquare", "ReduceSumSquare", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [2]}, 17, 1),
    ("reducel1", "ReduceL1", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [2]}, 17, 1),
    ("reducel2", "ReduceL2", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [1, 2]}, 17, 1),
    ("reducelogsumexp", "ReduceLogSumExp", {"x": _x(2, 3, 4)}, {}, ["x"], {"axes": [1]}, 17, 1),
    ("reducelogsum", "ReduceLogSum", {"x": _x(2, 3, 4, positive=True)}, {}, ["x"], {"axes": [1]}, 17, 1),
    # elementwise math (time embeddings, masks, activations)
    *[(op.lower(), op, {"x": _x(3, 7, positive=op in ("Sqrt",))}, {}, ["x"], {}, 17, 1)
      for op in ("Sin", "Cos", "Tan", "Atan", "Floor", "Ceil", "Round", "Sign", "Softsign", "HardSwish", "Erf", "Sqrt", "Celu")],
    ("mish", "Mish", {"x": _x(3, 7)}, {}, ["x"], {}, 18, 1),
    ("thresholdedrelu", "ThresholdedRelu", {"x": _x(3, 7)}, {}, ["x"], {"alpha": 0.3}, 17, 1),
    ("pow", "Pow", {"x": _x(3, 7, positive=True)}, {"e": _f(2.5)}, ["x", "e"], {}, 17, 1),
    ("where", "Where", {"x": _x(3, 7), "y": _x(3, 7, seed=1)}, {"m": np.arange(21).reshape(3, 7) % 3 == 0}, ["m", "x", "y"], {}, 17, 1),
    ("max", "Max", {"x": _x(3, 7), "y": _x(1, 7, seed=1)}, {}, ["x", "y"], {}, 17, 1),
    ("min", "Min", {"x": _x(3, 7), "y": _x(3, 7, seed=1), "z": _x(3, 1, seed=2)}, {}, ["x", "y", "z"], {}, 17, 1),
    ("sum", "Sum", {"x": _x(3, 7), "y": _x(3, 7, seed=1)}, {}, ["x", "y"], {}, 17, 1),
    ("mean", "Mean", {"x": _x(3, 7), "y": _x(3, 7, seed=1)}, {}, ["x", "y"], {}, 17, 1),
    ("mod-fmod", "Mod", {"x": _x(3, 7)}, {"d": _f(0.7)}, ["x", "d"], {"fmod": 1}, 17, 1),
    ("logsoftmax", "LogSoftmax", {"x": _x(3, 7)}, {}, ["x"], {"axis": 0}, 17, 1),
    ("dropout", "Dropout", {"x": _x(3, 7)}, {}, ["x"], {}, 17, 1),
    ("einsum", "Einsum", {"x": _x(2, 3, 4), "y": _x(2, 4, 5, seed=1)}, {}, ["x", "y"], {"equation": "bij,bjk->bik"}, 17, 1),
    ("trilu", "Trilu", {"x": _x(2, 5, 5)}, {"k": _i(1)}, ["x", "k"], {"upper": 0}, 17, 1),
    ("cumsum-exclusive-reverse", "CumSum", {"x": _x(3, 6)}, {"a": _i(1)}, ["x", "a"], {"exclusive": 1, "reverse": 1}, 17, 1),
    ("gatherelements", "GatherElements", {"x": _x(3, 4)}, {"i": _i(0, -1, 2, 1, 0, 3).reshape(3, 2)}, ["x", "i"], {"axis": 1}, 17, 1),
    ("spacetodepth", "SpaceToDepth", {"x": _x(2, 3, 4, 6)}, {}, ["x"], {"blocksize": 2}, 17, 1),
    ("globalaveragepool", "GlobalAveragePool", {"x": _x(2, 3, 4, 5)}, {}, ["x"], {}, 17, 1),
    ("globalmaxpool", "GlobalMaxPool", {"x": _x(2, 3, 4, 5)}, {}, ["x"], {}, 17, 1),
    ("averagepool", "AveragePool", {"x": _x(2, 3, 7, 6)}, {}, ["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 17, 1),
    ("averagepool-include-pad-asymmetric", "AveragePool", {"x": _x(2, 3, 6, 6)}, {}, ["x"],
     {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1], "count_include_pad": 1}, 17, 1),
    ("maxpool", "MaxPool", {"x": _x(2, 3, 7, 6)}, {}, ["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 17, 1),
    ("maxpool-asymmetric-pads", "MaxPool", {"x": _x(2, 3, 7, 6)}, {}, ["x"], {"kernel_shape": [2, 3], "pads": [1, 0, 0, 2]}, 17, 1),
    ("castlike", "CastLike", {"x": _x(3, 4)}, {"t": _f(0)}, ["x", "t"], {}, 17, 1),
]
# integer and boolean ops: exact
INT_CASES = [
    ("equal", "Equal", {"a": _i(1, 2, 3, 4)}, {"b": _i(1, 0, 3, 0)}, ["a", "b"], {}, 17, 1),
    ("less", "Less", {"a": _x(3, 4)}, {"b": _f(0.1)}, ["a", "b"], {}, 17, 1),
    ("lessorequal", "LessOrEqual", {"a": _i(1, 2, 3, 4)}, {"b": _i(2)}, ["a", "b"], {}, 17, 1),
    ("greater", "Greater", {"a": _x(3, 4)}, {"b": _f(0.1)}, ["a", "b"], {}, 17, 1),
    ("greaterorequal", "GreaterOrEqual", {"a": _i(1, 2, 3, 4)}, {"b": _i(2)}, ["a", "b"], {}, 17, 1),
    ("not", "Not", {"a": np.array([True, False, True])}, {}, ["a"], {}, 17, 1),
    ("and", "And", {"a": np.array([True, False, True])}, {"b": np.array([True, True, False])}, ["a", "b"], {}, 17, 1),
    ("or", "Or", {"a": np.array([True, False, False])}, {"b": np.array([False, False, True])}, ["a", "b"], {}, 17, 1),
    ("xor", "Xor", {"a": np.array([True, False, True])}, {"b": np.array([True, True, False])}, ["a", "b"], {}, 17, 1),
    ("mod-int", "Mod", {"a": _i(-7, -3, 4, 9)}, {"b": _i(3, 2, -3, 4)}, ["a", "b"], {}, 17, 1),
    ("range", "Range", {"a": _i(2)}, {"b": _i(11), "c": _i(3)}, ["a", "b", "c"], {}, 17, 1),
    ("size", "Size", {"a": _x(3, 4)}, {}, ["a"], {}, 17, 1),
]


def _tensor_type(arr):
    return {np.dtype(np.float32): F32, np.dtype(np.int64): I64, np.dtype(np.bool_): BOOL}[arr.dtype]


def _model(op, feeds, consts, order, attrs, opset, n_out):
    outputs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, order, outputs, name=f"{op.lower()}_node", **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, _tensor_type(a), a.shape) for n, a in feeds.items()],
        [onnx.ValueInfoProto(name=o) for o in outputs],  # typed by shape inference below
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _run_both(case):
    import onnx_ir as ir
    import onnxruntime as ort
    import torch

    from gencompress.distillation.mirror import Mirror

    _, op, feeds, consts, order, attrs, opset, n_out = case
    proto = _model(op, feeds, consts, order, attrs, opset, n_out)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    mirror = Mirror(ir.serde.deserialize_model(proto))
    inputs = {n: torch.tensor(a, requires_grad=a.dtype == np.float32) for n, a in feeds.items()}
    got = mirror(inputs)
    return expected, got, inputs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_float_op_equals_onnxruntime_and_is_differentiable(case):
    expected, got, inputs = _run_both(case)
    for e, g in zip(expected, got):
        assert tuple(g.shape) == e.shape
        peak = max(float(np.abs(e).max()), 1e-30)
        assert float(np.abs(g.detach().numpy() - e).max()) <= 1e-5 * peak
    total = sum(g.float().sum() for g in got if g.dtype.is_floating_point)
    total.backward()
    assert all(t.grad is not None and torch_finite(t.grad) for t in inputs.values() if t.requires_grad)


def torch_finite(t) -> bool:
    return bool(t.isfinite().all())


@pytest.mark.parametrize("case", INT_CASES, ids=[c[0] for c in INT_CASES])
def test_integer_and_boolean_ops_are_exact(case):
    expected, got, _ = _run_both(case)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g.numpy(), e)
        assert g.numpy().dtype == e.dtype


# ---- whole family graphs, both exporters -------------------------------------------------------


def _family_graphs():
    from gencompress.models import conv_families
    from gencompress.models.families import FAMILIES

    return [*((name, False) for name in FAMILIES), *((name, True) for name in FAMILIES),
            *((f"conv:{name}", False) for name in conv_families.FAMILIES)]


@pytest.mark.parametrize("name,legacy", _family_graphs(), ids=lambda v: v if isinstance(v, str) else ("legacy" if v else "dynamo"))
def test_family_graph_runs_whole_and_trains_its_computed_weights(name, legacy, tmp_path):
    import onnx_ir as ir
    import torch

    from gencompress.distillation.mirror import Mirror, trainable_weights
    from gencompress.exporter.export import export
    from gencompress.exporter.families import export_family
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.models import conv_families
    from gencompress.models.families import FAMILIES
    from gencompress.runtime_check.sessions import make_session

    path = tmp_path / "m.onnx"
    if name.startswith("conv:"):
        export_family(name[5:], path, legacy=True, **conv_families.TINY[name[5:]])
    else:
        export(FAMILIES[name][0](), path, batches=(2,) if "fused" in name else (1, 3), legacy=legacy)
    proto = onnx.load(str(path))
    specs = specs_of_model(proto)
    n = 2 if name == "stylegan2_fused" else 3
    feeds = sample_inputs(specs, n, seed=1)
    expected = make_session(path).run(None, feeds)
    model = ir.serde.deserialize_model(proto)
    with torch.no_grad():
        got = Mirror(model)(feeds)
    for e, g in zip(expected, got):
        assert float(np.abs(g.numpy() - e).max()) <= 1e-5 * float(np.abs(e).max())
    # a weight computed at run time (modulated, equalized) is trained at its stored parameter
    weights = set(trainable_weights(model.graph))
    stored = {n for n, v in model.graph.initializers.items() if v.dtype == ir.DataType.FLOAT and v.const_value.size > 16}
    assert stored <= weights


def test_unsupported_op_is_refused_in_one_line_before_training(run_cli, user_error, tmp_path):
    """A node the mirror cannot run is named with its op before any work; nothing is written."""
    x = helper.make_tensor_value_info("x", F32, ["N", 4])
    y = helper.make_tensor_value_info("y", F32, ["N", 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                               helper.make_node("Hardmax", ["h"], ["y"], name="pick_one")], "g", [x], [y], [w])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    out = tmp_path / "o.onnx"
    user_error(run_cli("distill", model, model, out, "--steps", 5), "'pick_one'", "Hardmax", "not supported")
    assert not out.exists()
