"""runtime_check on exported zoo generators (DCGAN images, recurrent-VAE sequences, conditional GAN
with an int64 label input), against perturbed copies; figures recomputed with plain numpy.

Uses the trained checkpoints when they exist, else random-weight exports of the same architectures.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from gencompress.inputs import sample_inputs
from gencompress.models import ZOO
from gencompress.verbs import check as api

NAMES = ("dcgan", "rvae", "cgan")


@pytest.fixture(scope="module")
def zoo(zoo_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rc_zoo")
    cache = {}

    def get(name):
        if name not in cache:
            entry = ZOO[name]
            if entry.checkpoint.exists():
                ref = zoo_onnx(name)
            else:
                from gencompress.exporter.export import export

                ref = folder / f"{name}.onnx"
                export(entry.generator(load_weights=False), ref, inputs=entry.inputs)
            cache[name] = (ref, perturbed(ref, folder / f"{name}.noisy.onnx"))
        return cache[name]

    return get


def perturbed(src, dst, rel=0.02):
    """Every float weight (rank ≥ 2) plus seeded noise of ``rel`` × its std: a lossy 'compression'."""
    m = onnx.load(str(src))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.ndim >= 2 and a.size > 1:
            a = a + (rng.standard_normal(a.shape) * rel * (a.std() or 1.0)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("name", NAMES)
def test_zoo_check_matches_numpy(zoo, name):
    ref_path, cand_path = zoo(name)
    n, seed = 32, 5
    r = api.check(ref_path, cand_path, samples=n, seed=seed, preview=4)
    feeds = sample_inputs(ZOO[name].inputs, n, seed)
    if name == "cgan":
        assert feeds["label"].dtype == np.int64 and feeds["label"].min() >= 0 and feeds["label"].max() <= 9
        assert r["preview"]["labels"]["label"] == feeds["label"][:4].tolist()
    ref = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)
    cand = ort.InferenceSession(str(cand_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)
    (o,) = r["outputs"]
    if o["peak_source"] == "nominal":
        assert o["peak"] == ZOO[name].output_range
    else:
        assert o["peak_source"] == "observed" and o["peak"] == pytest.approx(ref.max() - ref.min())
    mse = np.mean((ref - cand) ** 2)
    assert o["mse"] == pytest.approx(mse, rel=1e-9)
    assert o["psnr_db"] == pytest.approx(10 * np.log10(o["peak"] ** 2 / mse), rel=1e-9)
    assert o["max_abs_error"] == pytest.approx(np.abs(ref - cand).max(), rel=1e-9)
    assert o["kind"] == ("sequence" if name == "rvae" else "image")
    assert (o["ssim"] is None) == (name == "rvae")
    assert o["frechet_distance"] >= 0 and o["features"]["kind"] == "builtin"
    assert r["preview"]["reference"].shape[0] == 4


def test_zoo_layers_bench_and_report(zoo, tmp_path):
    dcgan_ref, dcgan_cand = zoo("dcgan")
    layers = api.layer_stats(dcgan_cand)
    assert {l["op_type"] for l in layers} >= {"ConvTranspose"}
    assert all(l["precision"] == "float32" and l["sparsity"] < 0.01 for l in layers)
    rvae_ops = {l["op_type"] for l in api.layer_stats(zoo("rvae")[0])}
    assert "GRU" in rvae_ops
    assert "Gather" in {l["op_type"] for l in api.layer_stats(zoo("cgan")[0])}  # label embedding

    b = api.bench(dcgan_cand, reference=dcgan_ref, batches=(1, 8), threads=(2,), runs=3, warmup=1, memory=False)
    assert [row["batch"] for row in b["results"]] == [1, 8] and all(row["ratio"] > 0 for row in b["results"])

    ref, cand = zoo("cgan")
    report = api.build_report(ref, cand, fidelity=api.check(ref, cand, samples=16, preview=8), latency=b)
    paths = api.write_report(tmp_path / "out", report)
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 * 8 + 2 and "label=" in page


def constant_like(ref_path, value, dst):
    """A collapsed 'generator' with the reference's interface: every sample is ``value``."""
    from onnx import helper

    ref = onnx.load(str(ref_path))
    nodes = [
        helper.make_node("Shape", [ref.graph.input[0].name], ["n"], start=0, end=1),
        helper.make_node("Concat", ["n", "rest"], ["full"], axis=0),
        helper.make_node("Expand", ["value", "full"], [ref.graph.output[0].name]),
    ]
    inits = [numpy_helper.from_array(value[None].astype(np.float32), "value"), numpy_helper.from_array(np.array(value.shape, np.int64), "rest")]
    graph = helper.make_graph(nodes, "collapsed", list(ref.graph.input), list(ref.graph.output), inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.extend(ref.metadata_props)
    onnx.save(m, str(dst))
    return dst


def test_zoo_mode_collapse_gets_a_large_frechet_distance(zoo, tmp_path):
    ref_path, noisy = zoo("dcgan")
    n = 64
    feeds = sample_inputs(ZOO["dcgan"].inputs, n, 0)
    out = ort.InferenceSession(str(ref_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    mean = constant_like(ref_path, out.mean(axis=0), tmp_path / "mean.onnx")
    repeat = constant_like(ref_path, out[3], tmp_path / "repeat.onnx")
    fd = {k: api.check(ref_path, p, samples=n)["outputs"][0]["frechet_distance_relative"] for k, p in (("noisy", noisy), ("mean", mean), ("repeat", repeat))}
    assert fd["noisy"] < 0.05
    assert fd["mean"] > 0.5 and fd["repeat"] > 0.5
    assert min(fd["mean"], fd["repeat"]) > 20 * fd["noisy"]
