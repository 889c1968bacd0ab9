"""runtime_check: fidelity metrics, check/bench API and CLI, on tiny hand-built generators.

Every figure the API reports is recomputed here independently: the models are run with plain
onnxruntime sessions, the latents drawn with numpy's seeded generator, and the metrics
computed with plain numpy (sliding windows for SSIM, scipy/eig for the matrix square root).
Speed numbers are never asserted.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.errors import GencompressError
from gencompress.inputs import InputSpec, specs_to_json
from gencompress.verbs import check as api
from gencompress.runtime_check import fidelity as F
from gencompress.runtime_check.features import builtin_extractor, conv_net
from gencompress.runtime_check.report_html import jsonable

LATENT = 8


# ---- tiny generators ------------------------------------------------------------------------------


def _finish(graph, path, specs, output_range):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.add(key="gencompress.inputs", value=specs_to_json(specs))
    if output_range:
        m.metadata_props.add(key="gencompress.output_range", value=repr(float(output_range)))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def base_weights(seed=0, d=256):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((LATENT, d)) * 0.6).astype(np.float32)
    b = (rng.standard_normal(d) * 0.2).astype(np.float32)
    return w, b


def tiny_generator(path, *, seed=0, noise=0.0, kind="image", output_range="auto", batch=None, w=None, qdq=False, out_name=None):
    """z [N, 8] → Gemm → reshape → Tanh image [N, 1, 16, 16] (or Sigmoid sequence [N, 8, 8])."""
    shape = [1, 16, 16] if kind == "image" else [8, 8]
    d = int(np.prod(shape))
    w0, b = base_weights(seed, d)
    w = w0 if w is None else w
    if noise:
        w = w + (np.random.default_rng(seed + 1000).standard_normal(w.shape) * noise).astype(np.float32)
    out = out_name or ("image" if kind == "image" else "sequence")
    act = "Tanh" if kind == "image" else "Sigmoid"
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array([-1, *shape], np.int64), "shape")]
    nodes = []
    if qdq:  # int8 per output channel (axis 1 of Gemm's B [K, N]), DequantizeLinear in front
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_scale"), numpy_helper.from_array(np.zeros_like(scale, np.int8), "w_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1))
    else:
        inits.append(numpy_helper.from_array(np.asarray(w, np.float32), "w"))
    nodes += [
        helper.make_node("Gemm", ["z", "w", "b"], ["h"], name="dense"),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node(act, ["r"], [out]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch or "N", LATENT])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch or "N", *shape])],
        inits,
    )
    if output_range == "auto":
        output_range = 2.0 if kind == "image" else 1.0
    return _finish(graph, path, [InputSpec("z", (1, LATENT))], output_range)


def constant_generator(path, value, *, out="image", output_range=2.0):
    """Ignores z: every sample is ``value`` (a collapsed generator)."""
    value = np.asarray(value, np.float32)
    nodes = [
        helper.make_node("Shape", ["z"], ["n"], start=0, end=1),
        helper.make_node("Concat", ["n", "rest"], ["full"], axis=0),
        helper.make_node("Expand", ["value", "full"], [out]),
    ]
    inits = [numpy_helper.from_array(value[None], "value"), numpy_helper.from_array(np.array(value.shape, np.int64), "rest")]
    graph = helper.make_graph(
        nodes,
        "const",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", LATENT])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *value.shape])],
        inits,
    )
    return _finish(graph, path, [InputSpec("z", (1, LATENT))], output_range)


def run_ort(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def latents(n, seed):
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    ref = tiny_generator(d / "ref.onnx")
    ref_out = run_ort(ref, {"z": latents(256, 0)})[0]
    return {
        "dir": d,
        "ref": ref,
        "noise": tiny_generator(d / "noise.onnx", noise=0.01),
        "noisy": tiny_generator(d / "noisy.onnx", noise=0.1),
        "mean": constant_generator(d / "mean.onnx", ref_out.mean(axis=0)),
        "repeat": constant_generator(d / "repeat.onnx", ref_out[0]),
        "seq_ref": tiny_generator(d / "seq_ref.onnx", kind="sequence"),
        "seq_cand": tiny_generator(d / "seq_cand.onnx", kind="sequence", noise=0.05),
    }


# ---- independent numpy metrics ---------------------------------------------------------------------


def np_ssim(x, y, peak, win=7):
    """SSIM (uniform window, sample covariance) via explicit sliding windows; per image."""
    from numpy.lib.stride_tricks import sliding_window_view as sw

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    scores = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        per_channel = []
        for ac, bc in zip(a, b):
            wa, wb = sw(ac, (win, win)), sw(bc, (win, win))
            ma, mb = wa.mean(axis=(-1, -2)), wb.mean(axis=(-1, -2))
            n = win * win
            va = ((wa - ma[..., None, None]) ** 2).sum(axis=(-1, -2)) / (n - 1)
            vb = ((wb - mb[..., None, None]) ** 2).sum(axis=(-1, -2)) / (n - 1)
            cov = ((wa - ma[..., None, None]) * (wb - mb[..., None, None])).sum(axis=(-1, -2)) / (n - 1)
            s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            per_channel.append(s.mean())
        scores.append(np.mean(per_channel))
    return np.array(scores)


def np_frechet(f1, f2):
    """FD with the matrix square root of Σ1Σ2 from its (real) eigenvalues, a different route."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    try:
        from scipy.linalg import sqrtm

        tr = np.trace(sqrtm(s1 @ s2)).real
    except ImportError:
        ev = np.linalg.eigvals(s1 @ s2)
        tr = np.sum(np.sqrt(np.clip(ev.real, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


# ---- metric functions ------------------------------------------------------------------------------


def test_psnr_mse_cosine_match_definitions():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-1, 1, (20, 1, 16, 16))
    cand = ref + rng.normal(0, 0.05, ref.shape)
    r = F.compare_output("image", ref, cand, peak=2.0, peak_source="nominal")
    mse = np.mean((cand - ref) ** 2)
    assert r["mse"] == pytest.approx(mse, rel=1e-12)
    assert r["psnr_db"] == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert r["max_abs_error"] == pytest.approx(np.abs(cand - ref).max())
    a, b = ref.reshape(20, -1), cand.reshape(20, -1)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert r["cosine_similarity"] == pytest.approx(cos.mean(), rel=1e-12)
    assert r["cosine_similarity_min"] == pytest.approx(cos.min(), rel=1e-12)
    per = 10 * np.log10(4.0 / np.mean((a - b) ** 2, axis=1))
    assert r["psnr_worst_sample_db"] == pytest.approx(per.min(), rel=1e-12)
    assert r["peak"] == 2.0 and r["peak_source"] == "nominal"


def test_ssim_matches_sliding_window_definition_and_bounds():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, (6, 2, 12, 10))
    cand = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    got = F.ssim(ref, cand, 1.0)
    assert np.allclose(got, np_ssim(ref, cand, 1.0), rtol=1e-9, atol=1e-12)
    assert np.allclose(F.ssim(ref, ref, 1.0), 1.0)
    assert F.ssim(ref[:, :, :2, :2], ref[:, :, :2, :2], 1.0) is None  # too small for a window
    assert F.ssim_window(5, 16) == 5 and F.ssim_window(6, 6) == 5


def test_frechet_distance_matches_other_sqrtm_route():
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    f2 = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) + 0.3
    assert F.frechet_distance(f1, f2) == pytest.approx(np_frechet(f1, f2), rel=1e-6)
    assert F.frechet_distance(f1, f1) == pytest.approx(0.0, abs=1e-8)
    assert np.isnan(F.frechet_distance(f1, np.full_like(f2, np.nan)))


