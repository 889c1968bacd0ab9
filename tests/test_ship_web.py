"""The browser as an edge target, and bundles that verify themselves (issue 24).

- web: the page makes itself cross-origin isolated (its service worker adds COOP/COEP) and runs
  onnxruntime-web's wasm kernels on several threads; ``?coi=0`` shows the one-thread fallback and why;
  WebGPU (SwiftShader's Vulkan adapter in headless Chromium) is ≥ 40 dB from onnxruntime CPU for every
  int8 zoo model, and without an adapter the page falls back to wasm and says so;
- a bundle carries only the onnxruntime-web builds of the backends it ships;
- test vectors: seeded inputs and onnxruntime CPU's outputs on this machine (ISA named);
  ``sample.py --verify`` passes here and fails (exit 1, one line) on an altered model, and the page
  shows its verdict (green, or red on an altered model);
- ``sample.py --bench`` reports init, first run, steady state and peak memory;
- the page's model form (edge/web_form.py): Gemm/MatMul weight DequantizeLinear as Cast -> Mul, the
  same outputs as model.onnx in onnxruntime CPU, int8 weights kept; anything else left alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from gencompress.inputs import sample_inputs, specs_of_model
from gencompress.isa import host_isa
from gencompress.runtime_check.fidelity import mse, psnr
from gencompress.edge import browser
from gencompress.edge.bundle import PartialShip, ship
from gencompress.edge.web import BACKEND_FILES, shipped_name
from gencompress.edge.web_form import web_form

ZOO = ("dcgan", "vae", "rvae", "cgan")


def ort_outputs(model, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, zoo_onnx):
    """name -> bundle folder: int8 zoo models shipped with both web backends (``web`` False: npm unreachable)."""
    import gencompress

    root = tmp_path_factory.mktemp("ship-web")
    out = {}
    for name in ZOO:
        gencompress.quantize(zoo_onnx(name), root / name / "model.onnx", calib_size=32)
        try:
            ship(root / name / "model.onnx", root / name / "ship", web_backends="wasm,webgpu")
            out[name] = {"ship": root / name / "ship", "web": True}
        except PartialShip:  # the other targets and the test vectors are still there
            out[name] = {"ship": root / name / "ship", "web": False}
    return out


def web_or_skip(entry) -> Path:
    if not Path(browser.CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed ({browser.CHROMIUM})")
    if not entry["web"]:
        pytest.skip("onnxruntime-web could not be fetched here (npm registry unreachable and no cached copy)")
    return entry["ship"]


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def page_psnr(bundle: Path, result: dict) -> float:
    """The page's outputs on latents.bin against onnxruntime CPU's on the same latents (worst output)."""
    m = manifest_of(bundle)
    feeds = {k: np.asarray(v["data"], np.dtype(next(i["dtype"] for i in m["inputs"] if i["name"] == k))).reshape(v["shape"])
             for k, v in result["inputs"].items()}
    want = ort_outputs(bundle / "model.onnx", feeds)
    worst = np.inf
    for out in m["outputs"]:
        got = np.asarray(result["outputs"][out["name"]]["data"], np.float32).reshape(result["outputs"][out["name"]]["shape"])
        worst = min(worst, psnr(mse(want[out["name"]], got), out["nominal_range"] or float(np.ptp(want[out["name"]]))))
    return worst


def scaled_weights(src: Path, dest: Path, factor: float = 1.5) -> None:
    """A copy of the model with its largest float initializer scaled: a real, loadable, different model."""
    model = onnx.load(str(src))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    biggest = max(floats, key=lambda t: np.prod(t.dims))
    biggest.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(biggest) * np.float32(factor), biggest.name))
    onnx.save(model, str(dest))


# --- test vectors and sample.py ------------------------------------------------------------------------


def test_manifest_carries_test_vectors_from_onnxruntime_cpu_here(bundles):
    bundle = bundles["cgan"]["ship"]  # two inputs, one of them int64
    tv = manifest_of(bundle)["test_vectors"]
    assert tv["isa"] == host_isa() and tv["provider"] == "CPUExecutionProvider" and tv["bound_db"] >= 40
    if bundles["cgan"]["web"]:
        assert (bundle / tv["file"]).read_bytes() == (bundle / "web" / tv["file"]).read_bytes()
    blob = (bundle / tv["file"]).read_bytes()
    arrays = {(e["role"], e["name"]): np.frombuffer(blob, np.dtype(e["dtype"]).newbyteorder("<"), int(np.prod(e["shape"])), e["offset"]).reshape(e["shape"])
              for e in tv["tensors"]}
    want_inputs = sample_inputs(specs_of_model(onnx.load(str(bundle / "model.onnx"))), tv["n"], tv["seed"])
    assert [n for r, n in arrays if r == "input"] == list(want_inputs)
    for name, arr in want_inputs.items():
        assert arr.dtype == arrays[("input", name)].dtype and np.array_equal(arr, arrays[("input", name)])
    for name, arr in ort_outputs(bundle / "model.onnx", want_inputs).items():
        np.testing.assert_allclose(arrays[("output", name)], arr, rtol=0, atol=1e-6)


def run_sample(bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "sample.py"), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_sample_verify_passes_here_and_fails_on_an_altered_model(bundles, tmp_path):
    src = bundles["vae"]["ship"]
    bundle = tmp_path / "bundle"
    shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("web"))
    r = run_sample(bundle, "--verify")
    assert r.returncode == 0 and r.stdout.startswith("verified: ") and r.stdout.count("\n") == 1, r
    assert host_isa() in r.stdout
    # weights changed: the recomputed outputs fall below the bound, and the checksum says which file
    scaled_weights(bundle / "model.onnx", bundle / "model.onnx")
    r = run_sample(bundle, "--verify")
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and not r.stderr, r
    assert r.stdout.startswith("verify FAILED: ") and "sha256" in r.stdout and "dB bound" in r.stdout
    # a model elsewhere, given with --model, is checked by its outputs alone
    shutil.copyfile(bundle / "model.onnx", tmp_path / "other.onnx")
    r = run_sample(bundle, "--verify", "--model", tmp_path / "other.onnx")
    assert r.returncode == 1 and "sha256" not in r.stdout and "dB bound" in r.stdout, r
    # a damaged file that onnxruntime cannot load: still one line, exit 1
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:1000])
    r = run_sample(bundle, "--verify")
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and "could not run" in r.stdout and "Traceback" not in r.stderr, r


def test_sample_bench_reports_init_first_run_steady_state_and_memory(bundles, tmp_path):
    bundle = bundles["dcgan"]["ship"]
    r = run_sample(bundle, "--bench", "--batch", "3", "--runs", "5", "--threads", "1", "--json")
    assert r.returncode == 0, r
    figures = json.loads(r.stdout)
    assert figures["batch"] == 3 and figures["threads"] == 1 and figures["runs"] == 5
    assert figures["init_ms"] > 0 and figures["first_run_ms"] > 0 and 0 < figures["median_ms"] <= figures["p90_ms"]
    assert figures["peak_rss_mb"] >= figures["peak_rss_mb_before_session"] > 0
    r = run_sample(bundle, "--bench", "--runs", "3")
    assert r.returncode == 0 and r.stdout.startswith("bench: batch 1, 1 threads: init ") and "peak memory" in r.stdout, r
    r = run_sample(bundle)
    assert r.returncode == 2 and "--out FILE, --verify or --bench" in r.stderr


# --- which runtime files a bundle carries ------------------------------------------------------------------


def test_bundle_carries_only_the_chosen_backends_builds(bundles, tmp_path, user_error, run_cli):
    if not bundles["vae"]["web"]:
        pytest.skip("onnxruntime-web could not be fetched here")
    src = bundles["vae"]["ship"]
    both = {f.removeprefix("web/") for f in manifest_of(src)["targets"]["web"]["files"]}
    for backend, others in (("wasm", "webgpu"), ("webgpu", "wasm")):
        m = ship(src / "model.onnx", tmp_path / backend, targets="web", web_backends=backend)
        files = {f.removeprefix("web/") for f in m["targets"]["web"]["files"]}
        assert {shipped_name(n) for n in BACKEND_FILES[backend]} <= files
        assert not {shipped_name(n) for n in BACKEND_FILES[others]} & files
        assert files < both and m["targets"]["web"]["backends"] == [backend]
        assert {p.name for p in (tmp_path / backend / "web").iterdir()} == files
    # the .wasm is shipped gzipped, and inflates to the package's file (checked against npm's copy in the cache)
    from gencompress.edge.web import cache_dir

    assert not [f for f in both if f.endswith(".wasm")] and "ort-wasm-simd-threaded.wasm.gz" in both
    assert (src / "web" / "ort-wasm-simd-threaded.wasm.gz").read_bytes() == (cache_dir() / "ort-wasm-simd-threaded.wasm.gz").read_bytes()
    user_error(run_cli("ship", src / "model.onnx", tmp_path / "bad", "--web-backends", "webgl"), "--web-backends", "wasm,webgpu")


# --- the page ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_page_isolates_itself_and_runs_wasm_on_threads(bundles, name, tmp_path):
    """Served by a plain static server: the service worker makes the page isolated, wasm runs on
    min(4, cores) threads, ≥ 40 dB from onnxruntime CPU, and the page's own verdict is green."""
    bundle = web_or_skip(bundles[name])
    with browser.serve(bundle / "web") as base:
        result = browser.run_page(base + "index.html?runs=5", tmp_path / "profile")
    assert "error" not in result, result
    assert result["cross_origin_isolated"] and result["isolation"] == "service worker (coi-sw.js)"
    assert result["backend"] == "wasm" and result["threads"] == min(4, result["hardware_concurrency"])
    assert page_psnr(bundle, result) >= 40
    assert result["verify"]["passed"] and result["verify_class"] == "ok" and result["verify_line"].startswith("verified: ")
    assert result["init_ms"] > 0 and result["first_run_ms"] > 0 and 0 < result["p10_ms"] <= result["ms_per_run"]


