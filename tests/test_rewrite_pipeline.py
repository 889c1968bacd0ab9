"""rewrite_for_int8 on the zoo models and the standard DCGAN: no ConvTranspose/BatchNorm left, outputs unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gencompress.errors import GencompressError
from gencompress.inputs import sample_inputs
from gencompress.onnx_io import load_ir, to_proto
from gencompress.passes import registry
from gencompress.verbs.recipe import run_recipe
from gencompress.passes.int8_rewrites import RewriteForInt8Pass, rewrite_for_int8

TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def _specs(name):
    from gencompress.models import ZOO

    return ZOO[name].inputs


def run(model: onnx.ModelProto, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_rewritten_equivalent(original: onnx.ModelProto, new: onnx.ModelProto, specs, batches=(1, 64)):
    onnx.checker.check_model(new, full_check=True)
    assert list(new.graph.input) == list(original.graph.input)
    assert list(new.graph.output) == list(original.graph.output)
    assert {p.key: p.value for p in new.metadata_props} == {p.key: p.value for p in original.metadata_props}
    ops = {n.op_type for n in new.graph.node}
    assert "ConvTranspose" not in ops and "BatchNormalization" not in ops
    for batch in batches:
        feeds = sample_inputs(specs, batch, 100 + batch)
        for a, b in zip(run(original, feeds), run(new, feeds)):
            assert a.shape == b.shape
            assert np.max(np.abs(a - b)) <= TOL


def rewrite_file(path, **options):
    model, report = rewrite_for_int8(load_ir(path), **options)
    return to_proto(model), report


@pytest.fixture(scope="module")
def legacy_zoo(tmp_path_factory):
    """Zoo models through the TorchScript exporter, which keeps BatchNormalization nodes."""
    from gencompress.exporter.export import export
    from gencompress.models import ZOO

    folder = tmp_path_factory.mktemp("legacy")
    cache = {}

    def get(name):
        if name not in cache:
            entry = ZOO[name]
            module = entry.generator(load_weights=entry.checkpoint.exists())
            out = folder / f"{name}.onnx"
            export(module, out, inputs=entry.inputs, legacy=True, batches=(1,))
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="module")
def zoo_model(zoo_onnx, tmp_path_factory):
    """The session's zoo export (trained weights) if the checkpoint exists, else the untrained architecture."""
    from gencompress.exporter.export import export
    from gencompress.models import ZOO

    folder = tmp_path_factory.mktemp("zoo_untrained")

    def get(name):
        entry = ZOO[name]
        if entry.checkpoint.exists():
            return zoo_onnx(name)
        out = folder / f"{name}.onnx"
        if not out.exists():
            export(entry.generator(load_weights=False), out, inputs=entry.inputs, batches=(1,))
        return out

    return get


@pytest.mark.parametrize("name", ["dcgan", "vae", "cgan"])
def test_zoo_models(zoo_model, name):
    path = zoo_model(name)
    original = onnx.load(str(path))
    new, report = rewrite_file(path)
    n_convtranspose = sum(n.op_type == "ConvTranspose" for n in original.graph.node)
    rewritten = len(report["convtranspose_to_gemm"]["rewritten"]) + len(report["convtranspose_to_conv"]["rewritten"])
    assert rewritten == n_convtranspose > 0
    assert_rewritten_equivalent(original, new, _specs(name))


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_legacy_zoo_models_fold_batchnorm(legacy_zoo, name):
    path = legacy_zoo(name)
    original = onnx.load(str(path))
    assert any(n.op_type == "BatchNormalization" for n in original.graph.node)
    new, report = rewrite_file(path)
    assert len(report["fold_batchnorm"]["folded"]) == sum(n.op_type == "BatchNormalization" for n in original.graph.node)
    assert_rewritten_equivalent(original, new, _specs(name))
    # every Conv/Gemm that had a BatchNorm + ReLU now feeds its Relu directly (QDQ fusable)
    producers = {o: n for n in new.graph.node for o in n.output}
    for node in new.graph.node:
        if node.op_type == "Relu":
            assert producers[node.input[0]].op_type in ("Conv", "Gemm")


def test_dcgan_latent_projection_becomes_gemm(zoo_model):
    new, report = rewrite_file(zoo_model("dcgan"))
    assert len(report["convtranspose_to_gemm"]["rewritten"]) == 1
    assert [n.op_type for n in new.graph.node][:3] == ["Flatten", "Gemm", "Relu"]