def test_observed_peak_when_no_nominal_range_and_sequences_skip_ssim():
    rng = np.random.default_rng(4)
    ref = rng.uniform(0.2, 0.7, (10, 8, 8))
    r = F.compare_output("sequence", ref, ref + 0.01)
    assert r["peak_source"] == "observed" and r["peak"] == pytest.approx(ref.max() - ref.min())
    assert "observed" in r["peak_note"]
    assert r["kind"] == "sequence" and r["ssim"] is None
    assert r["frechet_distance"] is not None


def test_feature_net_is_fixed_and_deterministic():
    a = conv_net(1, 2).SerializeToString()
    assert a == conv_net(1, 2).SerializeToString()
    x = np.random.default_rng(5).uniform(-1, 1, (4, 1, 16, 16)).astype(np.float32)
    f1 = builtin_extractor(x, 2.0)(x)
    f2 = builtin_extractor(x, 2.0)(x)
    assert f1.shape == (4, 96) and np.array_equal(f1, f2)


def test_incompatible_models_are_refused(models, tmp_path):
    other = tiny_generator(tmp_path / "other.onnx", out_name="picture")
    with pytest.raises(GencompressError, match="output"):
        api.check(models["ref"], other, samples=4)
    with pytest.raises(GencompressError, match="outputs differ"):
        api.check(models["ref"], models["seq_ref"], samples=4)
    ranked = tiny_generator(tmp_path / "ranked.onnx", kind="sequence", out_name="image")
    with pytest.raises(GencompressError, match="output 'image' has rank 4 in the reference, 3 in the candidate"):
        api.check(models["ref"], ranked, samples=4)
    typed = onnx.load(str(models["ref"]))
    typed.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(GencompressError, match="input 'z' is float32 in the reference, float64 in the candidate"):
        api.check(models["ref"], typed, samples=4)


