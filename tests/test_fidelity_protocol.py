"""One fidelity protocol: quantize, check and compress print the same PSNR for the same model
pair and samples (the held-back set, the same peak, the same PSNR function); with real
calibration data quantize measures on the rows calibration did not use."""

from __future__ import annotations

import json
import re
import numpy as np
import onnx

from gencompress.inputs import specs_of_model
from gencompress.runtime_check import fidelity as F


def _printed_psnr(text: str) -> str:
    """The PSNR a verb's table shows, as printed (e.g. ``47.62``)."""
    m = re.search(r"PSNR[^\n]*?(\d+\.\d+)", text)
    assert m, text
    return m.group(1)


def test_quantize_check_and_compress_print_the_same_psnr(run_cli, zoo_onnx, tmp_path):
    src = zoo_onnx("dcgan")
    out = tmp_path / "q.onnx"
    q = run_cli("quantize", src, out)
    assert q.exit_code == 0, q
    c = run_cli("check", src, out)
    assert c.exit_code == 0, c
    assert _printed_psnr(q.stdout) == _printed_psnr(c.stdout)

    # compress on the same float model: its recipe makes its own model, and the PSNR it prints
    # for that pair is the one check prints for it
    job = tmp_path / "job"
    r = run_cli("compress", src, job, "--no-bench")
    assert r.exit_code == 0, r
    c2 = run_cli("check", job / "reference.onnx", job / "model.onnx")
    assert _printed_psnr(r.stdout) == _printed_psnr(c2.stdout)

    # the protocol itself: the same declared set (count, held-back seed) and peak
    cj = json.loads(run_cli("check", src, out, "--json").stdout)
    assert f"{cj['outputs'][0]['psnr_db']:.2f}" == _printed_psnr(q.stdout)
    assert cj["samples"] == F.DEFAULT_SAMPLES and cj["seed"] == F.held_back_seed(0)
    assert cj["outputs"][0]["peak_source"] == "nominal" and f"peak {cj['outputs'][0]['peak']} = nominal" in q.stdout