def _standard_dcgan_module():
    spec = importlib.util.spec_from_file_location("standard_dcgan", REPO / "benchmarks" / "standard_dcgan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_standard_dcgan_shape_and_rewrite(tmp_path):
    """The benchmark's standard DCGAN (narrow here, for speed): 64x64 output, fully rewritten, exact."""
    from gencompress.exporter.export import export

    std = _standard_dcgan_module()
    generator = std.build_generator(ngf=8)
    out = tmp_path / "std.onnx"
    export(generator, out, inputs=std.input_specs(), legacy=True, batches=(1,))
    original = onnx.load(str(out))
    assert [n.op_type for n in original.graph.node].count("ConvTranspose") == 5
    new, report = rewrite_file(out)
    assert_rewritten_equivalent(original, new, std.input_specs())
    outputs = run(new, sample_inputs(std.input_specs(), 2, 0))
    assert outputs[0].shape == (2, 3, 64, 64)
    assert len(report["fold_batchnorm"]["folded"]) == 4
    assert len(report["convtranspose_to_gemm"]["rewritten"]) == 1
    assert len(report["convtranspose_to_conv"]["rewritten"]) == 4


def test_standard_dcgan_records_its_output_range(tmp_path):
    """Like the exporter for zoo models: gencompress.output_range = "2.0" (Tanh), so PSNR uses peak 2.0."""
    from gencompress.inputs import METADATA_OUTPUT_RANGE, output_range_of_model

    std = _standard_dcgan_module()
    out = tmp_path / "std.onnx"
    report = std.export_standard_dcgan(out, legacy=True, ngf=8)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[METADATA_OUTPUT_RANGE] == "2.0" and output_range_of_model(model) == 2.0
    assert "gencompress.inputs" in meta  # the exporter's entries are kept
    assert report["bytes"] == out.stat().st_size


def test_phases_layout_on_a_zoo_model(zoo_model):
    path = zoo_model("vae")
    new, report = rewrite_file(path, layout="phases")
    assert report["convtranspose_to_conv"]["forms"] == {"phase_convs+concat+depth_to_space": 2}
    assert_rewritten_equivalent(onnx.load(str(path)), new, _specs("vae"))


def test_the_rewrite_sequence_runs_as_a_recipe_step(zoo_model):
    path = zoo_model("cgan")
    model = load_ir(path)
    model, reports = run_recipe(model, [{"pass": "rewrite_for_int8", "options": {}}])
    assert list(reports[0]["report"]) == ["fold_batchnorm", "convtranspose_to_gemm", "convtranspose_to_conv"]
    assert_rewritten_equivalent(onnx.load(str(path)), to_proto(model), _specs("cgan"), batches=(3,))


def test_pass_names_and_options_are_registered():
    for name in ("fold_batchnorm", "convtranspose_to_gemm", "convtranspose_to_conv"):
        assert registry.pass_class(name).pass_name == name
    with pytest.raises(GencompressError, match="depth_to_space"):
        registry.make_pass("convtranspose_to_conv", {"depth_to_space": "XYZ"})
    with pytest.raises(GencompressError, match="layout"):
        registry.make_pass("convtranspose_to_conv", {"layout": "nope"})
    with pytest.raises(GencompressError, match="unknown option"):
        registry.make_pass("fold_batchnorm", {"epsilon": 1})
    # the pipeline is a pass too (recipes name it), and checks its options up front
    assert registry.pass_class("rewrite_for_int8") is RewriteForInt8Pass
    with pytest.raises(GencompressError, match="layout"):
        registry.validate_recipe([{"pass": "rewrite_for_int8", "options": {"layout": "diagonal"}}])
    # malformed YAML shapes are user errors, not TypeErrors
    with pytest.raises(GencompressError, match="pass name"):
        registry.validate_recipe([{"pass": ["cleanup"]}])
    with pytest.raises(GencompressError, match="option names"):
        registry.validate_recipe([{"pass": "cleanup", "options": {1: 2}}])


def test_rewrite_is_deterministic_and_a_noop_the_second_time(zoo_model):
    path = zoo_model("dcgan")
    a, _ = rewrite_file(path)
    b, _ = rewrite_file(path)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    import onnx_ir as ir

    again = RewriteForInt8Pass()(ir.serde.deserialize_model(a))
    assert not again.modified