def test_float16_io_candidate_is_compared_and_timed_against_its_float32_reference(models):
    """``quantize --mode fp16 --fp16-io`` makes a model with float16 inputs and outputs: check and
    bench cast the float32 latents to what it takes (not a dtype-mismatch error)."""
    import onnx_ir as ir

    from gencompress.passes.fp16_convert import FP16ConvertPass

    model = ir.serde.deserialize_model(onnx.load(str(models["ref"])))
    FP16ConvertPass(FP16ConvertPass.Options(keep_io_types=False))(model)
    half = ir.serde.serialize_model(model)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    o = api.check(models["ref"], half, samples=16)["outputs"][0]
    assert o["nonfinite"] == 0 and o["psnr_db"] > 40
    b = api.bench(half, reference=models["ref"], batches=(2,), threads=(1,), runs=2, warmup=1, memory=True)
    assert b["results"][0]["ratio"] > 0 and b["memory"]["results"][0]["model_peak_bytes"] >= 0


# ---- check() against an independent recomputation ----------------------------------------------------


def test_check_figures_agree_with_independent_numpy(models):
    n, seed = 96, 7
    r = api.check(models["ref"], models["noisy"], samples=n, seed=seed, batch=40)  # 40: a partial last batch
    z = latents(n, seed)
    ref = run_ort(models["ref"], {"z": z})[0].astype(np.float64)
    cand = run_ort(models["noisy"], {"z": z})[0].astype(np.float64)
    o = r["outputs"][0]
    assert r["samples"] == n and r["seed"] == seed and o["name"] == "image"
    assert o["peak"] == 2.0 and o["peak_source"] == "nominal"  # Tanh, recorded in metadata
    mse = np.mean((ref - cand) ** 2)
    assert o["mse"] == pytest.approx(mse, rel=1e-9)
    assert o["psnr_db"] == pytest.approx(10 * np.log10(2.0**2 / mse), rel=1e-9)
    assert o["max_abs_error"] == pytest.approx(np.max(np.abs(ref - cand)), rel=1e-9)
    assert o["ssim"] == pytest.approx(np_ssim(ref, cand, 2.0).mean(), rel=1e-9)
    a, b = ref.reshape(n, -1), cand.reshape(n, -1)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert o["cosine_similarity"] == pytest.approx(cos.mean(), rel=1e-9)
    ext = builtin_extractor(ref, 2.0)
    fd = np_frechet(ext(ref), ext(cand))
    assert o["frechet_distance"] == pytest.approx(fd, rel=1e-4, abs=1e-9)
    assert json.loads(json.dumps(jsonable(r), allow_nan=False))  # JSON-safe


def test_same_inputs_for_every_candidate_and_identical_model(models):
    same = api.check(models["ref"], models["ref"], samples=16)
    o = same["outputs"][0]
    assert o["mse"] == 0 and o["psnr_db"] == float("inf") and o["frechet_distance"] == pytest.approx(0, abs=1e-9)
    a = api.check(models["ref"], models["noise"], samples=16, seed=3)
    b = api.check(models["ref"], models["noise"], samples=16, seed=3)
    assert a["outputs"][0] == b["outputs"][0]  # deterministic
    c = api.check(models["ref"], models["noise"], samples=16, seed=4)
    assert c["outputs"][0]["mse"] != a["outputs"][0]["mse"]


