"""The output cache (verbs/output_cache.py): a rerun of the same quantize copies the stored output
(the same bytes a build writes, no onnxruntime session with --no-check); another option, another
input byte or a damaged entry is a miss; the folder's cap evicts the least recently used."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from gencompress.verbs.quantize import quantize

FAST = dict(calib_size=16, objective="size")  # no timing: seconds per run


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    folder = tmp_path / "outputs"
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE", str(folder))
    monkeypatch.setenv("GENCOMPRESS_PLAN_CACHE", str(tmp_path / "plans"))
    return folder


@pytest.fixture
def sessions(monkeypatch):
    """Counts onnxruntime sessions made (calibration, evaluation, timing all make one)."""
    import onnxruntime as ort

    made = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return made


def test_rerun_is_byte_identical_and_builds_nothing(zoo_onnx, outputs, sessions, tmp_path, monkeypatch):
    src = zoo_onnx("dcgan")
    first = quantize(src, tmp_path / "a.onnx", check=False, **FAST)
    assert first["cached"] is None and sessions  # calibrated
    assert len([p for p in outputs.iterdir() if not p.name.startswith(".")]) == 1
    sessions.clear()
    logs = []
    second = quantize(src, tmp_path / "b.onnx", check=False, log=logs.append, **FAST)
    assert not sessions  # nothing calibrated, built or timed
    assert second["cached"]["entry"] and second["output"] == str(tmp_path / "b.onnx") and any("output reused" in m for m in logs)
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    assert {k: v for k, v in second.items() if k not in ("cached", "output", "seconds")} == \
        {k: v for k, v in json.loads(json.dumps(first)).items() if k not in ("cached", "output", "seconds")}
    (tmp_path / "b.onnx").write_bytes(b"edited by the user")  # a copy, not a link: the entry is intact
    quantize(src, tmp_path / "c.onnx", check=False, **FAST)
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE", "off")  # what a build writes: the same bytes
    built = quantize(src, tmp_path / "d.onnx", check=False, **FAST)
    assert built["cached"] is None
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "d.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_check_is_measured_again_on_a_hit(zoo_onnx, outputs, sessions, tmp_path):
    src = zoo_onnx("dcgan")
    first = quantize(src, tmp_path / "a.onnx", eval_size=8, **FAST)
    sessions.clear()
    second = quantize(src, tmp_path / "b.onnx", eval_size=8, **FAST)
    assert second["cached"] and len(sessions) == 2  # the reference and the candidate, nothing built
    assert second["psnr_db"] == first["psnr_db"] and second["evaluation"] == first["evaluation"]


def test_any_option_or_input_byte_change_is_a_miss(zoo_onnx, outputs, tmp_path):
    src = zoo_onnx("dcgan")
    quantize(src, tmp_path / "a.onnx", check=False, **FAST)
    for i, options in enumerate(({"seed": 1}, {"calib_size": 8}, {"int8_kernels": "vnni"}, {"exclude": ("node_conv2d",)},
                                 {"external_data": True}, {"objective": "balanced", "batches": (1,)})):
        report = quantize(src, tmp_path / f"o{i}.onnx", check=False, **{**FAST, **options})
        assert report["cached"] is None, options
    model = onnx.load(str(src))
    w = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(w).copy()
    array.flat[0] = np.nextafter(array.flat[0], np.float32(1))  # one weight, one ulp
    w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    assert quantize(changed, tmp_path / "c.onnx", check=False, **FAST)["cached"] is None
    assert quantize(changed, tmp_path / "c2.onnx", check=False, **FAST)["cached"]  # and that one is kept in turn


def test_external_data_output_is_restored_with_its_side_file(zoo_onnx, outputs, tmp_path):
    src = zoo_onnx("dcgan")
    quantize(src, tmp_path / "a.onnx", check=False, external_data=True, **FAST)
    # the model names its side file (a.onnx.data): the same output name elsewhere is a hit, another name a miss
    assert quantize(src, tmp_path / "b.onnx", check=False, external_data=True, **FAST)["cached"] is None
    (tmp_path / "again").mkdir()
    report = quantize(src, tmp_path / "again" / "a.onnx", check=False, external_data=True, **FAST)
    assert report["cached"]
    for name in ("a.onnx", "a.onnx.data"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / name).read_bytes()
    import onnxruntime as ort

    assert ort.InferenceSession(str(tmp_path / "again" / "a.onnx")).get_inputs()


def test_damaged_or_foreign_entry_is_a_miss(zoo_onnx, outputs, tmp_path):
    src = zoo_onnx("dcgan")
    quantize(src, tmp_path / "a.onnx", check=False, **FAST)
    (entry,) = [p for p in outputs.iterdir() if not p.name.startswith(".")]
    stored = entry / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x10  # a flipped bit: same size
    stored.write_bytes(bytes(data))
    report = quantize(src, tmp_path / "b.onnx", check=False, **FAST)
    assert report["cached"] is None and (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    (entry,) = [p for p in outputs.iterdir() if not p.name.startswith(".")]  # stored again
    (entry / "entry.json").write_text("{not json")
    assert quantize(src, tmp_path / "c.onnx", check=False, **FAST)["cached"] is None
    assert quantize(src, tmp_path / "c2.onnx", check=False, **FAST)["cached"]  # replaced by that run's
    (entry,) = [p for p in outputs.iterdir() if not p.name.startswith(".")]
    (entry / "model.onnx").unlink()
    os.mkfifo(entry / "model.onnx")  # would block a read
    assert quantize(src, tmp_path / "d.onnx", check=False, **FAST)["cached"] is None
    assert (tmp_path / "d.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_unwritable_folder_or_cap_zero_is_no_cache(zoo_onnx, tmp_path, monkeypatch):
    src = zoo_onnx("dcgan")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE", str(blocker / "outputs"))  # a folder under a file cannot be made
    assert quantize(src, tmp_path / "a.onnx", check=False, **FAST)["cached"] is None
    assert quantize(src, tmp_path / "b.onnx", check=False, **FAST)["cached"] is None
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE", str(tmp_path / "outputs"))
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE_MB", "0")
    quantize(src, tmp_path / "c.onnx", check=False, **FAST)
    assert not (tmp_path / "outputs").exists()


def test_cap_evicts_the_least_recently_used(tmp_path):
    from gencompress.verbs.output_cache import evict

    keys = [c * 64 for c in "abc"]
    for key, age in zip(keys, (300, 100, 200)):
        entry = tmp_path / key
        entry.mkdir()
        (entry / "model.onnx").write_bytes(b"x" * 1000)
        (entry / "entry.json").write_text("{}")
        os.utime(entry / "entry.json", (1e9 - age, 1e9 - age))
    (tmp_path / ".tmp-fresh").mkdir()  # a run storing now: left alone
    (tmp_path / "users").mkdir()  # not a name of this cache (the folder may be a user's): never removed
    os.utime(tmp_path / "users", (1e9, 1e9))
    evict(tmp_path, 2100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-fresh", keys[1], keys[2], "users"]
    evict(tmp_path, 1100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-fresh", keys[1], "users"]


def test_cap_applies_when_storing(zoo_onnx, outputs, tmp_path, monkeypatch):
    src = zoo_onnx("dcgan")
    quantize(src, tmp_path / "a.onnx", check=False, **FAST)
    (entry,) = [p for p in outputs.iterdir() if not p.name.startswith(".")]
    size = sum(f.stat().st_size for f in entry.iterdir())
    monkeypatch.setenv("GENCOMPRESS_OUTPUT_CACHE_MB", str(1.5 * size / 1e6))  # room for one entry
    quantize(src, tmp_path / "b.onnx", check=False, seed=1, **FAST)
    (kept,) = [p for p in outputs.iterdir() if not p.name.startswith(".")]
    assert kept != entry  # the older one went
    assert quantize(src, tmp_path / "c.onnx", check=False, seed=1, **FAST)["cached"]


def test_cli_summary_says_cached(zoo_onnx, outputs, run_cli, tmp_path):
    src = zoo_onnx("dcgan")
    args = ("quantize", src, tmp_path / "a.onnx", "--no-check", "--calib-size", "16", "--objective", "size")
    assert run_cli(*args).exit_code == 0
    result = run_cli(*args[:2], tmp_path / "b.onnx", *args[3:])
    assert result.exit_code == 0 and "output reused" in result.stderr
    assert "cached" in result.stdout and str(outputs) in result.stdout


def test_hit_notes_initializers_taken_as_weights(outputs, tmp_path):
    """A hit reads no model, yet the verb's note on an IR version 3 model's initializer inputs
    (onnx_io.initializer_inputs) names what the first run took as weights."""
    from onnx import TensorProto, helper, numpy_helper

    from gencompress.onnx_io import initializer_inputs

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["z", "W"], ["out"])], "ir3",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("z", ["N", 8]), ("W", [8, 64]))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.save(model, str(tmp_path / "g.onnx"))
    runs = []
    for out in ("a.onnx", "b.onnx"):
        with initializer_inputs() as lifted:
            report = quantize(tmp_path / "g.onnx", tmp_path / out, mode="weight-only", check=False)
        runs.append((report["cached"] is not None, lifted))
    assert runs == [(False, ["W"]), (True, ["W"])]