def test_page_without_isolation_runs_one_thread_and_says_why(bundles, tmp_path):
    bundle = web_or_skip(bundles["dcgan"])
    with browser.serve(bundle / "web") as base:
        result = browser.run_page(base + "index.html?coi=0&threads=2&runs=3", tmp_path / "profile")
    assert not result["cross_origin_isolated"] and result["threads"] == 1 and result["isolation"] == "?coi=0"
    assert result["verify"]["passed"]
    with browser.serve(bundle / "web", isolate=True) as base:  # the README's serve helper: headers, no reload
        result = browser.run_page(base + "index.html?threads=2&runs=3", tmp_path / "profile2")
    assert result["cross_origin_isolated"] and result["isolation"] == "server headers" and result["threads"] == 2


@pytest.mark.parametrize("name", ZOO)
def test_page_runs_webgpu_against_onnxruntime_cpu(bundles, name, tmp_path):
    bundle = web_or_skip(bundles[name])
    with browser.serve(bundle / "web") as base:
        result = browser.run_page(base + "index.html?backend=webgpu&runs=3", tmp_path / "profile", webgpu=True, timeout=300)
    assert "error" not in result, result
    if result["backend"] != "webgpu":
        pytest.skip(f"Chromium gave WebGPU no adapter here ({result['fallback']}) with {' '.join(browser.WEBGPU_FLAGS)}")
    db = page_psnr(bundle, result)
    assert db >= 40, f"{name}: WebGPU {db:.1f} dB from onnxruntime CPU"
    assert result["verify"]["passed"] and result["verify_class"] == "ok"