def test_mode_collapse_is_caught_by_frechet_distance(models):
    n = 64
    fd = {k: api.check(models["ref"], models[k], samples=n)["outputs"][0] for k in ("noise", "mean", "repeat")}
    assert fd["noise"]["frechet_distance_relative"] < 0.01
    for k in ("mean", "repeat"):
        assert fd[k]["frechet_distance_relative"] > 0.5, k
        assert fd[k]["frechet_distance"] > 100 * fd["noise"]["frechet_distance"], k
        assert fd[k]["diversity_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert fd["noise"]["diversity_ratio"] == pytest.approx(1.0, abs=0.05)


def test_sequences_get_the_metrics_that_apply(models):
    r = api.check(models["seq_ref"], models["seq_cand"], samples=32, seed=0, preview=3)
    o = r["outputs"][0]
    assert o["kind"] == "sequence" and o["peak"] == 1.0 and o["ssim"] is None
    z = latents(32, 0)
    ref, cand = (run_ort(models[k], {"z": z})[0].astype(np.float64) for k in ("seq_ref", "seq_cand"))
    assert o["psnr_db"] == pytest.approx(10 * np.log10(1.0 / np.mean((ref - cand) ** 2)), rel=1e-9)
    assert 0 <= o["frechet_distance"] and o["features"]["dim"] == 96
    p = r["preview"]
    assert p["kind"] == "sequence" and p["reference"].shape == (3, 8, 8) and p["error_map"].shape == (8, 8)
    assert np.allclose(p["error_map"], np.abs(ref - cand).mean(axis=0))


def test_fixed_batch_model_and_user_feature_model(models, tmp_path):
    fixed = tiny_generator(tmp_path / "fixed.onnx", noise=0.01, batch=1)
    r = api.check(models["ref"], fixed, samples=5, seed=0)
    z = latents(5, 0)
    ref = run_ort(models["ref"], {"z": z})[0]
    cand = np.concatenate([run_ort(fixed, {"z": z[i : i + 1]})[0] for i in range(5)])
    assert r["outputs"][0]["mse"] == pytest.approx(np.mean((ref.astype(np.float64) - cand) ** 2), rel=1e-9)

    # a user "encoder": global average pool of the image → 1 feature per sample
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])],
        "enc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["N", 1])],
    )
    enc = tmp_path / "enc.onnx"
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(enc))
    r = api.check(models["ref"], models["mean"], samples=32, seed=0, features=enc)
    o = r["outputs"][0]
    z = latents(32, 0)
    ref = run_ort(models["ref"], {"z": z})[0].astype(np.float64).mean(axis=(1, 2, 3))
    cand = run_ort(models["mean"], {"z": z})[0].astype(np.float64).mean(axis=(1, 2, 3))
    expected = (ref.mean() - cand.mean()) ** 2 + ref.var(ddof=1) + cand.var(ddof=1) - 2 * np.sqrt(ref.var(ddof=1) * cand.var(ddof=1))
    assert o["features"]["kind"] == "onnx" and o["features"]["dim"] == 1
    assert o["frechet_distance"] == pytest.approx(expected, rel=1e-4, abs=1e-12)
    with pytest.raises(GencompressError, match="feature model"):
        api.check(models["ref"], models["ref"], samples=4, features=models["seq_ref"])


def test_real_inputs_peak_override_and_single_sample(models, tmp_path):
    z = latents(10, 42)
    np.savez(tmp_path / "z.npz", z=z)
    r = api.check(models["ref"], models["noisy"], inputs=tmp_path / "z.npz", peak=4.0)
    ref, cand = (run_ort(models[k], {"z": z})[0].astype(np.float64) for k in ("ref", "noisy"))
    o = r["outputs"][0]
    assert r["samples"] == 10 and o["peak"] == 4.0 and o["peak_source"] == "given"
    assert o["psnr_db"] == pytest.approx(10 * np.log10(16.0 / np.mean((ref - cand) ** 2)), rel=1e-9)
    one = api.check(models["ref"], models["noisy"], samples=1)["outputs"][0]
    assert one["frechet_distance"] is None and one["diversity_ratio"] is None and one["mse"] > 0
    np.savez(tmp_path / "bad.npz", w=z)
    with pytest.raises(GencompressError, match="unknown input name"):
        api.check(models["ref"], models["noisy"], inputs=tmp_path / "bad.npz")


def test_check_user_errors(models, tmp_path):
    with pytest.raises(GencompressError, match="samples"):
        api.check(models["ref"], models["noise"], samples=0)
    with pytest.raises(GencompressError, match="batch"):
        api.check(models["ref"], models["noise"], samples=4, batch=0)
    with pytest.raises(GencompressError, match="unknown execution provider"):
        api.check(models["ref"], models["noise"], samples=4, provider="warp-drive")
    with pytest.raises(GencompressError, match="no such file"):
        api.check(models["ref"], tmp_path / "missing.onnx", samples=4)


