"""`gencompress prune`: table and JSON output, sparse initializers, one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


def _tiny(path, *, weights=True):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "conv.w")] if weights else []
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1])] if weights else [
        helper.make_node("Relu", ["x"], ["c"], name="relu")
    ]
    nodes.append(helper.make_node("Tanh", ["c"], ["y"], name="tanh"))
    out_channels = 16 if weights else 8
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, 5, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny(tmp_path):
    return _tiny(tmp_path / "tiny.onnx")


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_help_has_an_example(run_cli):
    result = run_cli("prune", "--help")
    assert result.exit_code == 0
    assert "gencompress prune g.onnx" in result.stdout and "--sparsity" in result.stdout and "--mode" in result.stdout


def test_table_and_json(run_cli, tiny, tmp_path):
    out = tmp_path / "out.onnx"
    result = run_cli("prune", tiny, out, "--sparsity", "0.5")
    assert result.exit_code == 0, result
    assert "conv.w" in result.stdout and "16x8x3x3" in result.stdout and "deflated" in result.stdout
    assert out.exists()

    result = run_cli("prune", tiny, out, "--sparsity", "0.75", "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    (row,) = report["initializers"]
    assert row["name"] == "conv.w" and row["status"] == "pruned"
    assert row["zeros_after"] == round(0.75 * 16 * 8 * 9)
    w = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    assert np.mean(w == 0) == pytest.approx(row["sparsity"])
    t = report["totals"]
    assert t["deflate_after"] < t["deflate_before"] and t["bytes_before"] > 0

    result = run_cli("prune", tiny, out, "--mode", "nm", "--nm", "2:4", "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["initializers"][0]["sparsity"] == 0.5


def test_exclude_that_matches_nothing_warns_and_continues(run_cli, tiny, tmp_path):
    result = run_cli("prune", tiny, tmp_path / "o.onnx", "--sparsity", "0.5", "--exclude", "no_such_layer", "--json")
    assert result.exit_code == 0, result
    assert "no_such_layer" in result.stderr and "warning" in result.stderr
    assert json.loads(result.stdout)["initializers"][0]["status"] == "pruned"


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "nan"])
def test_sparsity_out_of_range(run_cli, user_error, tiny, tmp_path, value):
    user_error(run_cli("prune", tiny, tmp_path / "o.onnx", "--sparsity", value), "--sparsity")
    assert not (tmp_path / "o.onnx").exists()


def test_option_errors(run_cli, user_error, tiny, tmp_path):
    out = tmp_path / "o.onnx"
    user_error(run_cli("prune", tiny, out), "--sparsity is required")
    user_error(run_cli("prune", tiny, out, "--sparsity", "abc"), "sparsity")
    user_error(run_cli("prune", tiny, out, "--mode", "nm", "--nm", "4:2"), "--nm")
    user_error(run_cli("prune", tiny, out, "--mode", "nm", "--nm", "two"), "--nm")
    user_error(run_cli("prune", tiny, out, "--mode", "nm", "--sparsity", "0.3"), "does not match")
    user_error(run_cli("prune", tiny, out, "--mode", "bogus", "--sparsity", "0.5"), "mode")
    user_error(run_cli("prune", tiny, out, "--sparsity", "0.5", "--min-size", "-1"), "--min-size")
    assert not out.exists()


def test_out_equal_to_in_is_refused(run_cli, user_error, tiny):
    before = tiny.read_bytes()
    user_error(run_cli("prune", tiny, tiny, "--sparsity", "0.5"), "same file")
    assert tiny.read_bytes() == before


def test_bad_files(run_cli, user_error, tiny, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny.read_bytes()[: len(tiny.read_bytes()) // 2])
    user_error(run_cli("prune", truncated, tmp_path / "o.onnx", "--sparsity", "0.5"), "truncated.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    user_error(run_cli("prune", text, tmp_path / "o.onnx", "--sparsity", "0.5"), "notes.onnx")
    user_error(run_cli("prune", tmp_path / "missing.onnx", tmp_path / "o.onnx", "--sparsity", "0.5"), "no such file")
    assert not (tmp_path / "o.onnx").exists()


def test_model_without_prunable_weights(run_cli, user_error, tmp_path):
    src = _tiny(tmp_path / "relu.onnx", weights=False)
    user_error(run_cli("prune", src, tmp_path / "o.onnx", "--sparsity", "0.5"), "no prunable weights")
    assert not (tmp_path / "o.onnx").exists()


def test_quantized_model_says_to_prune_first(run_cli, user_error, tiny, tmp_path):
    from gencompress.verbs.quantize import quantize

    q = tmp_path / "q.onnx"
    quantize(tiny, q, objective="size")  # every layer int8 (balanced may keep a tiny model in float compute)
    user_error(run_cli("prune", q, tmp_path / "o.onnx", "--sparsity", "0.5"), "prune the float model, then quantize")


def test_sparse_initializers_load_in_onnxruntime(run_cli, tiny, tmp_path):
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    assert run_cli("prune", tiny, dense, "--sparsity", "0.9").exit_code == 0
    result = run_cli("prune", tiny, sparse, "--sparsity", "0.9", "--sparse-initializers", "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    assert report["sparse_initializers"]["converted"] == ["conv.w"]
    proto = onnx.load(str(sparse))
    assert [s.values.name for s in proto.graph.sparse_initializer] == ["conv.w"] and not proto.graph.initializer
    assert proto.graph.sparse_initializer[0].indices.data_type == TensorProto.INT64
    onnx.checker.check_model(proto)  # structurally valid (full_check's type inference rejects it: documented)
    assert report["totals"]["bytes_after"] < 0.5 * report["totals"]["bytes_before"]
    x = np.random.default_rng(1).standard_normal((2, 8, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(sparse, x), _run(dense, x))

    # at 50% a sparse weight would be larger (12 bytes per non-zero vs 4 per entry): stays dense
    result = run_cli("prune", tiny, tmp_path / "half.onnx", "--sparsity", "0.5", "--sparse-initializers", "--json")
    assert json.loads(result.stdout)["sparse_initializers"]["kept_dense"] == ["conv.w"]

    # a model with sparse initializers can be pruned again (they are read as dense)
    again = tmp_path / "again.onnx"
    result = run_cli("prune", sparse, again, "--sparsity", "0.95", "--json")
    assert result.exit_code == 0, result
    assert "sparse initializer" in result.stderr
    w = numpy_helper.to_array(onnx.load(str(again)).graph.initializer[0])
    assert np.mean(w == 0) == pytest.approx(0.95, abs=0.005)


def test_channel_mode_explains_kept_channels(run_cli, tiny, tmp_path):
    result = run_cli("prune", tiny, tmp_path / "c.onnx", "--mode", "channel", "--sparsity", "0.5")
    assert result.exit_code == 0, result
    assert "channels" in result.stdout and "graph output" in result.stdout
    assert "nothing was pruned" in result.stderr


def test_nm_mode_says_when_nothing_was_pruned(run_cli, tiny, tmp_path):
    # N:M takes no --sparsity, but an all-excluded model must still be called out
    result = run_cli("prune", tiny, tmp_path / "nm.onnx", "--mode", "nm", "--exclude", "conv")
    assert result.exit_code == 0, result
    assert "nothing was pruned" in result.stderr
