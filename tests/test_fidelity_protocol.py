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
