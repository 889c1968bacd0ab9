"""`gencompress compress`: end to end on the zoo, report figures recomputed independently, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gencompress.inputs import sample_inputs, specs_of_model

FAST = ("--samples", "32", "--no-bench", "--calib-size", "32", "--objective", "size")  # size: every layer int8, untimed


def _outputs(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", ["vae", "rvae", "cgan"])
def test_compress_every_zoo_model_from_onnx(name, zoo_onnx, tmp_path, run_cli):
    out = tmp_path / "out"
    r = run_cli("compress", zoo_onnx(name), out, *FAST)
    assert r.exit_code == 0, r
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "reference.onnx", "report.html", "report.json"]
    assert (out / "reference.onnx").read_bytes() == zoo_onnx(name).read_bytes()
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}


def test_compress_zoo_name_report_agrees_with_recomputation(tmp_path, run_cli):
    out = tmp_path / "out"
    r = run_cli("compress", "dcgan", out, "--samples", "64", "--batch", "4", "--threads", "1", "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert report == json.loads((out / "report.json").read_text())

    # sizes are the files' sizes
    assert report["sizes"]["reference"]["bytes"] == (out / "reference.onnx").stat().st_size
    assert report["sizes"]["candidate"]["bytes"] == (out / "model.onnx").stat().st_size
    assert report["sizes"]["ratio"] == pytest.approx((out / "model.onnx").stat().st_size / (out / "reference.onnx").stat().st_size)

    # fidelity: the same seeded draws from the prior, recomputed with plain numpy
    fid = report["fidelity"]
    calibration = next(step["options"] for step in report["recipe"] if step["pass"] in ("insert_qdq", "plan_int8"))
    assert fid["seed"] != calibration["seed"]  # held-back latents, not the calibration set
    specs = specs_of_model(onnx.load(str(out / "reference.onnx")))
    feeds = sample_inputs(specs, fid["samples"], fid["seed"])
    ref, cand = _outputs(out / "reference.onnx", feeds)[0], _outputs(out / "model.onnx", feeds)[0]
    metrics = fid["outputs"][0]
    mse = float(np.mean((ref.astype(np.float64) - cand) ** 2))
    assert metrics["peak"] == 2.0  # tanh output: nominal range recorded by the exporter
    assert metrics["mse"] == pytest.approx(mse, rel=1e-5)
    assert metrics["psnr_db"] == pytest.approx(10 * np.log10(2.0**2 / mse), abs=1e-3)
    assert metrics["max_abs_error"] == pytest.approx(float(np.max(np.abs(ref - cand))), rel=1e-5)
    assert metrics["psnr_db"] > 35  # int8 of a trained generator stays close to float

    lat = report["latency"]["results"]
    assert [(row["batch"], row["threads"]) for row in lat] == [(4, 1)]
    assert lat[0]["ratio"] == pytest.approx(lat[0]["model"]["p50_ms"] / lat[0]["reference"]["p50_ms"], rel=1e-6)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html.replace("http://www.w3.org", "")


def test_recipe_file_and_sweep(zoo_onnx, tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - pass: cleanup\n  - pass: nm_prune\n    options: {n: 2, m: 4}\n  - pass: weight_only_quantize\n    options: {bits: 8}\n")
    out = tmp_path / "a"
    r = run_cli("compress", zoo_onnx("vae"), out, "--recipe", recipe, "--samples", "32", "--no-bench")  # no --calib-size: the recipe sets it
    assert r.exit_code == 0, r
    report = json.loads((out / "report.json").read_text())
    assert [s["pass"] for s in report["recipe"]] == ["cleanup", "nm_prune", "weight_only_quantize"]

    out = tmp_path / "b"
    r = run_cli("compress", zoo_onnx("vae"), out, "--mode", "weight-only", "--sweep", "bits=8,4", "--samples", "32", "--no-bench")  # no calibration in weight-only
    assert r.exit_code == 0, r
    sweep = json.loads((out / "report.json").read_text())["sweep"]
    assert [row["label"] for row in sweep] == ["bits=8", "bits=4"]
    assert sweep[1]["bytes"] < sweep[0]["bytes"]
    assert all(isinstance(row["pareto"], bool) for row in sweep)
    assert (out / "sweep" / "bits-4.onnx").exists()


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe_text, fragment",
    [
        (None, "no such file"),
        ("passes: [cleanup", "malformed"),
        ("passes:\n  - pass: squash\n", "unknown pass 'squash'"),
        ("passes:\n  - pass: magnitude_prune\n    options: {sparsty: 0.5}\n", "unknown option(s) sparsty"),
        ("[]", "non-empty list"),
    ],
)
def test_bad_recipe(recipe_text, fragment, zoo_onnx, tmp_path, run_cli, user_error):
    recipe = tmp_path / "r.yaml"
    if recipe_text is not None:
        recipe.write_text(recipe_text)
    out = tmp_path / "out"
    user_error(run_cli("compress", zoo_onnx("vae"), out, "--recipe", recipe), fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--provider", "NoSuchExecutionProvider"), "provider"),
        (("--samples", "0"), "--samples"),
        (("--batch", "0"), "--batch"),
        (("--sweep", "colour=1,2"), "--sweep"),
        (("--sweep", "bits=8,4"), "--mode weight-only"),  # static int8 ignores bits: two identical rows
        (("--mode", "fp16", "--sweep", "calib=minmax,mse"), "--mode static"),
        (("--sparsity", "1.5"), "--sparsity"),
        (("--prune-mode", "nm", "--sparsity", "0.3"), "--nm"),  # N:M fixes the sparsity
        (("--bits", "4"), "--mode weight-only"),  # would quietly give static int8
        (("--mode", "fp16", "--calib", "mse"), "--mode static"),
        (("--nm", "1:4"), "--prune-mode nm"),
        (("--mode", "none", "--exclude", "node_linear"), "--exclude"),
    ],
)
def test_bad_options(args, fragment, zoo_onnx, tmp_path, run_cli, user_error):
    out = tmp_path / "out"
    user_error(run_cli("compress", zoo_onnx("vae"), out, *args), fragment)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_out_dir_that_is_a_file(zoo_onnx, tmp_path, run_cli, user_error):
    target = tmp_path / "taken"
    target.write_text("x")
    user_error(run_cli("compress", zoo_onnx("vae"), target), "is a file")
    assert target.read_text() == "x"


def test_never_overwrites_its_input_in_out_dir(zoo_onnx, tmp_path, run_cli, user_error):
    out = tmp_path / "out"
    assert run_cli("compress", zoo_onnx("vae"), out, *FAST).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in ("model.onnx", "reference.onnx"):
        user_error(run_cli("compress", out / name, out, *FAST), "same file as the input")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_out_dir_below_a_file(zoo_onnx, tmp_path, run_cli, user_error):
    (tmp_path / "taken").write_text("x")
    user_error(run_cli("compress", zoo_onnx("vae"), tmp_path / "taken" / "out", *FAST), "cannot create output folder")


def test_nm_prune_mode_prunes_without_sparsity(zoo_onnx, tmp_path, run_cli):
    out = tmp_path / "out"
    r = run_cli("compress", zoo_onnx("vae"), out, "--prune-mode", "nm", "--nm", "1:4", "--mode", "none", "--samples", "32", "--no-bench")
    assert r.exit_code == 0, r
    recipe = json.loads((out / "report.json").read_text())["recipe"]
    assert recipe == [{"pass": "cleanup", "options": {}}, {"pass": "nm_prune", "options": {"n": 1, "m": 4}}]


def test_prune_scope_flag(zoo_onnx, tmp_path, run_cli, user_error):
    """--prune-scope global: one magnitude threshold across the weights (exactly 50% overall,
    uneven per weight); it applies to unstructured pruning only."""
    out = tmp_path / "out"
    r = run_cli("compress", zoo_onnx("dcgan"), out, "--sparsity", "0.5", "--prune-scope", "global", "--mode", "none", "--samples", "32", "--no-bench")
    assert r.exit_code == 0, r
    recipe = json.loads((out / "report.json").read_text())["recipe"]
    assert recipe[1] == {"pass": "magnitude_prune", "options": {"sparsity": 0.5, "scope": "global"}}
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer if t.dims and len(t.dims) >= 2]
    zeros = [float((w == 0).mean()) for w in weights]
    assert abs(sum((w == 0).sum() for w in weights) / sum(w.size for w in weights) - 0.5) < 1e-3 and max(zeros) - min(zeros) > 0.1
    user_error(run_cli("compress", zoo_onnx("dcgan"), tmp_path / "o2", "--sparsity", "0.5", "--prune-mode", "channel", "--prune-scope", "global"),
               "--prune-scope")


def test_recipe_flags_with_a_recipe_file(zoo_onnx, tmp_path, run_cli, user_error):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - pass: cleanup\n")
    out = tmp_path / "out"
    user_error(run_cli("compress", zoo_onnx("vae"), out, "--recipe", recipe, "--mode", "fp16", "--sparsity", "0.5"), "--mode, --sparsity")
    assert not out.exists()


def test_compress_with_an_earlier_export(zoo_onnx, tmp_path):
    """``exported``: a torch model's export made earlier is the reference, byte for byte (a sweep
    exports each model once for its trials); anything else is one line."""
    import shutil

    import gencompress
    from gencompress.errors import GencompressError

    exported = tmp_path / "dcgan.onnx"
    shutil.copyfile(zoo_onnx("dcgan"), exported)
    before = exported.read_bytes()
    report = gencompress.compress("dcgan", tmp_path / "out", exported=exported, flags={"objective": "size"}, samples=16, bench=False)
    assert (tmp_path / "out" / "reference.onnx").read_bytes() == before == exported.read_bytes()
    assert report["source"] == "zoo:dcgan"
    with pytest.raises(GencompressError, match="only with a torch model"):
        gencompress.compress(exported, tmp_path / "o2", exported=exported, bench=False)
    plain = tmp_path / "plain.onnx"
    model = onnx.load(exported)
    del model.metadata_props[:]
    onnx.save(model, plain)
    with pytest.raises(GencompressError, match="not written by gencompress export"):
        gencompress.compress("dcgan", tmp_path / "o3", exported=plain, bench=False)
    nonfinite = tmp_path / "nan.onnx"
    model = onnx.load(exported)
    weight = model.graph.initializer[0]
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, nonfinite)
    with pytest.raises(GencompressError, match="NaN|non-finite|Inf"):
        gencompress.compress("dcgan", tmp_path / "o4", exported=nonfinite, bench=False)  # the checks an .onnx model gets
    with pytest.raises(GencompressError, match="earlier export, got int"):
        gencompress.compress("dcgan", tmp_path / "o5", exported=5, bench=False)
    assert not any((tmp_path / f"o{i}").exists() for i in range(2, 6))