def test_nonfinite_candidate_is_reported_not_a_crash(models, tmp_path):
    w, _ = base_weights()
    w = w.copy()
    w[0, 0] = np.nan
    bad = tiny_generator(tmp_path / "nan.onnx", w=w)
    with pytest.raises(GencompressError, match="NaN or Inf"):  # a check never passes garbage by default (issue 26)
        api.check(models["ref"], bad, samples=8)
    o = api.check(models["ref"], bad, samples=8, allow_nonfinite=True)["outputs"][0]
    assert o["nonfinite"] > 0 and np.isnan(o["mse"])


# ---- layer statistics -----------------------------------------------------------------------------


def test_layer_stats_sparsity_and_precision(tmp_path):
    w, _ = base_weights()
    pruned = w.copy()
    pruned[np.abs(pruned) < np.quantile(np.abs(pruned), 0.5)] = 0
    pruned[:, :16] = 0  # 16 whole output channels
    dense = api.layer_stats(tiny_generator(tmp_path / "dense.onnx"))
    assert dense == [
        {
            "node": "dense",
            "op_type": "Gemm",
            "weight": "w",
            "shape": [8, 256],
            "params": 2048,
            "sparsity": 0.0,
            "zero_channels": 0.0,
            "precision": "float32",
            "granularity": None,
            "bytes": 8192,
        }
    ]
    q = api.layer_stats(tiny_generator(tmp_path / "q.onnx", w=pruned, qdq=True))[0]
    assert q["precision"] == "int8" and q["granularity"] == "per-channel (axis 1)" and q["bytes"] == 2048
    assert q["sparsity"] == pytest.approx(np.mean(np.round(pruned / np.maximum(np.abs(pruned).max(0), 1e-30) * 127) == 0))
    assert q["zero_channels"] == pytest.approx(16 / 256)


# ---- bench ----------------------------------------------------------------------------------------


def test_bench_interleaved_with_reference(models):
    r = api.bench(models["noise"], reference=models["ref"], batches=(1, 5), threads=(1, 2), runs=5, warmup=1, memory=False)
    assert [(row["threads"], row["batch"]) for row in r["results"]] == [(1, 1), (1, 5), (2, 1), (2, 5)]
    for row in r["results"]:
        m, ref = row["model"], row["reference"]
        assert m["runs"] == ref["runs"] == 5
        assert 0 < m["min_ms"] <= m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"]
        assert row["ratio"] == pytest.approx(m["p50_ms"] / ref["p50_ms"])
        assert m["samples_per_s"] == pytest.approx(row["batch"] / (m["p50_ms"] / 1e3))
    assert r["providers"] == ["CPUExecutionProvider"]
    assert r["settings"]["intra_op_spinning"] is False
    data = models["noise"].read_bytes()
    assert r["sizes"]["model"] == {"bytes": len(data), "deflate_bytes": len(zlib.compress(data, 6)), "file_bytes": len(data)}
    assert r["sizes"]["ratio"] == pytest.approx(len(data) / models["ref"].stat().st_size)


def test_bench_peak_memory_probe(models):
    r = api.bench(models["ref"], batches=(4,), threads=(1,), runs=2, warmup=0, memory=True)
    mem = r["memory"]
    assert "VmHWM" in mem["method"] or "RSS" in mem["method"]
    (row,) = mem["results"]
    assert row["batch"] == 4 and row["model_peak_bytes"] >= 0
    assert r["reference"] is None and r["results"][0]["ratio"] is None


def test_a_model_failing_its_warm_up_run_is_named(models):
    """time_interleaved's warm-up runs are checked runs: onnxruntime's failure is one line naming the model."""
    from gencompress.runtime_check.latency import time_interleaved
    from gencompress.runtime_check.sessions import make_session

    session = make_session(models["ref"].read_bytes(), threads=1)
    with pytest.raises(GencompressError, match="^candidate: onnxruntime failed to run it"):
        time_interleaved({"candidate": session}, {"z": np.zeros((1, 3), np.float32)}, runs=1, warmup=1)


