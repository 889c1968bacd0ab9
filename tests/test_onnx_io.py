"""Model I/O: external data is read whole, outputs are self-contained, atomic and never over an input."""

import onnx
import pytest

from gencompress.errors import GencompressError
from gencompress.onnx_io import load_model, save_model


def _with_external_data(src, folder):
    model = onnx.load(str(src))
    path = folder / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (folder / "ext.onnx.data").stat().st_size > path.stat().st_size  # the weights really moved out
    return path


def test_external_data_in_self_contained_out(zoo_onnx, tmp_path, run_cli):
    src = _with_external_data(zoo_onnx("vae"), tmp_path)
    out = tmp_path / "out" / "q.onnx"
    r = run_cli("quantize", src, out)
    assert r.exit_code == 0, r
    model = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx"]


def test_missing_external_data_is_one_line(zoo_onnx, tmp_path, run_cli, user_error):
    src = _with_external_data(zoo_onnx("vae"), tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    user_error(run_cli("prune", src, tmp_path / "p.onnx", "--sparsity", "0.5"), "external data")


def test_save_is_atomic_and_keeps_inputs(zoo_onnx, tmp_path):
    src = zoo_onnx("vae")
    before = src.read_bytes()
    with pytest.raises(GencompressError, match="same file as the input"):
        save_model(load_model(src), src, inputs=[src])
    assert src.read_bytes() == before
    out = tmp_path / "copy.onnx"
    save_model(load_model(src), out)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.onnx"]  # no temp file left behind
    assert onnx.load(str(out)) == onnx.load(str(src))


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", b"ir_version: 7"])
def test_not_onnx(content, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(GencompressError, match="bad.onnx"):
        load_model(bad)


def test_unwritable_folder_is_one_line(zoo_onnx, tmp_path, run_cli, user_error):
    (tmp_path / "taken").write_text("x")
    user_error(run_cli("export", "vae", tmp_path / "taken" / "g.onnx"), "cannot create output folder")
    user_error(run_cli("prune", zoo_onnx("vae"), "/proc/g.onnx", "--sparsity", "0.5"), "cannot write there")


@pytest.mark.parametrize("value", ['[{"name": "z"}]', "not json", '[{"name": "z", "shape": [1, 16], "dtype": "complex"}]'])
def test_malformed_input_metadata_is_one_line(value, zoo_onnx, tmp_path, run_cli, user_error):
    model = onnx.load(str(zoo_onnx("vae")))
    for prop in model.metadata_props:
        if prop.key == "gencompress.inputs":
            prop.value = value
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    user_error(run_cli("check", bad, zoo_onnx("vae")), "gencompress.inputs")
