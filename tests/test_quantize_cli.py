"""`gencompress quantize` / `gencompress sensitivity` on the command line: output, --json, user errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

import gencompress


def test_api_verbs_are_exposed():
    from gencompress.verbs.quantize import quantize
    from gencompress.verbs.sensitivity import sensitivity

    # the API verbs are these functions behind an argument check (gencompress.arguments.checked)
    assert gencompress.quantize.__wrapped__ is quantize and gencompress.sensitivity.__wrapped__ is sensitivity


def test_help_has_an_example(run_cli):
    for verb in ("quantize", "sensitivity"):
        result = run_cli(verb, "--help")
        assert result.exit_code == 0
        assert f"gencompress {verb} g.onnx" in result.stdout
    assert "--rewrite / --no-rewrite" in run_cli("quantize", "--help").stdout


def test_default_output_is_a_short_table(run_cli, zoo_onnx, tmp_path):
    out = tmp_path / "g.int8.onnx"
    result = run_cli("quantize", "--objective", "size", zoo_onnx("dcgan"), out, "--calib-size", 32)
    assert result.exit_code == 0, result
    for fragment in ("size before", "size after", "ratio", "PSNR vs float", "held-back", "node_conv2d", "int8"):
        assert fragment in result.stdout
    # the rewrites ran by default: what they changed, no "float ConvTranspose" note
    assert "rewrite        on: 3 ConvTranspose layers" in result.stdout
    assert "node_ConvTranspose_20: ConvTranspose -> Flatten + Gemm 100x2048 + Reshape" in result.stdout
    assert "no int8 ConvTranspose kernel" not in result.stdout
    assert out.exists()


def test_rewrite_default_and_no_rewrite(run_cli, user_error, zoo_onnx, tmp_path):
    src = zoo_onnx("dcgan")
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "a.onnx", "--calib-size", 32, "--json")
    assert result.exit_code == 0, result
    on = json.loads(result.stdout)
    assert on["rewrite"]["applied"] and on["rewrite"]["setting"] == "auto" and len(on["rewrite"]["changes"]) == 3
    assert "ConvTranspose" not in {layer["op_type"] for layer in on["layers"]}
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "b.onnx", "--calib-size", 32, "--no-rewrite")
    assert result.exit_code == 0, result
    assert "rewrite        off: turned off (--no-rewrite)" in result.stdout
    assert "no int8 ConvTranspose kernel" in result.stdout and "without --no-rewrite" in result.stdout
    assert on["ratio"] <= 0.27
    # a ConvTranspose kept in float: the default leaves the graph alone, an explicit --rewrite is an error
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "c.onnx", "--calib-size", 32, "--exclude", "node_ConvTranspose_21", "--json")
    assert result.exit_code == 0, result
    kept = json.loads(result.stdout)
    assert not kept["rewrite"]["applied"] and "--exclude node_ConvTranspose_21" in kept["rewrite"]["reason"]
    assert [layer["node"] for layer in kept["float_layers"]] == ["node_ConvTranspose_21"]
    user_error(run_cli("quantize", "--objective", "size", src, tmp_path / "d.onnx", "--exclude", "ConvTranspose", "--rewrite"), "--no-rewrite")
    assert not (tmp_path / "d.onnx").exists()
    # weight-only and fp16 compute in float: no rewrites unless asked for
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "e.onnx", "--mode", "weight-only", "--json")
    assert result.exit_code == 0, result
    assert not json.loads(result.stdout)["rewrite"]["applied"]
    # a model without ConvTranspose: nothing to rewrite
    result = run_cli("quantize", "--objective", "size", zoo_onnx("rvae"), tmp_path / "f.onnx", "--calib-size", 32, "--json")
    assert json.loads(result.stdout)["rewrite"] == {"applied": False, "setting": "auto", "reason": "no ConvTranspose to rewrite"}


def test_json_and_calibration_data(run_cli, zoo_onnx, tmp_path):
    rng = np.random.default_rng(3)
    npz = tmp_path / "calib.npz"
    np.savez(npz, z=rng.normal(size=(40, 100)).astype(np.float32), label=rng.integers(0, 10, size=(40, 1)).astype(np.int64))
    src = zoo_onnx("cgan")
    shape = [d.dim_value or "N" for d in onnx.load(str(src)).graph.input[1].type.tensor_type.shape.dim]
    if len(shape) == 1:  # the label input is [N]
        np.savez(npz, z=rng.normal(size=(40, 100)).astype(np.float32), label=rng.integers(0, 10, size=40).astype(np.int64))
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "g.onnx", "--calib-data", npz, "--calib", "mse", "--exclude", "Gather", "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    # the last quarter of the rows is held back for the PSNR check, the rest calibrates
    assert report["calibration"]["samples"] == 30 and report["calibration"]["method"] == "mse"
    assert report["calibration"]["source"] == str(npz)
    assert report["evaluation"]["samples"] == 10 and "rows 30..39" in report["evaluation"]["source"]
    assert [layer["op_type"] for layer in report["float_layers"]] == ["Gather"]
    assert report["ratio"] < 0.3 and report["psnr_db"] > 30


def test_size_ratio_counts_the_inputs_external_data(run_cli, zoo_onnx, tmp_path):
    """A float model with its weights in a side file: "size before" is the whole model, not the
    13 kB graph file (the ratio was 29x before)."""
    src = tmp_path / "ext" / "g.onnx"
    src.parent.mkdir()
    onnx.save_model(onnx.load(str(zoo_onnx("dcgan"))), str(src), save_as_external_data=True, location="g.data", size_threshold=0)
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "g.int8.onnx", "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    assert report["bytes_before"] > 1_000_000 and report["ratio"] < 0.3


def test_weight_only_and_fp16_from_the_cli(run_cli, zoo_onnx, tmp_path):
    src = zoo_onnx("rvae")
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "w4.onnx", "--mode", "weight-only", "--bits", 4, "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["bits"] == 4
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "h.onnx", "--mode", "fp16")
    assert result.exit_code == 0, result
    assert "float16" in result.stdout
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "h16.onnx", "--mode", "fp16", "--fp16-io", "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["psnr_db"] > 60
    assert onnx.load(str(tmp_path / "h16.onnx")).graph.input[0].type.tensor_type.elem_type == TP.FLOAT16


def test_sensitivity_cli(run_cli, zoo_onnx):
    result = run_cli("sensitivity", zoo_onnx("vae"), "--calib-size", 32, "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    assert [r["rank"] for r in report["layers"]] == [1, 2, 3]
    result = run_cli("sensitivity", zoo_onnx("vae"), "--calib-size", 32)
    assert "rank" in result.stdout and "most damaging" in result.stdout


def test_unreachable_target_warns_or_fails_with_strict(run_cli, zoo_onnx, tmp_path):
    src = zoo_onnx("vae")
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "a.onnx", "--calib-size", 32, "--target-psnr", 150)
    assert result.exit_code == 0, result
    assert "cannot be met" in result.stderr and "closest" in result.stderr
    assert (tmp_path / "a.onnx").exists()
    result = run_cli("quantize", "--objective", "size", src, tmp_path / "b.onnx", "--calib-size", 32, "--target-psnr", 150, "--strict")
    assert result.exit_code == 2
    assert "cannot be met" in result.stderr and "dB short" in result.stderr
    assert not (tmp_path / "b.onnx").exists()


@pytest.fixture
def bad_npz(tmp_path):
    count = iter(range(100))

    def make(**arrays):
        path = tmp_path / f"bad{next(count)}.npz"
        np.savez(path, **arrays)
        return path

    return make


def test_bad_calibration_data(run_cli, user_error, zoo_onnx, tmp_path, bad_npz):
    src = zoo_onnx("dcgan")
    out = tmp_path / "o.onnx"
    z = np.zeros((8, 100, 1, 1), dtype=np.float32)
    cases = [
        (bad_npz(z=np.zeros((8, 99, 1, 1), dtype=np.float32)), ("shape",)),
        (bad_npz(z=z.astype(np.float64)), ("dtype", "float64")),
        (bad_npz(z=np.where(np.arange(800).reshape(8, 100, 1, 1) == 5, np.nan, z).astype(np.float32)), ("nan",)),
        (bad_npz(z=z, noise=z), ("unknown input", "noise")),
    ]
    for path, fragments in cases:
        result = run_cli("quantize", "--objective", "size", src, out, "--calib-data", path)
        user_error(result, *fragments)
    assert not out.exists()


def test_bad_options(run_cli, user_error, zoo_onnx, tmp_path):
    src = zoo_onnx("dcgan")
    out = tmp_path / "o.onnx"
    user_error(run_cli("quantize", "--objective", "size", src, out, "--bits", 3), "--bits")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--bits", 4), "weight-only")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--exclude", "no_such_layer"), "no_such_layer")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--calib-size", 0), "calib-size")
    user_error(run_cli("quantize", "--objective", "size", src, src), "same file")
    user_error(run_cli("quantize", tmp_path / "missing.onnx", out), "no such file")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--mode", "fp16", "--target-psnr", 40), "target-psnr")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--seed", -1), "--seed")
    # settings a mode does not use are refused, not silently ignored
    user_error(run_cli("quantize", "--objective", "size", src, out, "--mode", "weight-only", "--calib", "mse", "--per-tensor"), "--calib, --per-tensor", "only for --mode static")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--mode", "fp16", "--calib-size", 8), "--calib-size", "only for --mode static")
    user_error(run_cli("quantize", "--objective", "size", src, out, "--fp16-io"), "--fp16-io", "--mode fp16")
    user_error(run_cli("sensitivity", src, "--mode", "weight-only", "--percentile", 99), "--percentile")
    user_error(run_cli("sensitivity", src, "--seed", -1), "--seed")
    assert not out.exists()


def test_nothing_to_quantize(run_cli, user_error, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["z"], ["y"])], "g",
        [helper.make_tensor_value_info("z", TP.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    src = tmp_path / "plain.onnx"
    onnx.save(model, str(src))
    for mode in ("static", "weight-only"):
        user_error(run_cli("quantize", "--objective", "size", src, tmp_path / "o.onnx", "--mode", mode), "nothing to quantize")
    user_error(run_cli("sensitivity", src), "nothing to quantize")


def test_quantizing_twice_is_refused(run_cli, user_error, zoo_onnx, tmp_path):
    once = tmp_path / "once.onnx"
    assert run_cli("quantize", "--objective", "size", zoo_onnx("vae"), once, "--calib-size", 16).exit_code == 0
    user_error(run_cli("quantize", once, tmp_path / "twice.onnx"), "already quantized")