def test_calibration_data_psnr_is_on_the_held_back_rows(run_cli, zoo_onnx, tmp_path):
    src = zoo_onnx("vae")
    specs = specs_of_model(onnx.load(str(src)))
    rng = np.random.default_rng(11)
    rows = {s.name: rng.standard_normal((48, *s.shape[1:])).astype(np.float32) for s in specs}
    np.savez(tmp_path / "real.npz", **rows)
    out = tmp_path / "q.onnx"
    r = run_cli("quantize", src, out, "--calib-data", tmp_path / "real.npz", "--calib-size", 32, "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert report["calibration"]["samples"] == 32
    assert report["evaluation"]["samples"] == 16 and "rows 32..47" in report["evaluation"]["source"]
    # check on exactly those rows prints the same number
    np.savez(tmp_path / "held.npz", **{k: v[32:] for k, v in rows.items()})
    c = json.loads(run_cli("check", src, out, "--inputs", tmp_path / "held.npz", "--json").stdout)
    assert report["psnr_db"] == round(c["outputs"][0]["psnr_db"], 2)


def test_one_peak_rule(zoo_onnx):
    """The nominal output range when the exporter recorded one, else the observed peak-to-peak."""
    proto = onnx.load(str(zoo_onnx("dcgan")))
    ref = np.array([[-0.5, 0.25, np.inf]])
    assert F.output_peak(proto, ref) == (2.0, "nominal")
    del proto.metadata_props[:]
    assert F.output_peak(proto, ref) == (0.75, "observed")
    assert F.output_peak(proto, np.zeros((2, 3))) == (1.0, "observed")


# ---- the held-back set's size: 256 draws, fewer for a model whose draws cost more than EVAL_MACS ----


def _layers_model(batch="N", mystery=False) -> onnx.ModelProto:
    """x [batch, 3, 16, 16] -> Conv 3x3 (8) -> ConvTranspose 4/2/1 (2) -> Flatten -> Gemm (5) -> MatMul (7),
    and an LSTM over a [batch, 5, 4] sequence (time-major inside): multiply-adds known by hand. ``mystery``: an op of
    an unknown domain before the Conv (shape inference knows nothing after it)."""
    from onnx import TensorProto, helper, numpy_helper

    def w(name, *shape):
        return numpy_helper.from_array(np.full(shape, 0.01, np.float32), name)

    nodes = [
        *([helper.make_node("Mystery", ["x"], ["m"], domain="example.mystery")] if mystery else []),
        helper.make_node("Conv", ["m" if mystery else "x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["t"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["g"]),
        helper.make_node("MatMul", ["g", "wm"], ["y"]),
        helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["st", "wl", "rl"], ["", "h"], hidden_size=3),
    ]
    graph = helper.make_graph(
        nodes, "layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [batch, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
        [w("wc", 8, 3, 3, 3), w("wt", 8, 2, 4, 4), w("wg", 2 * 32 * 32, 5), w("wm", 5, 7), w("wl", 1, 12, 4), w("rl", 1, 12, 3)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.mystery", 1)])


# per sample: Conv 8 outputs x 16x16 positions x 3x3x3 taps; ConvTranspose 8x16x16 input elements
# x 2 outputs x 4x4 taps; Gemm 5 x 2048; MatMul 7 x 5; LSTM 5 steps x (12x4 + 12x3)
LAYER_MACS = 8 * 256 * 27 + 8 * 256 * 2 * 16 + 5 * 2048 + 7 * 5 + 5 * (48 + 36)


def test_macs_per_sample_from_shapes():
    assert F.macs_per_sample(_layers_model()) == LAYER_MACS
    assert F.macs_per_sample(_layers_model(batch=4)) == LAYER_MACS  # a fixed batch: per sample, not per run
    assert F.macs_per_sample(_layers_model(mystery=True)) is None  # unknown shapes: no count...
    assert F.default_samples(_layers_model(mystery=True)) == F.DEFAULT_SAMPLES  # ...and the full set


def test_default_samples_follow_the_budget(monkeypatch):
    model = _layers_model()
    assert F.budgeted_samples(model) == (F.DEFAULT_SAMPLES, None)  # far under the budget
    monkeypatch.setattr(F, "EVAL_MACS", LAYER_MACS * 256)
    assert F.default_samples(model) == 256  # exactly at the budget
    monkeypatch.setattr(F, "EVAL_MACS", LAYER_MACS * 100)
    n, note = F.budgeted_samples(model)
    assert n == 64 and "64 held-back draws" in note  # the largest power of two within the budget
    monkeypatch.setattr(F, "EVAL_MACS", LAYER_MACS * 3)
    assert F.default_samples(model) == F.MIN_SAMPLES  # never under the floor
    assert F.default_samples(_layers_model(batch=3)) == 33  # whole runs of a fixed-batch model


def test_a_large_model_is_evaluated_on_the_budgeted_set_by_every_verb(run_cli, zoo_onnx, tmp_path, monkeypatch):
    """A model above the budget (made so by lowering it): quantize, check and compress evaluate it on
    the same smaller held-back set and say so; an explicit count is obeyed."""
    src = zoo_onnx("dcgan")
    assert F.default_samples(src) == F.DEFAULT_SAMPLES  # the zoo model itself keeps 256 draws
    monkeypatch.setattr(F, "EVAL_MACS", F.macs_per_sample(src) * 40)  # -> 32 draws
    out = tmp_path / "q.onnx"
    q = run_cli("quantize", src, out, "--objective", "size", "--json")
    assert q.exit_code == 0, q
    report = json.loads(q.stdout)
    assert report["evaluation"]["samples"] == 32 and any("32 held-back draws" in n for n in report["notes"])
    c = json.loads(run_cli("check", src, out, "--json").stdout)
    assert c["samples"] == 32 and "32 held-back draws" in c["samples_note"]
    assert report["psnr_db"] == round(c["outputs"][0]["psnr_db"], 2)  # the same set: the same figure
    job = tmp_path / "job"
    r = run_cli("compress", src, job, "--no-bench", "--objective", "size", "--json")
    assert r.exit_code == 0, r
    fid = json.loads(r.stdout)["fidelity"]
    assert fid["samples"] == 32 and "32 held-back draws" in fid["samples_note"]
    # an explicit count is what is used, in both verbs, with no note
    q40 = json.loads(run_cli("quantize", src, tmp_path / "q40.onnx", "--objective", "size", "--eval-size", 40, "--json").stdout)
    c40 = json.loads(run_cli("check", src, out, "--samples", 40, "--json").stdout)
    assert q40["evaluation"]["samples"] == c40["samples"] == 40 and c40["samples_note"] is None
    assert not any("held-back draws" in n for n in q40["notes"])
    assert q40["psnr_db"] == round(c40["outputs"][0]["psnr_db"], 2)


def test_a_large_model_calibrates_on_the_budgeted_set(zoo_onnx, tmp_path, monkeypatch):
    """A model above the calibration budget (made so by lowering it) calibrates on fewer seeded
    draws, says so in one line, and writes what an explicit --calib-size of that count writes."""
    import hashlib

    from gencompress import quantize
    from gencompress.runtime_check import calibration as C

    src = zoo_onnx("dcgan")
    assert C.default_calib_size(src) == C.DEFAULT_CALIB_SIZE  # the zoo model itself keeps 256 draws
    monkeypatch.setattr(C, "CALIB_MACS", F.macs_per_sample(src) * 100)  # -> 64 draws
    auto = quantize(src, tmp_path / "auto.onnx", objective="size", check=False)
    assert any("calibration on 64 seeded draws" in n for n in auto["notes"])
    explicit = quantize(src, tmp_path / "64.onnx", objective="size", check=False, calib_size=64)
    assert not any("seeded draws, not" in n for n in explicit["notes"])
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("auto.onnx", "64.onnx")]
    assert digest[0] == digest[1]
