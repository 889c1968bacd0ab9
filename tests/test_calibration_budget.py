"""The calibration budget's count, said and used once: quantize and compress print the same note
when the budget cuts a model's default calibration draws, and calibrate on the count they said.
A model over the budget is made so by lowering ``CALIB_MACS`` (a real one costs a TMAC a run)."""

from __future__ import annotations

import json

import pytest

from gencompress.runtime_check import calibration as C
from gencompress.runtime_check import fidelity as F

NOTE = "calibration on 64 seeded draws, not 256"


@pytest.fixture
def over_budget(zoo_onnx, monkeypatch):
    """The dcgan zoo model, with the calibration budget lowered so that its default is 64 draws."""
    src = zoo_onnx("dcgan")
    assert C.calib_size_note(src) == (C.DEFAULT_CALIB_SIZE, None)  # the model itself keeps 256 draws
    monkeypatch.setattr(C, "CALIB_MACS", F.macs_per_sample(src) * 100)
    return src


def test_compress_says_and_uses_the_budgeted_calibration_count(over_budget, run_cli, tmp_path):
    fast = ("--samples", "32", "--no-bench", "--objective", "size")
    auto = run_cli("compress", over_budget, tmp_path / "auto", *fast)
    assert auto.exit_code == 0, auto
    assert auto.stderr.count(NOTE) == 1 and NOTE not in auto.stdout  # one line, on the log, as quantize says it
    recipe = json.loads((tmp_path / "auto" / "report.json").read_text())["recipe"]
    assert next(s for s in recipe if s["pass"] == "insert_qdq")["options"]["calib_size"] == 64  # the count the step drew
    explicit = run_cli("compress", over_budget, tmp_path / "64", *fast, "--calib-size", 64)
    assert explicit.exit_code == 0, explicit
    assert "seeded draws, not" not in explicit.stderr  # a count the user gave: no note
    assert (tmp_path / "auto" / "model.onnx").read_bytes() == (tmp_path / "64" / "model.onnx").read_bytes()


def test_compress_counts_once_for_every_calibrating_step(zoo_onnx, monkeypatch):
    """The flag recipe's plan and the sweep's recipes get the reference's count; a step with its own
    count or calibration data keeps it; a model under the budget gets 256 and no note."""
    from gencompress.verbs.compress import _calibration_count, default_recipe

    src = zoo_onnx("dcgan")
    calls = []
    real = C.calib_size_note
    monkeypatch.setattr(C, "calib_size_note", lambda model: calls.append(model) or real(model))
    said = []
    steps, sweeps = _calibration_count(src, default_recipe(), [("calib=kl", default_recipe(calib="kl", objective="size")),
                                                               ("n", default_recipe(calib_size=8))], said.append)
    assert len(calls) == 1 and said == []
    assert [s["options"]["calib_size"] for s in steps if s["pass"] == "plan_int8"] == [256]
    assert [s["options"]["calib_size"] for _, r in sweeps for s in r if s["pass"] in ("insert_qdq", "plan_int8")] == [256, 8]
    kept = [{"pass": "insert_qdq", "options": {"calib_data": "rows.npz"}}, {"pass": "weight_only_quantize", "options": {"bits": 8}}]
    assert _calibration_count(src, kept, [], said.append) == (kept, []) and len(calls) == 1  # nothing to count: not counted


def test_quantize_calibrates_on_the_count_it_said(over_budget, monkeypatch, tmp_path):
    """The note's count is the calibration's, counted once: a count taken again later (of the
    prepared model, whose multiply-adds preparation may change) would differ here."""
    from gencompress import quantize

    counts = iter([64])
    real = C.calib_size_note
    monkeypatch.setattr(C, "calib_size_note", lambda model: (next(counts, 128), real(model)[1]))
    report = quantize(over_budget, tmp_path / "q.onnx", objective="size", check=False)
    assert sum(NOTE in n for n in report["notes"]) == 1
    assert report["calibration"]["samples"] == 64
