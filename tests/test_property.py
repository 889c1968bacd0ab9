"""Property-based: random small generator graphs and random options for prune and quantize (issue 11).

hypothesis draws a graph (a latent or image input; a chain of Conv / ConvTranspose / Gemm layers
with random kernels, strides and paddings, BatchNorm, InstanceNorm, activations, nearest
upsampling, residual Adds, some weights zero) and the options of a verb. Whatever the draw, the
verb either writes a model onnxruntime runs, with the input's output shapes and finite outputs,
or raises ``GencompressError`` with a one-line message; never another exception. The input file
is byte-identical afterwards and nothing is left beside the output. Derandomized: the same
examples on every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

from gencompress.errors import GencompressError  # noqa: E402

SETTINGS = hypothesis.settings(max_examples=30, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))


@st.composite
def generator_graphs(draw) -> onnx.ModelProto:
    """A small random generator: input -> layers -> output, shapes static but for the batch."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inits, nodes = [], []
    counter = iter(range(1000))

    def name(base):
        return f"{base}{next(counter)}"

    def weight(shape, zero_fraction):
        w = (rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[1:]))))).astype(np.float32)
        w[rng.random(shape) < zero_fraction] = 0
        n = name("w")
        inits.append(numpy_helper.from_array(w, n))
        return n

    latent = draw(st.booleans())
    c, h = (draw(st.integers(2, 8)), 1) if latent else (draw(st.integers(1, 4)), draw(st.sampled_from([4, 6, 8])))
    x = "x"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c] if latent else ["N", c, h, h])]
    if latent:  # Gemm -> Reshape to an image
        c2 = draw(st.integers(2, 8))
        nodes.append(helper.make_node("Gemm", [x, weight((c, c2 * 16), 0.0)], [n := name("g")], transB=0))
        shape = name("shape")
        inits.append(numpy_helper.from_array(np.array([-1, c2, 4, 4], np.int64), shape))
        nodes.append(helper.make_node("Reshape", [n, shape], [x := name("r")]))
        c, h = c2, 4
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "convtranspose", "upsample", "norm", "act", "residual"]))
        zeros = draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]))
        if kind == "conv":
            out, k = draw(st.integers(1, 8)), draw(st.sampled_from([1, 3, 5, 9]))
            stride = draw(st.sampled_from([1, 1, 2])) if h >= 4 else 1
            pad = (k - 1) // 2
            nodes.append(helper.make_node("Conv", [x, weight((out, c, k, k), zeros)], [y := name("c")], pads=[pad] * 4, strides=[stride] * 2))
            c, h = out, (h + 2 * pad - k) // stride + 1
        elif kind == "convtranspose" and h <= 16:
            out, k, stride = draw(st.integers(1, 8)), draw(st.sampled_from([2, 3, 4])), draw(st.sampled_from([1, 2]))
            pad = draw(st.integers(0, (k - 1) // 2))
            nodes.append(helper.make_node("ConvTranspose", [x, weight((c, out, k, k), zeros)], [y := name("t")], pads=[pad] * 4, strides=[stride] * 2))
            c, h = out, (h - 1) * stride - 2 * pad + k
        elif kind == "upsample" and h <= 16:
            scales = name("scales")
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), scales))
            nodes.append(helper.make_node("Resize", [x, "", scales], [y := name("u")], mode="nearest"))
            h *= 2
        elif kind == "norm":
            params = [name("p") for _ in range(4)]
            values = [1 + 0.1 * rng.standard_normal(c), 0.1 * rng.standard_normal(c), 0.1 * rng.standard_normal(c), 1 + rng.random(c)]
            inits.extend(numpy_helper.from_array(v.astype(np.float32), p) for p, v in zip(params, values))
            if draw(st.booleans()):
                nodes.append(helper.make_node("BatchNormalization", [x, *params], [y := name("bn")]))
            else:
                nodes.append(helper.make_node("InstanceNormalization", [x, *params[:2]], [y := name("in")]))
        elif kind == "residual":
            nodes.append(helper.make_node("Conv", [x, weight((c, c, 3, 3), zeros)], [r := name("c")], pads=[1] * 4))
            nodes.append(helper.make_node("Add", [x, r], [y := name("add")]))
        else:
            op = draw(st.sampled_from(["Relu", "LeakyRelu", "Tanh", "Sigmoid"]))
            nodes.append(helper.make_node(op, [x], [y := name("a")]))
        x = y
    nodes.append(helper.make_node("Tanh", [x], ["out"]))
    graph = helper.make_graph(nodes, "random", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_outcome(tmp_path: Path, model: onnx.ModelProto, run) -> None:
    """Run the verb (``run(src, out)``) and assert the property of the module docstring."""
    folder = tmp_path / hashlib.sha1(model.SerializeToString()).hexdigest()[:12]
    folder.mkdir(exist_ok=True)
    src, out = folder / "in.onnx", folder / "out.onnx"
    onnx.save(model, src)
    before = digest(src)
    try:
        run(src, out)
    except GencompressError as e:
        assert "\n" not in str(e).strip() and str(e).strip(), repr(e)
        assert not out.exists()
    else:
        x = np.random.default_rng(1).standard_normal([2, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]).astype(np.float32)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        want = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        got = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert got.shape == want.shape and np.isfinite(got).all()
    assert digest(src) == before
    assert sorted(p.name for p in folder.iterdir()) in (["in.onnx"], ["in.onnx", "out.onnx"])


@SETTINGS
@hypothesis.given(model=generator_graphs(), options=st.fixed_dictionaries({
    "mode": st.sampled_from(["static", "static", "weight-only", "fp16"]),
    "bits": st.sampled_from([4, 8]),
    "per_tensor": st.booleans(),
    "activations": st.sampled_from(["uint8", "int8"]),
    "calib": st.sampled_from(["minmax", "percentile", "entropy", "mse"]),
}))
def test_quantize_random_graphs(tmp_path_factory, model, options):
    from gencompress.verbs.quantize import quantize

    if options["mode"] != "weight-only":
        options["bits"] = 8
    if options["mode"] == "static":
        options["calib_size"] = 16
    else:  # calibration options are refused outside static mode (tested in test_quantize_cli)
        for key in ("per_tensor", "activations", "calib"):
            options.pop(key)
    check_outcome(tmp_path_factory.mktemp("q"), model, lambda src, out: quantize(src, out, objective="size", eval_size=8, check=False, **options))


@SETTINGS
@hypothesis.given(model=generator_graphs(), options=st.fixed_dictionaries({
    "sparsity": st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99]),
    "mode": st.sampled_from(["unstructured", "channel", "nm"]),
    "min_size": st.sampled_from([0, 16]),
}))
def test_prune_random_graphs(tmp_path_factory, model, options):
    from gencompress.verbs.prune import prune

    if options["mode"] == "nm":
        options.pop("sparsity")
    check_outcome(tmp_path_factory.mktemp("p"), model, lambda src, out: prune(src, out, **options))