def test_page_falls_back_to_wasm_without_a_webgpu_adapter(bundles, tmp_path):
    bundle = web_or_skip(bundles["rvae"])
    with browser.serve(bundle / "web") as base:  # Chromium's default flags here (--disable-gpu): no adapter
        result = browser.run_page(base + "index.html?backend=webgpu&runs=3", tmp_path / "profile")
    assert result["backend_asked"] == "webgpu" and result["backend"] == "wasm" and "adapter" in result["fallback"]
    assert page_psnr(bundle, result) >= 40 and result["verify"]["passed"]


def test_page_shows_a_red_verdict_for_an_altered_model(bundles, tmp_path):
    bundle = web_or_skip(bundles["dcgan"])
    web = tmp_path / "web"
    shutil.copytree(bundle / "web", web)
    scaled_weights(web / "model.onnx", web / "model.onnx")
    with browser.serve(web) as base:
        result = browser.run_page(base + "index.html?runs=3", tmp_path / "profile")
    assert "error" not in result, result
    assert not result["verify"]["passed"] and result["verify"]["min_psnr_db"] < result["verify"]["bound_db"]
    assert result["verify_class"] == "bad" and result["verify_line"].startswith("NOT verified: ")


# --- the page's model form -------------------------------------------------------------------------------------


