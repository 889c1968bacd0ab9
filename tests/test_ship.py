"""`gencompress ship` and `compress --ship`: the bundle runs without torch in all three targets.

- python: sample.py in a fresh virtual environment holding only onnxruntime + numpy draws the
  latents `gencompress.inputs.sample_inputs` draws, and gives onnxruntime's outputs on model.onnx;
- ort: model.ort loads in onnxruntime and gives model.onnx's outputs;
- web: the page, served from 127.0.0.1 and opened in headless Chromium, reads latents.bin and its
  outputs are within 40 dB PSNR of onnxruntime CPU on the same latents; the canvas is drawn.
Every zoo model ships as int8 and runs in all three; bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from gencompress.inputs import InputSpec, sample_inputs, specs_of_model
from gencompress.runtime_check.fidelity import mse, psnr
from gencompress.edge import browser
from gencompress.edge.bundle import PartialShip, ship
from gencompress.edge.manifest import KNOWN_SPEC_FIELDS, prior_of
from gencompress.onnx_io import file_sha256

ZOO = ("dcgan", "vae", "rvae", "cgan")


def cli(*args):
    """`gencompress ARGS...` in-process (run_cli, usable from module-scoped fixtures too)."""
    from gencompress.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a bug
    return result


def ort_outputs(model: Path, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model) if not isinstance(model, bytes) else model, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, zoo_onnx):
    """name -> {"dir": compress-or-quantize folder, "ship": bundle, "web": bool}: int8 zoo models shipped.

    dcgan goes through `gencompress compress dcgan.onnx OUT --ship` (the CLI); the others through
    gencompress.quantize + gencompress.ship (the Python API)."""
    import gencompress

    root = tmp_path_factory.mktemp("ship")
    out = {}
    result = cli("compress", zoo_onnx("dcgan"), root / "dcgan", "--ship", "--no-bench", "--samples", "32", "--calib-size", "32")
    web = result.exit_code == 0
    if not web:  # only the web runtime may be missing (no registry, empty cache): the rest must be there
        assert result.exit_code == 2 and "web target" in result.stderr, result
    out["dcgan"] = {"dir": root / "dcgan", "ship": root / "dcgan" / "ship", "web": web, "stderr": result.stderr}
    for name in ZOO[1:]:
        folder = root / name
        gencompress.quantize(zoo_onnx(name), folder / "model.onnx", calib_size=32)
        try:
            gencompress.ship(folder / "model.onnx", folder / "ship")
            web = True
        except PartialShip:
            web = False
        out[name] = {"dir": folder, "ship": folder / "ship", "web": web}
    return out


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# --- compress --ship and the manifest ----------------------------------------------------------------


def test_compress_ship_writes_a_complete_bundle(bundles):
    entry = bundles["dcgan"]
    bundle, m = entry["ship"], manifest_of(entry["ship"])
    if not entry["web"]:
        pytest.skip(f"onnxruntime-web could not be fetched here: {entry['stderr'].strip()}")
    # the bundle's model is the compressed one, byte for byte
    assert (bundle / "model.onnx").read_bytes() == (entry["dir"] / "model.onnx").read_bytes()
    for name in ("sample.py", "model.ort", "required_operators.config", "test_vectors.bin", "web/index.html", "web/coi-sw.js",
                 "web/model.onnx", "web/latents.bin", "web/test_vectors.bin",
                 "web/ort.wasm.min.js", "web/ort-wasm-simd-threaded.mjs", "web/ort-wasm-simd-threaded.wasm.gz"):
        assert name in m["files"], name
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for name, f in m["files"].items():
        assert f["sha256"] == file_sha256(bundle / name) and f["bytes"] == (bundle / name).stat().st_size, name
    assert [t for t, e in m["targets"].items() if e["built"]] == ["python", "ort", "web"]
    assert m["inputs"] == [{"name": "z", "shape": ["N", 100, 1, 1], "dtype": "float32", "prior": {"kind": "normal", "mean": 0.0, "std": 1.0}}]
    (out,) = m["outputs"]
    assert out["name"] == "image" and out["shape"] == ["N", 1, 16, 16] and out["nominal_range"] == 2.0 and out["display_range"] == [-1.0, 1.0]
    assert m["opsets"]["ai.onnx"] >= 13
    # fidelity figures from the compress report beside the model
    report = json.loads((entry["dir"] / "report.json").read_text())
    assert m["compress_report"]["fidelity"]["outputs"]["image"]["psnr_db"] == report["fidelity"]["outputs"][0]["psnr_db"]
    assert m["tools"]["onnxruntime-web"] == m["targets"]["web"]["onnxruntime_web"] and m["tools"]["onnxruntime"]
    # operators of the reduced build, as onnxruntime's converter listed them
    ort = m["targets"]["ort"]
    listed = [ln for ln in (bundle / "required_operators.config").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ort["operator_count"] == sum(len(ln.split(";")[2].split(",")) for ln in listed)
    assert "com.microsoft;1" in ort["operators"] and "QLinearConv" in ort["operators"]["com.microsoft;1"]  # int8 kernels
    usability = ort["mobile_usability"]
    assert set(usability["execution_providers"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    assert (bundle / "mobile_usability.txt").read_text().count("Checking") >= 3


def test_sampler_draws_what_gencompress_draws(bundles):
    """sample.py's draw() against gencompress.inputs.sample_inputs: zoo specs and every dtype/prior."""
    spec = importlib.util.spec_from_file_location("bundle_sample", bundles["cgan"]["ship"] / "sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    assert set(KNOWN_SPEC_FIELDS) == {f for f in InputSpec.__dataclass_fields__}, "InputSpec changed: teach ship's samplers the new prior"
    hand = [InputSpec("z", (1, 7, 3)), InputSpec("h", (1, 5), "float16"), InputSpec("d", (1, 4), "float64"),
            InputSpec("label", (1,), "int64", 0, 9), InputSpec("k", (1, 2), "int32", -3, 3), InputSpec("mask", (1, 6), "bool"),
            InputSpec("t", (1, 3), "float32", prior="uniform:-0.5..2"), InputSpec("y", (1, 2, 10), "float32", prior="onehot:10"),
            InputSpec("n", (1, 2), "float16", prior="normal")]
    cases = [hand] + [specs_of_model(onnx.load(str(bundles[n]["ship"] / "model.onnx"))) for n in ZOO]
    for specs in cases:
        entries = [{"name": s.name, "shape": ["N", *s.shape[1:]], "dtype": s.dtype, "prior": prior_of(s)} for s in specs]
        for n, seed in ((1, 0), (8, 0), (5, 123)):
            want = sample_inputs(specs, n, seed)
            got = sample.draw(entries, n, seed)
            assert list(got) == list(want)
            for k in want:
                assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (k, n, seed)
    for name in ZOO:  # the manifest's inputs are the ones the draws above were made from
        m = manifest_of(bundles[name]["ship"])
        specs = specs_of_model(onnx.load(str(bundles[name]["ship"] / "model.onnx")))
        assert [i["prior"] for i in m["inputs"]] == [prior_of(s) for s in specs]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtual environment with only onnxruntime and numpy (and their dependencies) from the package index.

    Made without pip inside (this venv's pip installs into it with --python), .pyc compilation skipped: ~8 s."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                        "--disable-pip-version-check", "onnxruntime", "numpy"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        reason = " ".join((r.stderr or r.stdout).split())[-300:]
        if any(k in reason for k in ("Could not find a version", "No matching distribution", "connection", "Connection", "resolve")):
            pytest.skip(f"pip cannot reach the package index for onnxruntime/numpy: {reason}")
        pytest.fail(f"pip install onnxruntime numpy failed: {reason}")
    return python


def test_sample_py_runs_in_a_fresh_venv_with_only_onnxruntime_and_numpy(bundles, fresh_venv, tmp_path):
    bundle = bundles["dcgan"]["ship"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    for module in ("torch", "gencompress"):  # run from tmp_path: the repository is not on sys.path
        r = subprocess.run([str(fresh_venv), "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert r.returncode != 0 and f"No module named '{module}'" in r.stderr
    r = subprocess.run([str(fresh_venv), str(bundle / "sample.py"), "--n", "8", "--seed", "0", "--out", str(tmp_path / "x.npz")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "x.npz")
    assert sorted(data.files) == ["input.z", "output.image"]
    want = sample_inputs(specs_of_model(onnx.load(str(bundle / "model.onnx"))), 8, 0)
    assert np.array_equal(data["input.z"], want["z"])
    ref = ort_outputs(bundle / "model.onnx", want)["image"]
    np.testing.assert_allclose(data["output.image"], ref, rtol=0, atol=1e-5)
    # PNG grid of 8 tiles (16x16 with 2-pixel gaps, 3 columns)
    r = subprocess.run([str(fresh_venv), str(bundle / "sample.py"), "--n", "8", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    width, height, pixels = read_png(tmp_path / "g.png")
    assert (width, height) == (3 * 18 + 2, 3 * 18 + 2)
    assert pixels.std() > 10  # digits, not a flat picture


def read_png(path: Path):
    """Width, height and grey pixels of an 8-bit greyscale PNG with filter 0 (what sample.py writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
    assert not raw[:, 0].any()
    return w, h, raw[:, 1:]


# --- every zoo model, all three targets ---------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_runs_in_python_and_ort_format(bundles, name, tmp_path):
    bundle = bundles[name]["ship"]
    m = manifest_of(bundle)
    r = subprocess.run([sys.executable, str(bundle / "sample.py"), "--n", "6", "--seed", "3", "--out", str(tmp_path / "s.npz")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "s.npz")
    feeds = {i["name"]: data[f"input.{i['name']}"] for i in m["inputs"]}
    want = ort_outputs(bundle / "model.onnx", feeds)
    ort_format = ort_outputs((bundle / "model.ort").read_bytes(), feeds)
    for out in m["outputs"]:
        np.testing.assert_allclose(data[f"output.{out['name']}"], want[out["name"]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ort_format[out["name"]], want[out["name"]], rtol=0, atol=1e-5)
    assert m["targets"]["ort"]["check"]["max_abs_diff_vs_onnx"] <= 1e-4
    if name == "cgan":  # the int64 label, drawn from its recorded range
        assert data["input.label"].dtype == np.int64 and set(np.unique(data["input.label"])) <= set(range(10))


def chromium_or_skip() -> str:
    if not Path(browser.CHROMIUM).exists():
        pytest.skip(f"Chromium is not installed ({browser.CHROMIUM})")
    return browser.CHROMIUM


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_runs_in_the_web_page(bundles, name, tmp_path):
    chromium = chromium_or_skip()
    if not bundles[name]["web"]:
        pytest.skip("onnxruntime-web could not be fetched here (npm registry unreachable and no cached copy)")
    bundle = bundles[name]["ship"]
    m = manifest_of(bundle)
    shot = tmp_path / "page.png" if name == "dcgan" else None
    with browser.serve(bundle / "web") as base:
        result = browser.run_page(base + "index.html", tmp_path / "profile", chromium=chromium, screenshot=shot)
    assert "error" not in result, result
    latents = m["targets"]["web"]["latents"]
    blob = (bundle / "web" / "latents.bin").read_bytes()
    feeds = {}
    for spec in latents["inputs"]:  # the page fed exactly the numpy draws of latents.bin
        arr = np.frombuffer(blob, dtype=np.dtype(spec["dtype"]).newbyteorder("<"), count=int(np.prod(spec["shape"])),
                            offset=spec["offset"]).reshape(spec["shape"])
        got = np.asarray(result["inputs"][spec["name"]]["data"], dtype=arr.dtype).reshape(result["inputs"][spec["name"]]["shape"])
        assert np.array_equal(got, arr), spec["name"]
        feeds[spec["name"]] = arr
    assert np.array_equal(feeds[latents["inputs"][0]["name"]], sample_inputs(specs_of_model(onnx.load(str(bundle / "model.onnx"))), latents["n"], 0)[latents["inputs"][0]["name"]])
    want = ort_outputs(bundle / "model.onnx", feeds)
    for out in m["outputs"]:
        got = np.asarray(result["outputs"][out["name"]]["data"], np.float32).reshape(result["outputs"][out["name"]]["shape"])
        assert got.shape == want[out["name"]].shape
        peak = out["nominal_range"] or float(np.ptp(want[out["name"]]))
        db = psnr(mse(want[out["name"]], got), peak)
        assert db >= 40, f"{name} {out['name']}: PSNR {db:.1f} dB between onnxruntime-web (wasm) and onnxruntime CPU"
    assert result["ms_per_run"] > 0 and result["backend"] == "wasm" and result["verify"]["passed"]
    assert result["threads"] == min(4, result["hardware_concurrency"]) and result["cross_origin_isolated"]
    if name == "cgan":  # the page's own seeded sampler (no latents.bin): int64 labels as BigInt64Array, in range
        with browser.serve(bundle / "web") as base:
            drawn = browser.run_page(base + "index.html?seed=3&n=5", tmp_path / "profile2", chromium=chromium)
        assert "error" not in drawn and drawn["latents"].startswith("JavaScript")
        labels = np.asarray(drawn["inputs"]["label"]["data"])
        assert drawn["inputs"]["label"]["dtype"] == "int64" and labels.shape == (5,) and set(labels) <= set(range(10))
        z = np.asarray(drawn["inputs"]["z"]["data"])
        assert z.shape == (5 * 100,) and 0.5 < z.std() < 1.5  # standard normal draws
        image = np.asarray(drawn["outputs"]["image"]["data"]).reshape(drawn["outputs"]["image"]["shape"])
        assert image.shape == (5, 1, 16, 16) and np.isfinite(image).all()
    if shot is not None:  # the sample grid is drawn: a 4x4 grid of 16x16 samples shown 4x, many grey levels
        width, height, pixels = read_png_rgb(shot)
        assert (width, height) == (4 * (64 + 2) + 2, 4 * (64 + 2) + 2)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
        assert (pixels.max(axis=2) > 200).mean() > 0.05  # bright strokes, not a blank or background-only canvas


def read_png_rgb(path: Path):
    """Chromium's screenshot decoded (8-bit RGB/RGBA, any filter) — small PNG reader for the test."""
    data = path.read_bytes()
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(w * bpp, np.int32)
        if f == 0:
            out[y] = line
        elif f == 2:
            out[y] = (line + prev) % 256
        else:  # 1 (sub), 3 (average), 4 (Paeth): per byte, left neighbour needed
            row, line, prev = [0] * (w * bpp), line.tolist(), prev.tolist()
            for i in range(w * bpp):
                a = row[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (line[i] + pred) % 256
            out[y] = row
    return w, h, out.reshape(h, w, bpp)[..., :3].astype(np.uint8)


# --- bad input: one line, exit 2, nothing written, input untouched ----------------------------------------


def custom_op_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Frobnicate", ["z"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def digest_tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def assert_nothing_written(parent: Path, before: dict, out: Path):
    assert not out.exists(), f"{out} was written"
    assert digest_tree(parent) == before
    assert not [p for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


def test_model_the_ort_converter_rejects_is_one_line(tmp_path, user_error):
    model = custom_op_model(tmp_path / "custom.onnx")
    before = digest_tree(tmp_path)
    for targets in ("python,ort,web", "ort"):
        result = cli("ship", model, tmp_path / "out", "--target", targets)
        user_error(result, "Frobnicate")
        assert_nothing_written(tmp_path, before, tmp_path / "out")


def test_not_onnx_missing_file_and_bad_target(tmp_path, user_error):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    before = digest_tree(tmp_path)
    user_error(cli("ship", junk, tmp_path / "out"), "junk.onnx", "not")
    user_error(cli("ship", tmp_path / "missing.onnx", tmp_path / "out"), "missing.onnx", "no such file")
    user_error(cli("ship", tmp_path, tmp_path / "out"), "without model.onnx")
    user_error(cli("ship", junk, tmp_path / "out", "--target", "python,android"), "--target", "python,ort,web")
    assert_nothing_written(tmp_path, before, tmp_path / "out")


def test_out_dir_holding_the_model_or_not_a_bundle_is_refused(bundles, tmp_path, user_error):
    folder = bundles["vae"]["dir"]
    model = folder / "model.onnx"
    for out in (folder, folder.parent):  # the model's folder, and a folder containing it
        before = digest_tree(folder)
        user_error(cli("ship", model, out), "holds the model")
        assert digest_tree(folder) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    user_error(cli("ship", model, busy), "not empty", "not a gencompress bundle")
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    user_error(cli("ship", model, tmp_path / "file"), "is a file")


def test_npm_unreachable_fails_web_alone(bundles, tmp_path, monkeypatch, user_error):
    """Registry unreachable and nothing cached: python + ort are built, web/ is absent, exit 2, one line."""
    monkeypatch.setenv("GENCOMPRESS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "empty-npm-cache"))
    model = bundles["rvae"]["dir"] / "model.onnx"
    before = model.read_bytes()
    out = tmp_path / "bundle"
    result = cli("ship", model, out)
    user_error(result, "web target", "onnxruntime-web", "fix:", "npm", "python, ort built in")
    assert model.read_bytes() == before
    m = manifest_of(out)
    assert m["targets"]["python"]["built"] and m["targets"]["ort"]["built"]
    assert m["targets"]["web"]["built"] is False and "npm" in m["targets"]["web"]["error"]
    assert not (out / "web").exists() and (out / "sample.py").is_file() and (out / "model.ort").is_file()
    assert set(m["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    # a second run over the partial bundle replaces it (it is a gencompress bundle)
    result = cli("ship", model, out, "--target", "python", "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout) == manifest_of(out)
    assert not (out / "model.ort").exists() and list(manifest_of(out)["targets"]) == ["python"]


def test_fixed_batch_model_without_metadata_ships_for_python_and_ort(tmp_path):
    """A plain graph (no gencompress metadata) whose input fixes the batch at 2: sample.py runs any --n
    in chunks of 2, and its draws are still sample_inputs' (specs read off the graph)."""
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["z", "w"], ["y"]), helper.make_node("Tanh", ["y"], ["out"])], "g",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    manifest = ship(model, tmp_path / "bundle", targets="python,ort")
    assert manifest["batch"] == 2 and manifest["inputs"][0]["shape"] == [2, 3] and manifest["outputs"][0]["kind"] == "vector"
    r = subprocess.run([sys.executable, str(tmp_path / "bundle" / "sample.py"), "--n", "5", "--seed", "7", "--out", str(tmp_path / "s.npz")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "s.npz")
    z = sample_inputs(specs_of_model(onnx.load(str(model))), 5, 7)["z"]
    assert np.array_equal(data["input.z"], z)
    np.testing.assert_allclose(data["output.out"], np.tanh(z @ w), rtol=0, atol=1e-6)
    png = subprocess.run([sys.executable, str(tmp_path / "bundle" / "sample.py"), "--out", str(tmp_path / "s.png")], capture_output=True, text=True)
    assert png.returncode == 2 and "use --out FILE.npz" in png.stderr  # a vector output is not a picture


def test_int4_model_whose_ort_file_does_not_load_is_an_error(zoo_onnx, tmp_path, user_error):
    """onnxruntime's converter writes int4 weights into the .ort, its ORT-format reader refuses them:
    an error naming the way out, nothing written. Without the ort target the model ships."""
    import gencompress

    model = tmp_path / "int4" / "model.onnx"
    gencompress.quantize(zoo_onnx("vae"), model, mode="weight-only", bits=4)
    before = digest_tree(tmp_path)
    user_error(cli("ship", model, tmp_path / "out", "--target", "python,ort"), "ort target", "does not load back", "--target python,web")
    assert_nothing_written(tmp_path, before, tmp_path / "out")
    assert cli("ship", model, tmp_path / "out", "--target", "python").exit_code == 0


def tiny_generator(path: Path, meta: dict | None = None, weight=None) -> Path:
    """z [N, 8] → Gemm → Reshape → Tanh image [N, 1, 4, 4], with the exporter's metadata (``meta`` overrides)."""
    from gencompress.inputs import specs_to_json

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 16)) * 0.5).astype(np.float32) if weight is None else weight
    inits = [onnx.numpy_helper.from_array(w, "w"),
             onnx.numpy_helper.from_array(np.zeros(16, np.float32), "b"),
             onnx.numpy_helper.from_array(np.array([-1, 1, 4, 4], np.int64), "shape")]
    nodes = [helper.make_node("Gemm", ["z", "w", "b"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Tanh", ["r"], ["image"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entries = {"gencompress.inputs": specs_to_json([InputSpec("z", (1, 8))]), "gencompress.output_range": "2.0", **(meta or {})}
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_compress_ship_with_npm_unreachable_keeps_everything_else(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCOMPRESS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "empty-npm-cache"))
    model = tiny_generator(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    result = cli("compress", model, out, "--ship", "--no-bench", "--samples", "16", "--calib-size", "16")
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result  # compress logs its steps; the error is the last line
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gencompress: error: web target") and "fix:" in last and "python, ort built in" in last
    assert {p.name for p in out.iterdir()} == {"reference.onnx", "model.onnx", "report.json", "report.html", "ship"}
    m = manifest_of(out / "ship")
    assert m["targets"]["python"]["built"] and m["targets"]["ort"]["built"] and not m["targets"]["web"]["built"]
    assert not (out / "ship" / "web").exists()
    assert (out / "ship" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert m["compress_report"]["fidelity"]["outputs"]["image"]["psnr_db"] > 30
    assert m["source"]["model"] == str((out / "model.onnx").resolve())  # not the staging copy
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


@pytest.mark.parametrize("meta, weight, fragment", [
    ({"gencompress.output_range": "nan"}, None, "output_range"),
    ({"gencompress.inputs": '[{"name": "z", "shape": [1, -8], "dtype": "float32"}]'}, None, "gencompress.inputs"),
    ({"gencompress.inputs": '[{"name": "z", "shape": [1, 8], "dtype": "float32", "prior": "data:rows.npz"}]'}, None, "priors only"),
    ({}, np.full((8, 16), np.nan, np.float32), "NaN"),
])
def test_hostile_metadata_and_weights_are_one_line(meta, weight, fragment, tmp_path, user_error, monkeypatch):
    model = tiny_generator(tmp_path / "m" / "g.onnx", meta=meta, weight=weight)
    if "data:" in str(meta):  # the data file exists: the refusal is about shipping it, not reading it
        np.savez(tmp_path / "rows.npz", z=np.zeros((4, 8), np.float32))
    before = digest_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    user_error(cli("ship", model, tmp_path / "out", "--target", "python,ort"), fragment)
    assert_nothing_written(tmp_path, before, tmp_path / "out")
