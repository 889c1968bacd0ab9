"""Image inputs: a folder of PNG/JPEG files as --data, and natural photographs (not noise) as the
default draw of an image-shaped input; bad folders are one-line errors (exit 2 at the CLI)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _photo(path, size=(24, 20), mode="RGB", seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, format=fmt)
    return path


def _image_model(path, channels=3, side=16, output_range=2.0, prior=None):
    """image [N, C, side, side] -> Conv 1x1 -> Tanh, with the exporter's metadata."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((channels, channels, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Tanh", ["c"], ["out"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, side, side])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, side, side])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec = {"name": "image", "shape": [1, channels, side, side], "dtype": "float32", "low": 0, "high": 1}
    if prior:
        spec["prior"] = prior
    model.metadata_props.add(key="gencompress.inputs", value=__import__("json").dumps([spec]))
    if output_range:
        model.metadata_props.add(key="gencompress.output_range", value=repr(output_range))
    onnx.save(model, str(path))
    return path


def test_folder_images_are_fitted_to_the_input_in_its_range(tmp_path):
    from gencompress.inputs import load_npz_inputs, specs_of_model

    folder = tmp_path / "imgs"
    folder.mkdir()
    _photo(folder / "b.png", (40, 24), seed=1)
    _photo(folder / "a.jpg", (16, 16), seed=2, fmt="JPEG")
    (folder / "notes.txt").write_text("ignored")
    model = _image_model(tmp_path / "m.onnx")
    specs = specs_of_model(onnx.load(str(model)))
    feeds = load_npz_inputs(folder, specs)
    x = feeds["image"]
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0  # a tanh model takes [-1, 1]
    # sorted by name: a.jpg (16x16, taken whole) first; its pixels mapped 0..255 -> -1..1
    pixels = np.asarray(Image.open(folder / "a.jpg").convert("RGB")).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(x[0], pixels / 255 * 2 - 1, atol=1e-6)
    # the same folder, the same rows; a [0, 1] model gets [0, 1]
    np.testing.assert_array_equal(load_npz_inputs(folder, specs)["image"], x)
    unit = specs_of_model(onnx.load(str(_image_model(tmp_path / "u.onnx", output_range=None))))
    np.testing.assert_allclose(load_npz_inputs(folder, unit)["image"], (x + 1) / 2, atol=1e-6)


def test_image_inputs_default_to_natural_photographs_not_noise(tmp_path):
    from gencompress.inputs import sample_inputs, specs_of_model

    specs = specs_of_model(onnx.load(str(_image_model(tmp_path / "m.onnx"))))
    assert specs[0].prior == "images:-1..1" and "natural images" in specs[0].describe_prior()
    a, b = sample_inputs(specs, 32, seed=0)["image"], sample_inputs(specs, 32, seed=0)["image"]
    np.testing.assert_array_equal(a, b)  # seeded
    assert a.shape == (32, 3, 16, 16) and -1 <= a.min() and a.max() <= 1
    assert len({row.tobytes() for row in a}) == 32
    # photographs, not noise: neighbouring pixels agree far more than independent draws would
    corr = np.corrcoef(a[..., :, :-1].ravel(), a[..., :, 1:].ravel())[0, 1]
    assert corr > 0.5
    # a prior chosen explicitly stays: a user who asks for noise gets noise
    noise = specs_of_model(onnx.load(str(_image_model(tmp_path / "n.onnx", prior="normal"))))
    assert noise[0].prior == "normal"
    # latents keep their priors
    gray = specs_of_model(onnx.load(str(_image_model(tmp_path / "g.onnx", channels=1, output_range=1.0))))
    assert gray[0].prior == "images:0..1" and sample_inputs(gray, 4, 1)["image"].shape == (4, 1, 16, 16)


def test_bad_folders_are_one_line_errors(tmp_path):
    from gencompress.errors import GencompressError
    from gencompress.inputs import load_npz_inputs, specs_of_model

    specs = specs_of_model(onnx.load(str(_image_model(tmp_path / "m.onnx"))))
    cases = []
    small = tmp_path / "small"
    small.mkdir()
    _photo(small / "x.png", (12, 30))
    cases.append((small, "12x30 pixels, smaller than the input's 16x16"))
    gray = tmp_path / "gray"
    gray.mkdir()
    _photo(gray / "x.png", mode="L")
    cases.append((gray, "L image, the input takes RGB"))
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    _photo(rgba / "x.png", mode="RGBA")
    cases.append((rgba, "RGBA image"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    _photo(corrupt / "a.png")
    (corrupt / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases.append((corrupt, "b.jpg (input 'image'): not a readable PNG/JPEG image"))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    good = _photo(tmp_path / "whole.png", (64, 64))
    (truncated / "t.png").write_bytes(good.read_bytes()[:200])
    cases.append((truncated, "not a readable PNG/JPEG image"))
    gif = tmp_path / "gif"
    gif.mkdir()
    _photo(gif / "x.png", fmt="GIF")
    cases.append((gif, "a GIF file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "no PNG or JPEG images"))
    for folder, fragment in cases:
        with pytest.raises(GencompressError) as e:
            load_npz_inputs(folder, specs)
        assert fragment in str(e.value) and "\n" not in str(e.value), (folder, str(e.value))
    # a folder for a model without an image input
    from gencompress.inputs import InputSpec

    with pytest.raises(GencompressError, match="feeds one image input"):
        load_npz_inputs(small, [InputSpec("z", (1, 100, 1, 1))])


def test_distill_cli_takes_an_image_folder_and_refuses_a_bad_one(run_cli, user_error, tmp_path):
    import json

    model = _image_model(tmp_path / "m.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"{i}.png", (20, 18), seed=i)
    out = tmp_path / "o.onnx"
    result = run_cli("distill", model, model, out, "--data", folder, "--steps", 3, "--batch", 4, "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["inputs"] == "data"
    (folder / "bad.jpg").write_bytes(b"nope")
    out2 = tmp_path / "o2.onnx"
    user_error(run_cli("distill", model, model, out2, "--data", folder, "--steps", 3), "bad.jpg", "not a readable PNG/JPEG image")
    assert not out2.exists()