def qdq_matrix_model(op: str = "Gemm", zero_point=0, axis: int = 1, dtype=np.int8) -> onnx.ModelProto:
    """x -> Q -> DQ -> OP(DQ(8-bit weight [8, 6], per-channel scale on ``axis``)) -> Q -> DQ -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.integers(-100, 100, (8, 6)) + (128 if dtype == np.uint8 else 0)).astype(dtype)
    scale = rng.uniform(0.001, 0.01, w.shape[axis]).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array((np.full(w.shape[axis], zero_point) if np.isscalar(zero_point) else np.asarray(zero_point)).astype(dtype), "w_zp"),
             numpy_helper.from_array(np.float32(0.02), "x_scale"), numpy_helper.from_array(np.uint8(128), "x_zp"),
             numpy_helper.from_array(np.float32(0.05), "y_scale"), numpy_helper.from_array(np.uint8(128), "y_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=axis, name="w_dq"),
             helper.make_node(op, ["xd", "w"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "y_scale", "y_zp"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "y_scale", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def run_exact(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's DQ -> float path (optimizations off): these crafted weights are not saturation-free, so the
    fused int8 kernels of a CPU without VNNI (AVX2) compute other values, by design."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("op, axis, dtype, zero_point", [("Gemm", 1, np.int8, 0), ("MatMul", 1, np.int8, 0), ("MatMul", 0, np.int8, 0),
                                                        ("Gemm", 1, np.uint8, 128)])
def test_web_form_computes_the_same_with_the_int8_weights_kept(op, axis, dtype, zero_point):
    model = qdq_matrix_model(op, axis=axis, dtype=dtype, zero_point=zero_point)
    form, rewritten = web_form(model)
    assert rewritten == ["w_dq"]
    onnx.checker.check_model(form, full_check=True)
    assert [n.op_type for n in form.graph.node].count("DequantizeLinear") == 2  # the activations' pairs stay
    assert {t.name: t.data_type for t in form.graph.initializer}["w_q"] == model.graph.initializer[0].data_type  # 8 bits kept
    assert "w_zp" not in {t.name for t in form.graph.initializer}  # nothing reads it any more
    x = np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32) * 2
    want, got = run_exact(model, x), run_exact(form, x)
    step = 0.05  # at most one quantization step apart (int32 sums against float ones), and rarely
    assert np.abs(got - want).max() <= step * 1.001 and psnr(mse(want, got), float(np.ptp(want))) >= 40
    assert web_form(model)[0].SerializeToString() == form.SerializeToString()  # deterministic
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 3  # the input is not changed


def test_web_form_leaves_other_weights_alone():
    half = qdq_matrix_model()  # a float16 scale: Cast to float would not multiply with it
    scale = next(t for t in half.graph.initializer if t.name == "w_scale")
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale).astype(np.float16), "w_scale"))
    for model in (qdq_matrix_model(zero_point=[3, 0, 0, 0, 0, 0]), qdq_matrix_model("Mul"), half):  # zero points per channel; not a matrix product
        form, rewritten = web_form(model)
        assert rewritten == [] and form.SerializeToString() == model.SerializeToString()


def test_bundle_ships_the_web_form_where_it_applies(bundles, zoo_onnx, tmp_path):
    """Every layer int8 (--objective size): dcgan's latent projection is an int8 Gemm, run in float by the
    page's form; model.onnx is shipped as it is, web/model.onnx computes its outputs (CPU and page)."""
    import gencompress

    gencompress.quantize(zoo_onnx("dcgan"), tmp_path / "size.onnx", objective="size", check=False)
    m = ship(tmp_path / "size.onnx", tmp_path / "ship", targets="web") if bundles["dcgan"]["web"] else pytest.skip("no onnxruntime-web here")
    bundle = tmp_path / "ship"
    form = m["targets"]["web"]["model_form"]
    shipped = onnx.load(str(bundle / "model.onnx"))
    assert form["nodes"] == web_form(shipped)[1] and len(form["nodes"]) == 1
    assert (bundle / "model.onnx").read_bytes() == (tmp_path / "size.onnx").read_bytes()
    assert m["files"]["web/model.onnx"]["sha256"] != m["files"]["model.onnx"]["sha256"]
    feeds = sample_inputs(specs_of_model(shipped), 16, 0)
    want, got = ort_outputs(bundle / "model.onnx", feeds)["image"], ort_outputs(bundle / "web" / "model.onnx", feeds)["image"]
    assert psnr(mse(want, got), 2.0) >= 40
    for name in ZOO:  # the default objective's zoo bundles: shipped as they are where nothing applies
        entry = manifest_of(bundles[name]["ship"])["targets"].get("web", {})
        if entry.get("model_form", {}).get("same_as"):
            assert (bundles[name]["ship"] / "web" / "model.onnx").read_bytes() == (bundles[name]["ship"] / "model.onnx").read_bytes()
    web_or_skip(bundles["dcgan"])
    with browser.serve(bundle / "web") as base:
        result = browser.run_page(base + "index.html?runs=3", tmp_path / "profile")
    assert "error" not in result and result["verify"]["passed"] and page_psnr(bundle, result) >= 40, result.get("error")