def test_sessions_have_spinning_off():
    from gencompress.runtime_check.sessions import session_options

    opts = session_options(2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2


def test_bench_user_errors(models, tmp_path):
    with pytest.raises(GencompressError, match="unknown execution provider"):
        api.bench(models["ref"], providers=("nope",), runs=1)
    unavailable = next(p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "CoreMLExecutionProvider") if p not in ort.get_available_providers())
    with pytest.raises(GencompressError, match="not available"):
        api.bench(models["ref"], providers=(unavailable,), runs=1)
    with pytest.raises(GencompressError, match="batch"):
        api.bench(models["ref"], batches=(0,), runs=1)
    with pytest.raises(GencompressError, match="runs"):
        api.bench(models["ref"], runs=0)
    with pytest.raises(GencompressError, match="fixes the batch size to 1"):
        api.bench(tiny_generator(tmp_path / "fixed.onnx", batch=1), batches=(1, 4), runs=1, memory=False)
    with pytest.raises(GencompressError, match="not comparable"):
        api.bench(models["ref"], reference=models["seq_ref"], runs=1, memory=False)


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_check_table_and_json(run_cli, models):
    r = run_cli("check", models["ref"], models["noisy"], "--samples", 16)
    assert r.exit_code == 0, r
    assert "PSNR dB" in r.stdout and "Frechet distance" in r.stdout and "peak 2" in r.stdout
    j = run_cli("check", models["ref"], models["noisy"], "--samples", 16, "--json")
    assert j.exit_code == 0, j
    data = json.loads(j.stdout)
    direct = api.check(models["ref"], models["noisy"], samples=16)
    assert data["outputs"][0]["psnr_db"] == pytest.approx(direct["outputs"][0]["psnr_db"])
    assert "preview" not in data
    same = json.loads(run_cli("check", models["ref"], models["ref"], "--samples", 4, "--json").stdout)
    assert same["outputs"][0]["psnr_db"] == "inf"  # JSON has no Infinity


def test_cli_check_writes_report(run_cli, models, tmp_path):
    r = run_cli("check", models["ref"], models["noisy"], "--samples", 8, "--report", tmp_path / "rep")
    assert r.exit_code == 0, r
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["fidelity"]["samples"] == 8 and data["layers"][0]["op_type"] == "Gemm"
    assert (tmp_path / "rep" / "report.html").read_text().count("data:image/png;base64,") >= 24


def test_cli_bench_table_and_json(run_cli, models):
    r = run_cli("bench", models["noise"], "--reference", models["ref"], "--batch", "1,4", "--threads", 1, "--runs", 3, "--warmup", 1, "--no-memory")
    assert r.exit_code == 0, r
    assert "p50 ms" in r.stdout and "ratio" in r.stdout and "deflate" in r.stdout
    j = run_cli("bench", models["noise"], "--batch", 2, "--runs", 2, "--warmup", 0, "--no-memory", "--json")
    data = json.loads(j.stdout)
    assert [row["batch"] for row in data["results"]] == [2] and data["reference"] is None


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("check", "{ref}", "{noise}", "--samples", "0"), ("samples",)),
        (("check", "{ref}", "{noise}", "--batch", "0"), ("batch",)),
        (("check", "{ref}", "{seq}"), ("not comparable",)),
        (("check", "{ref}", "{missing}"), ("no such file",)),
        (("check", "{ref}", "{noise}", "--provider", "foo"), ("unknown execution provider", "foo")),
        (("bench", "{ref}", "--provider", "cuda", "--runs", "1"), ("CUDAExecutionProvider",)),
        (("bench", "{ref}", "--provider", "foo"), ("unknown execution provider",)),
        (("bench", "{ref}", "--batch", "0"), ("batch",)),
        (("bench", "{ref}", "--batch", "x"), ("batch",)),
        (("bench", "{ref}", "--threads", "0"), ("threads",)),
        (("bench", "{ref}", "--seed", "-1", "--no-memory"), ("--seed",)),
        (("check", "{ref}", "{noise}", "--seed", "-1"), ("--seed",)),
        (("bench", "{noise}", "--reference", "{seq}", "--no-memory"), ("not comparable",)),
    ],
)
def test_cli_user_errors(run_cli, user_error, models, tmp_path, args, fragments):
    if "cuda" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    paths = {"ref": models["ref"], "noise": models["noise"], "seq": models["seq_ref"], "missing": tmp_path / "missing.onnx"}
    r = run_cli(*(a.format(**paths) for a in args))
    user_error(r, *fragments)


def test_cli_help_has_examples(run_cli):
    for verb in ("check", "bench"):
        r = run_cli(verb, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout and f"gencompress {verb}" in r.stdout
