"""Hostile and careless input, for every verb and the Python API (issue 11).

Each case builds a tiny model with onnx.helper, runs a verb on it, and asserts the tool's promise:
exit 2 / ``GencompressError``, exactly one stderr line, the inputs byte-identical afterwards, and
nothing left behind in the folder (no ``.tmp`` file, no staging folder).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gencompress
from gencompress.errors import GencompressError
from gencompress.onnx_io import initializer_inputs, save_model
from gencompress.inputs import InputSpec, parse_input_spec, sample_inputs, specs_of_model, specs_to_json

LATENT, WIDTH = 8, 64


def tiny(path: Path, *, meta: dict | None = None, weight=None, in_type=TensorProto.FLOAT, out_type=None,
         external: dict | None = None) -> Path:
    """z [N, 8] → Gemm (8x64 weight) → Tanh → out [N, 64], with exporter-style metadata.

    ``meta``: metadata entries to set (value None deletes the key); ``external``: the weight's
    external-data entries (written as given, with its bytes in ``w.bin`` beside the model).
    """
    w = np.random.default_rng(0).standard_normal((LATENT, WIDTH)).astype(np.float32) * 0.3 if weight is None else weight
    nodes = [helper.make_node("Gemm", ["z", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["out"])]
    inputs = [helper.make_tensor_value_info("z", in_type, ["N", LATENT])]
    if in_type != TensorProto.FLOAT:
        nodes.insert(0, helper.make_node("Cast", ["z"], ["zf"], to=TensorProto.FLOAT))
        nodes[1].input[0] = "zf"
    if out_type is not None:
        nodes[-1].output[0] = "t"
        nodes.append(helper.make_node("Cast", ["t"], ["out"], to=out_type))
    outputs = [helper.make_tensor_value_info("out", out_type or TensorProto.FLOAT, ["N", WIDTH])]
    init = numpy_helper.from_array(w, "W")
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entries = {"gencompress.inputs": specs_to_json([InputSpec("z", (1, LATENT))]), "gencompress.output_range": "2.0"}
    if in_type != TensorProto.FLOAT:
        entries.pop("gencompress.inputs")
    entries.update(meta or {})
    for key, value in entries.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    if external is not None:
        (path.parent / "w.bin").write_bytes(w.tobytes())
        t = model.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in external.items():
            t.external_data.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def assert_untouched(folder: Path, before: dict) -> None:
    after = snapshot(folder)
    assert after == before, f"folder changed: new {sorted(set(after) - set(before))}, gone {sorted(set(before) - set(after))}"


# ---- models whose metadata, weights or types are hostile ---------------------------------------------

BAD_MODELS = {
    "output range NaN": dict(meta={"gencompress.output_range": "nan"}),
    "output range text": dict(meta={"gencompress.output_range": "abc"}),
    "output range negative": dict(meta={"gencompress.output_range": "-2"}),
    "inputs empty list": dict(meta={"gencompress.inputs": "[]"}),
    "inputs not a list": dict(meta={"gencompress.inputs": '{"name": "z"}'}),
    "inputs negative shape": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": [1, -8], "dtype": "float32"}]'}),
    "inputs huge shape": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": [1, 99999999999999], "dtype": "float32"}]'}),
    "inputs shape of strings": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": ["a"], "dtype": "float32"}]'}),
    "inputs int low >= high": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": [1, 8], "dtype": "int64", "low": 5, "high": 5}]'}),
    "inputs int high beyond int64": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": [1, 8], "dtype": "int64", "low": 0, "high": 99999999999999999999}]'}),
    "inputs wrong name": dict(meta={"gencompress.inputs": '[{"name": "q", "shape": [1, 8], "dtype": "float32"}]'}),
    "inputs unknown prior": dict(meta={"gencompress.inputs": '[{"name": "z", "shape": [1, 8], "dtype": "float32", "prior": "cauchy"}]'}),
    "inputs deep json": dict(meta={"gencompress.inputs": "[" * 100000 + "]" * 100000}),
    "string input": dict(in_type=TensorProto.STRING),
    "nan weight": dict(weight=np.full((LATENT, WIDTH), np.nan, np.float32)),
    "inf weight": dict(weight=np.where(np.eye(LATENT, WIDTH) > 0, np.inf, 0.5).astype(np.float32)),
    "ext negative offset": dict(external={"location": "w.bin", "offset": "-4"}),
    "ext non-integer offset": dict(external={"location": "w.bin", "offset": "1.5"}),
    "ext beyond the file": dict(external={"location": "w.bin", "offset": "4096"}),
    "ext absolute path": dict(external={"location": "/etc/passwd"}),
    "ext parent folder": dict(external={"location": "../w.bin"}),
    "ext device": dict(external={"location": "dev"}),
    "ext the folder itself": dict(external={"location": "."}),
    "ext unknown key": dict(external={"location": "w.bin", "evil": "1"}),
    "ext checksum mismatch": dict(external={"location": "w.bin", "checksum": "0" * 40}),
    "ext checksum not sha1": dict(external={"location": "w.bin", "checksum": "../w.bin"}),
    "double weight into a float Gemm": dict(weight=np.ones((LATENT, WIDTH), np.float64)),
}
# what each verb needs from the model: weights (prune, quantize), samples (check, bench)
WEIGHT_ONLY_CLASSES = {"nan weight", "inf weight"}
SAMPLE_CLASSES = {k for k in BAD_MODELS if k.startswith(("output range", "inputs", "string"))}

VERBS = {
    "prune": lambda m, out: ["prune", m, out / "p.onnx", "--sparsity", "0.5"],
    "quantize": lambda m, out: ["quantize", m, out / "q.onnx", "--calib-size", "8", "--eval-size", "8"],
    "sensitivity": lambda m, out: ["sensitivity", m, "--calib-size", "8", "--eval-size", "8"],
    "check": lambda m, out: ["check", m, m, "--samples", "8"],
    "bench": lambda m, out: ["bench", m, "--runs", "2", "--warmup", "0", "--batch", "1", "--no-memory"],
    "compress": lambda m, out: ["compress", m, out / "c", "--samples", "8", "--calib-size", "8", "--no-bench"],
}


def _expected_refusal(case: str, verb: str) -> bool:
    if case in WEIGHT_ONLY_CLASSES:  # check refuses them too (issue 26): its verdict would be on garbage
        return verb in ("prune", "quantize", "sensitivity", "compress", "check")
    if case.startswith("output range"):  # read by the verbs that compute PSNR or draw images in the output's range
        return verb != "prune"
    if case in SAMPLE_CLASSES:
        return verb != "prune"
    return True  # unreadable models: every verb


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    paths = {}
    for i, (case, kwargs) in enumerate(BAD_MODELS.items()):
        folder = root / f"m{i}"
        folder.mkdir()
        if case == "ext device":
            os.symlink("/dev/zero", folder / "dev")
        paths[case] = tiny(folder / "g.onnx", **kwargs)
    return paths


@pytest.mark.parametrize("verb", list(VERBS))
def test_hostile_models_every_verb(verb, bad_models, tmp_path, run_cli, user_error):
    """One verb over every hostile model: a one-line refusal (or a clean run where the verb does not
    read the broken part), inputs unchanged, nothing left behind."""
    for case, model in bad_models.items():
        before = snapshot(model.parent)
        out = tmp_path / case.replace(" ", "_")
        out.mkdir()
        r = run_cli(*VERBS[verb](model, out))
        if _expected_refusal(case, verb):
            assert r.exit_code == 2, (case, r)
            user_error(r)
            assert sorted(p.name for p in out.iterdir()) == [], (case, list(out.iterdir()))
        else:
            assert r.exit_code == 0, (case, r)
            if case in WEIGHT_ONLY_CLASSES:  # bench measures the model as it is, and says so
                assert "has NaN or Inf in 1 weight(s), e.g. 'W'" in r.stderr, (case, r)
        assert_untouched(model.parent, before)


def test_hostile_models_python_api(bad_models, tmp_path):
    for case, model in bad_models.items():
        with pytest.raises(GencompressError):
            gencompress.quantize(model, tmp_path / "q.onnx", calib_size=8, eval_size=8)
        if case not in WEIGHT_ONLY_CLASSES:
            with pytest.raises(GencompressError):
                gencompress.check(model, model, samples=8)
    assert list(tmp_path.iterdir()) == []


def test_bool_output_is_refused_by_check(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx", out_type=TensorProto.BOOL)
    user_error(run_cli("check", m, m, "--samples", "4"), "bool")


# ---- files that are not models --------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["prune", "quantize", "check", "bench"])
def test_not_a_regular_file(verb, tmp_path, run_cli, user_error):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    for src in ("/dev/zero", fifo):
        user_error(run_cli(*VERBS[verb](src, tmp_path)), "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.onnx"]


def test_symlinked_external_data_outside_the_folder(tmp_path, run_cli, user_error):
    inner = tmp_path / "model"
    inner.mkdir()
    m = tiny(inner / "g.onnx", external={"location": "w.bin"})
    (inner / "w.bin").rename(tmp_path / "w.bin")
    os.symlink(tmp_path / "w.bin", inner / "w.bin")
    user_error(run_cli("prune", m, tmp_path / "p.onnx", "--sparsity", "0.5"), "outside the model's folder")


# ---- absurd option values, wrong API types ---------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["bench", "{m}", "--runs", "100000000000000000000"], "limit"),
    (["bench", "{m}", "--threads", "100000"], "limit"),
    (["bench", "{m}", "--batch", "999999999999"], "limit"),
    (["bench", "{m}", "--batch", "600000", "--runs", "1", "--no-memory"], "budget"),
    (["check", "{m}", "{m}", "--samples", "999999999"], "limit"),
    (["check", "{m}", "{m}", "--samples", "900000"], "budget"),
    (["check", "{m}", "{m}", "--batch", "0"], "positive"),
    (["compress", "{m}", "{out}", "--samples", "999999999", "--no-bench"], "limit"),
])
def test_absurd_values(args, fragment, tmp_path, run_cli, user_error, monkeypatch):
    monkeypatch.setenv("GENCOMPRESS_SAMPLE_BUDGET_MB", "16")
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    started = time.monotonic()
    r = run_cli(*[a.format(m=m, out=tmp_path / "out") for a in args])
    user_error(r, fragment)
    assert time.monotonic() - started < 20
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("call", [
    lambda m, o: gencompress.quantize(123, o),
    lambda m, o: gencompress.quantize(m, o, calib_size="many"),
    lambda m, o: gencompress.quantize(m, o, seed=None),
    lambda m, o: gencompress.quantize(m, o, percentile="x"),
    lambda m, o: gencompress.quantize(m, o, bogus=1),
    lambda m, o: gencompress.prune(m, o, sparsity="half"),
    lambda m, o: gencompress.prune(m, None, sparsity=0.5),
    lambda m, o: gencompress.sensitivity(m, eval_size=[1]),
    lambda m, o: gencompress.check(m, m, samples="x"),
    lambda m, o: gencompress.check(m, m, samples=2.5),
    lambda m, o: gencompress.check(m, m, inputs=42),
    lambda m, o: gencompress.bench(m, runs=1e20),
    lambda m, o: gencompress.bench(m, batches="lots"),
    lambda m, o: gencompress.bench(m, threads=(100000,)),
    lambda m, o: gencompress.compress(m, o.parent / "c", samples="x"),
    lambda m, o: gencompress.compress(["g.onnx"], o.parent / "c"),
    lambda m, o: gencompress.export(None, o),
    lambda m, o: gencompress.train(42),
], ids=lambda f: "")
def test_python_api_wrong_types(call, tmp_path):
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(GencompressError):
        call(m, tmp_path / "o.onnx")
    assert_untouched(tmp_path, before)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, run_cli, user_error):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        bomb.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    bomb.append("passes: [{pass: cleanup, options: {x: *l}}]")
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(bomb))
    m = tiny(tmp_path / "g.onnx")
    started = time.monotonic()
    r = run_cli("compress", m, tmp_path / "out", "--recipe", recipe, "--no-bench")
    user_error(r, "alias bomb")
    assert time.monotonic() - started < 10 and len(r.stderr) < 400
    assert not (tmp_path / "out").exists()


def test_full_disk_is_one_line(tmp_path, run_cli, user_error, monkeypatch):
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)

    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and str(file).endswith(".tmp") else f

    monkeypatch.setattr("builtins.open", full_open)
    for args in (["prune", m, tmp_path / "p.onnx", "--sparsity", "0.5"], ["compress", m, tmp_path / "out", "--samples", "8", "--no-bench"]):
        user_error(run_cli(*args), "no space left")
        assert_untouched(tmp_path, before)


# ---- user modules ------------------------------------------------------------------------------------------

USER_MODULE = """
import sys
import torch
print("hello from the user's module")
class G(torch.nn.Module):
    gencompress_inputs = ("z=1x8",)
    def __init__(self):
        super().__init__()
        print("building G")
        {build}
        self.fc = torch.nn.Linear(8, 16)
    def forward(self, z):
        return torch.tanh(self.fc(z))
"""


@pytest.mark.parametrize("build, fragment", [("sys.exit(3)", "sys.exit(3)"), ("raise SystemError('boom')", "boom"), ("raise KeyError('k')", "KeyError")])
def test_user_module_exit_or_error_is_one_line(build, fragment, tmp_path, run_cli, user_error):
    (tmp_path / "gen.py").write_text(USER_MODULE.format(build=build))
    r = run_cli("export", f"{tmp_path / 'gen.py'}:G", tmp_path / "g.onnx", "--json")
    assert r.exit_code == 2 and r.stdout == "", r
    ours = [line for line in r.stderr.splitlines() if "hello from" not in line and "building G" not in line]  # the user's prints: theirs
    assert len(ours) == 1 and ours[0].startswith("gencompress: error:") and fragment in ours[0], r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.py"]


def test_user_module_prints_do_not_break_json(tmp_path, run_cli):
    (tmp_path / "gen.py").write_text(USER_MODULE.format(build="pass"))
    r = run_cli("export", f"{tmp_path / 'gen.py'}:G", tmp_path / "g.onnx", "--json", "--input", "z=1x8:float32:uniform:-1..1")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["exporter"]
    assert "hello from the user's module" in r.stderr
    (spec,) = specs_of_model(onnx.load(str(tmp_path / "g.onnx")))  # the prior is recorded for every later sampler
    assert spec.prior == "uniform:-1..1" and spec.describe_prior() == "uniform(-1, 1)"


# ---- data loss -----------------------------------------------------------------------------------------------


def test_output_over_the_inputs_external_data_is_refused(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx", external={"location": "w.bin"})
    before = snapshot(tmp_path)
    user_error(run_cli("prune", m, tmp_path / "w.bin", "--sparsity", "0.5"), "external-data file")
    user_error(run_cli("quantize", m, tmp_path / "w.bin"), "external-data file")
    (tmp_path / "c").mkdir()
    os.symlink(tmp_path / "w.bin", tmp_path / "c" / "model.onnx")
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, tmp_path / "c", "--no-bench", "--samples", "8"), "external-data file")
    assert_untouched(tmp_path, before)


def test_check_report_over_its_input_is_refused(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "report.json")  # a model that happens to be named like the report
    before = snapshot(tmp_path)
    user_error(run_cli("check", m, m, "--samples", "8", "--report", tmp_path), "same file as the input")
    assert_untouched(tmp_path, before)


def test_compress_input_inside_out_sweep_is_refused(tmp_path, run_cli, user_error):
    (tmp_path / "out" / "sweep" / "deep").mkdir(parents=True)
    m = tiny(tmp_path / "out" / "sweep" / "deep" / "g.onnx")
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, tmp_path / "out", "--mode", "weight-only", "--sweep", "bits=8,4", "--no-bench"), "sweep")
    assert_untouched(tmp_path, before)


def _report_without_timings(path: Path) -> dict:
    report = json.loads(path.read_text())
    report.pop("created", None)
    for p in report.get("passes") or []:
        p.get("summary", {}).pop("seconds", None)
    return report


def test_compress_reruns_identical_and_commit_is_all_or_nothing(tmp_path, run_cli, monkeypatch):
    m = tiny(tmp_path / "g.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # unrelated files in OUT_DIR are kept
    # --objective size: the default (balanced) records measured per-layer timings in the report
    args = ["compress", m, out, "--samples", "8", "--calib-size", "8", "--no-bench", "--objective", "size"]
    assert run_cli(*args).exit_code == 0
    first = snapshot(out)
    first_report = _report_without_timings(out / "report.json")
    assert run_cli(*args).exit_code == 0
    assert _report_without_timings(out / "report.json") == first_report  # identical runs, identical report
    assert "staging" not in (out / "report.json").read_text()
    second = snapshot(out)
    assert set(second) == set(first) and second["model.onnx"] == first["model.onnx"] and second["notes.txt"] == b"mine"

    # the commit fails after some of the new files were moved in: OUT_DIR is exactly as before
    real_rename = Path.rename

    def failing(self, target):
        if self.parent.name.startswith(".gencompress-staging-") and self.name == "report.json":
            raise OSError(errno.EIO, "simulated I/O error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    r = run_cli("compress", m, out, "--samples", "8", "--calib-size", "8", "--no-bench", "--sparsity", "0.5")
    assert r.exit_code == 2 and "OUT_DIR is as before" in r.stderr, r
    assert snapshot(out) == second  # byte for byte, no staging or previous-run folder left


def test_failed_compress_leaves_no_out_dir(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx", weight=np.full((LATENT, WIDTH), np.nan, np.float32))
    user_error(run_cli("compress", m, tmp_path / "new" / "out", "--no-bench"), "NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "new"] or sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]
    assert not (tmp_path / "new" / "out").exists()


# ---- signals -------------------------------------------------------------------------------------------------


def test_sigterm_mid_compress_cleans_up(tmp_path):
    """A real process: compress a user module that takes its time building; SIGTERM while it does."""
    started = tmp_path / "started"  # the module is building once this exists
    (tmp_path / "gen.py").write_text(USER_MODULE.format(build=f"open({str(started)!r}, 'w').close(); import time; time.sleep(60)"))
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "gencompress"
    proc = subprocess.Popen([str(exe), "compress", f"{tmp_path / 'gen.py'}:G", str(out), "--no-bench"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not started.exists():
        time.sleep(0.05)
    assert list(out.glob(".gencompress-staging-*")), "compress never reached its staging step"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] in ("gencompress: interrupted", "gencompress: aborted"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.py", "started"]  # OUT_DIR was this run's: gone


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_sigterm_during_bench_memory_probe_ends_the_child(tmp_path):
    m = tiny(tmp_path / "g.onnx")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    exe = Path(sys.executable).parent / "gencompress"
    proc = subprocess.Popen([str(exe), "bench", str(m), "--runs", "1", "--warmup", "0", "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _children(proc.pid) and proc.poll() is None:
        time.sleep(0.01)
    children = _children(proc.pid)
    assert children, "bench never started its memory probe"
    seen = {c: Path(f"/proc/{c}/cmdline").read_bytes()[:150] for c in children}
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    # a zombie is dead (a container's PID 1 may not reap it); a child caught mid-spawn ends itself within seconds
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [c for c in children if _state(c) not in ("gone", "Z")]:
        time.sleep(0.05)
    alive = [c for c in children if _state(c) not in ("gone", "Z")]
    assert not alive, (alive, seen, [_state(c) for c in alive], err)
    assert [p.name for p in tmp.iterdir() if "gencompress" in p.name] == []  # the probe's model copy is gone too


# ---- input priors (issue 12) ----------------------------------------------------------------------------------


def test_interrupt_wrapped_by_torch_still_stops_export():
    from gencompress.exporter.export import _reraise_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("torch.onnx export failed") from e
    except RuntimeError as wrapped:
        with pytest.raises(KeyboardInterrupt):
            _reraise_interrupt(wrapped)
    _reraise_interrupt(RuntimeError("a real export error"))  # not an interrupt: the caller falls back


def test_input_priors(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(12, dtype=np.float32).reshape(6, 2))
    specs = [parse_input_spec(t) for t in ("z=1x4", "t=1:float32:uniform:2..3", "y=1x5:float32:onehot:5",
                                           "label=1:int64:0..9", f"x=1x2:float32:data:{tmp_path / 'd.npz'}")]
    draws = sample_inputs(specs, 500, seed=1)
    assert abs(draws["z"].std() - 1) < 0.1
    assert draws["t"].min() >= 2 and draws["t"].max() < 3
    assert (draws["y"].sum(axis=1) == 1).all() and set(np.unique(draws["y"])) == {0.0, 1.0}
    assert draws["label"].min() >= 0 and draws["label"].max() <= 9
    assert set(map(tuple, draws["x"])) <= {tuple(r) for r in np.arange(12, dtype=np.float32).reshape(6, 2)}
    assert all((draws[k] == sample_inputs(specs, 500, seed=1)[k]).all() for k in draws)  # seeded

    old_style = '[{"name": "z", "shape": [1, 8], "dtype": "float32", "low": 0, "high": 1}]'  # metadata before priors
    assert specs_of_model(onnx.load(str(tiny(tmp_path / "old.onnx", meta={"gencompress.inputs": old_style}))))[0].prior == ""
    m = tiny(tmp_path / "g.onnx", meta={"gencompress.inputs": specs_to_json([parse_input_spec("z=1x8:float32:uniform:-1..1")])})
    (spec,) = specs_of_model(onnx.load(str(m)))
    assert spec.prior == "uniform:-1..1"
    assert gencompress.check(m, m, samples=8)["inputs"][0]["prior"] == "uniform(-1, 1)"
    np.savez(tmp_path / "z.npz", z=np.random.default_rng(0).standard_normal((5, LATENT)).astype(np.float32))
    d = tiny(tmp_path / "d.onnx", meta={"gencompress.inputs": specs_to_json([parse_input_spec(f"z=1x8:float32:data:{tmp_path / 'z.npz'}")])})
    assert gencompress.quantize(d, tmp_path / "d.int8.onnx", calib_size=8, eval_size=8)["psnr_db"] > 20  # calibrated on the data rows


HOSTILE_VALUES = [None, True, -1, 0, 1, 2**31, 2**70, -(2**70), 1.5, float("nan"), float("inf"), "", "x", "z",
                  "float32", "int64", "bool", "string", "a" * 5000, [], [1], [1, 8], [-1], [0, 8], [[1]], ["1"], {}, {"a": 1},
                  "normal", "uniform:0..1", "uniform:1..0", "onehot:8", "onehot:0", "data:", "data:/dev/zero", "0..9"]


def test_metadata_fuzz_only_ever_gives_specs_or_one_line_errors():
    """Seeded random corruptions of a valid spec list: every outcome is a valid spec or a
    GencompressError; a valid spec then samples (or refuses with a GencompressError)."""
    from gencompress.inputs import specs_from_json

    rng = np.random.default_rng(0)
    keys = ["name", "shape", "dtype", "low", "high", "prior", "extra"]
    for _ in range(3000):
        entry = {"name": "z", "shape": [1, 8], "dtype": "float32", "low": 0, "high": 1}
        for _ in range(rng.integers(1, 4)):
            key = keys[rng.integers(len(keys))]
            if rng.random() < 0.2:
                entry.pop(key, None)
            else:
                entry[key] = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
        text = json.dumps([entry] if rng.random() < 0.9 else entry)
        try:
            specs = specs_from_json(text)
        except GencompressError as e:
            assert "\n" not in str(e) and len(str(e)) < 600, str(e)
            continue
        try:
            sample_inputs(specs, 2)
        except GencompressError as e:
            assert "\n" not in str(e) and len(str(e)) < 600, str(e)


@pytest.mark.parametrize("text, fragment", [
    ("y=1x5:float32:onehot:4", "last axis"),
    ("t=1:float32:uniform:3..2", "LO < HI"),
    ("t=1:float32:uniform:nan..2", "unknown prior"),
    ("t=1:float32:0..9", "uniform"),
    ("l=1:int64:uniform:0..1", "integer inputs"),
    ("x=1x2:float32:data:missing.npz", "no such file"),
    ("x=1x2:float32:data:/dev/zero", "not a regular file"),
])
def test_bad_priors(text, fragment):
    with pytest.raises(GencompressError, match=fragment):
        parse_input_spec(text)


# ---- third-party graphs: the onnx wheel's backend test models ---------------------------------------------------


def _backend_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "onnx_backend_graphs.py"
    spec = importlib.util.spec_from_file_location("onnx_backend_graphs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnx_backend_graphs_never_crash(tmp_path):
    """A deterministic sample of the onnx wheel's test graphs (IR 3 initializer inputs read as
    weights): prune and quantize either work or refuse with a one-line GencompressError; anything
    else is a bug. The full set, with default options: benchmarks/onnx_backend_graphs.py."""
    script = _backend_script()
    # light/ holds whole image nets (vgg19, resnet50...): tens of seconds each, run by hand only
    models = [m for m in script.backend_models() if m.parent.name != "light"]
    assert models
    sample = [m for m in models if "sequence" in m.parent.name][:2] + models[:: max(1, len(models) // 14)][:14]
    for src in sample:
        for name, run in (("prune", lambda: gencompress.prune(src, tmp_path / "p.onnx", sparsity=0.5)),
                          ("quantize", lambda: gencompress.quantize(src, tmp_path / "q.onnx", calib_size=4, eval_size=4, objective="size"))):
            try:
                run()
            except GencompressError as e:
                assert "\n" not in str(e)
            except Exception as e:  # the failure message is the point
                pytest.fail(f"{name} {src}: {type(e).__name__}: {str(e)[:200]}")


def light(path: Path, *, fill_shape=(LATENT, WIDTH)) -> Path:
    """``tiny`` in the form of the onnx wheel's "light" nets: IR version 3, opset 9, its Gemm's
    weight and bias ConstantOfShape fills (0.02 everywhere) of shapes that are initializers also
    listed as graph inputs; nothing else stored. A zero state Concat-ed to the output is a fill
    that is no parameter."""
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.02])
    nodes = [
        helper.make_node("ConstantOfShape", ["W_shape"], ["W"], value=fill),
        helper.make_node("ConstantOfShape", ["b_shape"], ["b"], value=fill),
        helper.make_node("Gemm", ["z", "W", "b"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("ConstantOfShape", ["s_shape"], ["s"]),
        helper.make_node("Concat", ["t", "s"], ["out"], axis=1),
    ]
    shapes = {"W_shape": list(fill_shape), "b_shape": [WIDTH], "s_shape": [1, 4]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in shapes.items()]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, LATENT])]
    inputs += [helper.make_tensor_value_info(k, TensorProto.INT64, [len(v)]) for k, v in shapes.items()]
    graph = helper.make_graph(nodes, "light", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, WIDTH + 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


def test_weights_filled_in_by_constantofshape_are_pruned_and_quantized(tmp_path, run_cli):
    """The light nets' layer weights (ConstantOfShape fills, nothing stored) were refused by prune
    and kept float by quantize with a false reason; they are made initializers, with a note."""
    m = light(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    r = run_cli("prune", m, tmp_path / "p.onnx", "--sparsity", "0.5")
    assert r.exit_code == 0 and "2 layer parameter(s) the graph fills in with ConstantOfShape" in r.stderr, r
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    w = pruned["W"]
    assert w.shape == (LATENT, WIDTH) and (w == 0).mean() == 0.5 and set(np.unique(w)) == {np.float32(0), np.float32(0.02)}
    proto = onnx.load(str(tmp_path / "p.onnx"))
    assert [n.op_type for n in proto.graph.node].count("ConstantOfShape") == 1  # the zero state stays a node
    report = gencompress.quantize(m, tmp_path / "q.onnx", objective="size", calib_size=8, eval_size=8)
    assert any("fills in with ConstantOfShape" in n for n in report["notes"])
    assert [l["weights"] for l in report["layers"] if l.get("weights")] and not report["float_layers"], report["layers"]
    assert report["psnr_db"] > 30
    report = gencompress.compress(m, tmp_path / "c", flags={"objective": "size", "calib_size": 8}, samples=8, bench=False)
    assert "fills in with ConstantOfShape" in report["passes"][0]["summary"]["note"]
    assert snapshot(tmp_path)["g.onnx"] == before["g.onnx"]


def test_a_tensor_whose_bytes_do_not_fill_its_dims_is_one_line(tmp_path, run_cli, user_error):
    """A flipped bit in a dim (onnx.checker lets it through; numpy failed on it at first use)."""
    m = tiny(tmp_path / "g.onnx")
    proto = onnx.load(str(m))
    proto.graph.initializer[0].dims[0] = LATENT * 3
    onnx.save(proto, str(m))
    before = snapshot(tmp_path)
    for args in (["prune", m, tmp_path / "p.onnx", "--sparsity", "0.5"], ["quantize", m, tmp_path / "q.onnx"], ["check", m, m]):
        user_error(run_cli(*args), "damaged ONNX model", "'W' holds 2048 bytes")
    assert_untouched(tmp_path, before)


def test_inputs_without_a_common_batch_axis_are_refused(tmp_path, run_cli, user_error):
    """The onnx wheel's test_operator_mm: inputs [2, 3] and [3, 4]; calibration drew batches of 1
    along dim 0 and failed in onnxruntime, a reason that was not the model's."""
    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-operator" / "test_operator_mm" / "model.onnx"
    for args in (["quantize", src, tmp_path / "q.onnx"], ["check", src, src], ["sensitivity", src]):
        user_error(run_cli(*args), "different sizes at dim 0")
    assert list(tmp_path.iterdir()) == []


def test_a_fill_larger_than_memory_is_refused(tmp_path, run_cli, user_error):
    m = light(tmp_path / "g.onnx", fill_shape=(LATENT, 2**40))  # a damaged shape: 32 TiB of weights
    before = snapshot(tmp_path)
    user_error(run_cli("prune", m, tmp_path / "p.onnx", "--sparsity", "0.5"), "free memory")
    user_error(run_cli("quantize", m, tmp_path / "q.onnx", "--objective", "size"), "free memory")
    assert_untouched(tmp_path, before)


# ---- issue 26: damaged files, ranges, types the checks cannot draw, old graphs -------------------------------


def test_damaged_model_bytes_are_one_line(tmp_path):
    """Single-bit flips of a valid model (a bad disk, a truncated download): every verb that reads
    weights either works or refuses in one line; none reaches the serializer with a damaged field."""
    good = tiny(tmp_path / "good.onnx").read_bytes()
    rng = np.random.default_rng(26)
    # the metadata's text (a flipped bit there made invalid UTF-8 reach onnx_ir's writer) and anywhere
    positions = [good.rindex(b"gencompress.output_range") + 3, *rng.integers(0, len(good), 24)]
    model = tmp_path / "m.onnx"
    for pos in positions:
        damaged = bytearray(good)
        damaged[pos] ^= 1 << int(rng.integers(8))
        model.write_bytes(bytes(damaged))
        for name, run in (("prune", lambda: gencompress.prune(model, tmp_path / "p.onnx", sparsity=0.5)),
                          ("quantize", lambda: gencompress.quantize(model, tmp_path / "q.onnx", mode="weight-only", eval_size=4))):
            try:
                run()
            except GencompressError as e:
                assert "\n" not in str(e)
            except Exception as e:
                pytest.fail(f"{name} with byte {pos} flipped: {type(e).__name__}: {str(e)[:200]}")
    damaged = bytearray(good)
    damaged[positions[0]] = 0xFF  # never valid UTF-8
    model.write_bytes(bytes(damaged))
    with pytest.raises(GencompressError, match="not valid UTF-8"):
        gencompress.prune(model, tmp_path / "p.onnx", sparsity=0.5)


def test_newer_op_than_the_models_opset_is_refused(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    proto = onnx.load(str(m))
    proto.graph.node[1].op_type = "Gelu"  # opset 20; the model says 7
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", 7))
    onnx.save(proto, str(m))
    before = snapshot(tmp_path)
    for args in (["quantize", m, tmp_path / "q.onnx"], ["prune", m, tmp_path / "p.onnx", "--sparsity", "0.5"]):
        user_error(run_cli(*args), "not a valid ONNX model")
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("options, fragment", [
    ("{pass: insert_qdq, options: {calib: percentile, percentile: 5000}}", "percentile"),
    ("{pass: insert_qdq, options: {calib: percentile, percentile: -1}}", "percentile"),
    ("{pass: insert_qdq, options: {seed: -1}}", "seed"),
    ("{pass: insert_qdq, options: {ranges: [[h, 1]]}}", "ranges entry"),
    ("{pass: insert_qdq, options: {ranges: [[h, .nan, 1]]}}", "ranges entry"),
    ("{pass: insert_qdq, options: {ranges: h}}", "ranges"),
    ("{pass: weight_only_quantize, options: {block_size: 4611686018427387904}}", "block_size"),
    ("{pass: insert_qdq}, {pass: magnitude_prune, options: {sparsity: 0.5}}", "quantize last"),
    ("{pass: insert_qdq, options: {calib_size: 8.5}}", "calib_size must be an integer"),
])
def test_recipe_option_ranges(options, fragment, tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    (tmp_path / "r.yaml").write_text(f"passes: [{options}]")
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, tmp_path / "out", "--recipe", tmp_path / "r.yaml", "--no-bench", "--samples", "8"), fragment)
    assert_untouched(tmp_path, before)
    with pytest.raises(GencompressError, match=fragment):  # the Python API: the same check
        import yaml

        gencompress.compress(m, tmp_path / "out", recipe=yaml.safe_load((tmp_path / "r.yaml").read_text())["passes"], bench=False, samples=8)
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("call, fragment", [
    (lambda m, o: gencompress.quantize(m, o, exclude=5), "exclude"),
    (lambda m, o: gencompress.prune(m, o, sparsity=0.5, exclude=[3]), "exclude"),
    (lambda m, o: gencompress.compress("dcgan", o.parent / "c", inputs=5), "inputs"),
    (lambda m, o: gencompress.export("dcgan", o, inputs=5), "inputs"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", flags=5), "flags"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", sweep=5), "sweep"),
    (lambda m, o: gencompress.quantize(m, o, seed=-1), "seed"),
    (lambda m, o: gencompress.train("dcgan", o.parent / "d.safetensors", seed=2**70), "seed"),
    (lambda m, o: gencompress.train("dcgan", o.parent / "d.safetensors", steps=10**20), "steps"),
    (lambda m, o: gencompress.quantize(m, o, log=5), "log"),
    (lambda m, o: gencompress.quantize(m, o, timer="fast"), "timer"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", log="x"), "log"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", checkpoint=()), "checkpoint"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", threads=None), "threads"),
    (lambda m, o: gencompress.compress(m, o.parent / "c", ship_targets=5), "ship_targets"),
    (lambda m, o: gencompress.ship(m, o.parent / "s", targets=[1]), "targets"),
    (lambda m, o: gencompress.ship(m, o.parent / "s", web_backends=None), "web_backends"),
    (lambda m, o: gencompress.check(m, m, inputs={"z": 1}), "inputs"),
    (lambda m, o: gencompress.distill(m, m, o, data=5), "data"),
    (lambda m, o: gencompress.export("dcgan", o, batches=5.5), "batches"),
    (lambda m, o: gencompress.bench(m, batches=[]), "batches"),
    (lambda m, o: gencompress.train("dcgan", out=5, steps=1), "out"),
    (lambda m, o: gencompress.export("dcgan", object()), "out"),
    (lambda m, o: gencompress.ship(None, o.parent / "s"), "model"),
    (lambda m, o: gencompress.quantize(m, o, target_psnr=1e30), "target-psnr"),
    (lambda m, o: gencompress.ship(m, o.parent / "s", targets="web", web_version="../../x"), "web-version"),
], ids=lambda f: "" if callable(f) else f)
def test_python_api_argument_checks(call, fragment, tmp_path):
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(GencompressError, match=fragment):
        call(m, tmp_path / "o.onnx")
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("args, fragment", [
    (["train", "dcgan", "--seed", "99999999999999999999999"], "--seed"),
    (["train", "dcgan", "--steps", "100000000000000000000"], "--steps"),
])
def test_train_ranges(args, fragment, run_cli, user_error):
    user_error(run_cli(*args), fragment)


def _npz_cases(folder: Path) -> dict[str, Path]:
    import zipfile

    with zipfile.ZipFile(folder / "text.npz", "w") as z:  # a member that is not a saved array
        z.writestr("z", b"hello")
    np.savez(folder / "objects.npz", z=np.array([{"a": 1}], dtype=object))
    np.save(folder / "single.npy", np.zeros((3, LATENT), np.float32))
    (folder / "single.npy").rename(folder / "single.npz")
    return {"text": folder / "text.npz", "objects": folder / "objects.npz", "single": folder / "single.npz"}


def test_npz_members_that_are_not_arrays(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    for case, npz in _npz_cases(tmp_path).items():
        before = snapshot(tmp_path)
        for args in (["check", m, m, "--inputs", npz], ["quantize", m, tmp_path / "q.onnx", "--calib-data", npz, "--eval-size", "8"]):
            user_error(run_cli(*args), str(npz.name))
        assert_untouched(tmp_path, before)


def test_integer_inputs_outside_their_range_are_refused(tmp_path, run_cli, user_error):
    spec = '[{"name": "z", "shape": [1, 8], "dtype": "int64", "low": 0, "high": 9}]'
    m = tiny(tmp_path / "g.onnx", in_type=TensorProto.INT64, meta={"gencompress.inputs": spec})
    np.savez(tmp_path / "labels.npz", z=np.full((4, LATENT), -3, np.int64))
    user_error(run_cli("check", m, m, "--inputs", tmp_path / "labels.npz"), "outside the model's 0..9")
    np.savez(tmp_path / "ok.npz", z=np.full((4, LATENT), 3, np.int64))
    assert run_cli("check", m, m, "--inputs", tmp_path / "ok.npz").exit_code == 0


@pytest.mark.parametrize("args", [
    ["quantize", "{m}", "{out}/q.onnx", "--mode", "weight-only"],
    ["quantize", "{m}", "{out}/q.onnx", "--calib-size", "8", "--eval-size", "8"],
    ["sensitivity", "{m}", "--mode", "weight-only", "--eval-size", "8"],
])
def test_bool_output_is_refused_by_every_verb_that_compares(args, tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx", out_type=TensorProto.BOOL)
    (tmp_path / "out").mkdir()
    user_error(run_cli(*[a.format(m=m, out=tmp_path / "out") for a in args]), "bool")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(GencompressError, match="bool"):
        gencompress.sensitivity(m, mode="weight-only", eval_size=8)


def test_check_of_nonfinite_weights_fails_unless_allowed(tmp_path):
    good = tiny(tmp_path / "g.onnx")
    (tmp_path / "nan").mkdir()
    bad = tiny(tmp_path / "nan" / "g.onnx", weight=np.full((LATENT, WIDTH), np.nan, np.float32))
    with pytest.raises(GencompressError, match="NaN or Inf"):
        gencompress.check(good, bad, samples=8)
    result = gencompress.check(good, bad, samples=8, allow_nonfinite=True)  # asked for: measured, and said
    assert "NaN or Inf" in result["warnings"][0]


GOOD_MODULE = USER_MODULE.format(build="pass")


def test_user_module_input_spec_of_the_wrong_type(tmp_path, run_cli, user_error):
    (tmp_path / "gen.py").write_text(GOOD_MODULE.replace('gencompress_inputs = ("z=1x8",)', "gencompress_inputs = 5"))
    r = run_cli("export", f"{tmp_path / 'gen.py'}:G", tmp_path / "g.onnx")
    ours = [line for line in r.stderr.splitlines() if "hello from" not in line and "building G" not in line]  # the module's prints: theirs
    assert r.exit_code == 2 and len(ours) == 1 and "gencompress_inputs" in ours[0], r
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("state, fragment", [
    ("{'fc.weight': torch.zeros(3, 3), 'fc.bias': torch.zeros(16)}", "shape mismatch"),
    ("{'fc.weight': 3, 'fc.bias': torch.zeros(16)}", "not a tensor"),
    ("{'fc.weight': torch.zeros(16, 8, dtype=torch.complex64), 'fc.bias': torch.zeros(16)}", "dtype mismatch"),
    ("{'fc.weight': torch.full((16, 8), float('nan')), 'fc.bias': torch.zeros(16)}", "NaN or Inf"),
])
def test_checkpoint_that_does_not_fit_the_class(state, fragment, tmp_path, run_cli, user_error):
    import torch

    (tmp_path / "gen.py").write_text(GOOD_MODULE)
    torch.save(eval(state), tmp_path / "g.pt")
    r = run_cli("export", f"{tmp_path / 'gen.py'}:G", tmp_path / "g.onnx", "--checkpoint", tmp_path / "g.pt")
    ours = [line for line in r.stderr.splitlines() if "hello from" not in line and "building G" not in line]
    assert r.exit_code == 2 and len(ours) == 1 and fragment in ours[0], r
    assert not (tmp_path / "g.onnx").exists()


def ir3(path: Path) -> Path:
    """``tiny`` as an IR version 3 graph (opset 9, MatMul for its Gemm) lists it: its weight W is a graph input too."""
    m = onnx.load(str(tiny(path)))
    m.graph.node[0].op_type = "MatMul"
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [LATENT, WIDTH]))
    m.ir_version = 3
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("", 9))
    onnx.save(m, str(path))
    return path


def test_ir3_initializers_listed_as_inputs_are_weights(tmp_path):
    m = ir3(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    report = gencompress.prune(m, tmp_path / "p.onnx", sparsity=0.5)
    assert [r["name"] for r in report["initializers"] if r["status"] == "pruned"] == ["W"]
    gencompress.quantize(m, tmp_path / "q.onnx", mode="weight-only", eval_size=8)
    for out in ("p.onnx", "q.onnx"):
        proto = onnx.load(str(tmp_path / out))
        assert [i.name for i in proto.graph.input] == ["z"] and proto.ir_version >= 4
    assert snapshot(tmp_path)["g.onnx"] == before["g.onnx"]


def test_ir3_note_and_keeping_them_as_inputs(tmp_path, run_cli, user_error):
    m = ir3(tmp_path / "g.onnx")
    r = run_cli("prune", m, tmp_path / "p.onnx", "--sparsity", "0.5")
    assert r.exit_code == 0 and "taken as weights" in r.stderr and "'W'" in r.stderr, r
    # asked to keep W an input (a value fed at run time): nothing left to prune, and it says so
    user_error(run_cli("prune", m, tmp_path / "k.onnx", "--sparsity", "0.5", "--keep-initializer-inputs"), "no prunable weights")


@pytest.mark.parametrize("args, fragment", [
    (["compress", "{m}", "{out}", "--seed", "-1", "--no-bench"], "--seed"),
    (["quantize", "{m}", "{out}/q.onnx", "--seed", "99999999999999999999999"], "--seed"),
    (["quantize", "{m}", "{out}/q.onnx", "--mode", "weight-only", "--block-size", "4611686018427387904"], "--block-size"),
    (["check", "{m}", "{m}", "--seed", "-5"], "--seed"),
    (["check", "{m}", "{m}", "--peak", "1e-320"], "--peak"),
    (["quantize", "{m}", "{out}/q.onnx", "--threads", "99999999999999999999999"], "--threads"),
    (["quantize", "{m}", "{out}/q.onnx", "--batch", "99999999999999999999999"], "--batch"),
    (["distill", "{m}", "{m}", "{out}/d.onnx", "--threads", "99999999999999999999999"], "--threads"),
    (["distill", "{m}", "{m}", "{out}/d.onnx", "--steps", "99999999999999999999999"], "--steps"),
    (["distill", "{m}", "{m}", "{out}/d.onnx", "--lr", "1e308"], "--lr"),
    (["export", "dcgan", "{out}/e.onnx", "--tolerance", "inf"], "--tolerance"),
])
def test_numeric_option_ranges(args, fragment, tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    user_error(run_cli(*[a.format(m=m, out=tmp_path / "out") for a in args]), fragment)
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("call, fragment", [
    (lambda m, o: gencompress.compress(m, o, flags={"bogus": 1}, bench=False, samples=8), "bogus"),
    (lambda m, o: gencompress.compress(m, o, flags={"mode": "weight-only"}, sweep=("nope", [3]), bench=False, samples=8), "nope"),
    (lambda m, o: gencompress.compress(m, o, seed=-1, bench=False, samples=8), "seed"),
    (lambda m, o: gencompress.compress(m, o, flags={"sparsity": "half"}, bench=False, samples=8), "sparsity"),
    (lambda m, o: gencompress.compress(m, o, sweep=("sparsity", ["half"]), bench=False, samples=8), "sparsity"),
    (lambda m, o: gencompress.compress(m, o, target_psnr=1e30, bench=False, samples=8), "target-psnr"),
    (lambda m, o: gencompress.compress(m, o, flags={"exclude": object()}, bench=False, samples=8), "exclude"),
], ids=["flags", "sweep", "seed", "flag type", "sweep type", "target", "exclude"])
def test_compress_api_flags_and_sweep(call, fragment, tmp_path):
    m = tiny(tmp_path / "g.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(GencompressError, match=fragment):
        call(m, tmp_path / "out")
    assert_untouched(tmp_path, before)


def test_compress_sweep_never_replaces_user_files(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    out = tmp_path / "out"
    sweep = ["--mode", "weight-only", "--sweep", "bits=8,4", "--no-bench", "--samples", "8"]
    (out / "sweep").mkdir(parents=True)
    (out / "sweep" / "notes.txt").write_text("mine")
    (out / "sweep" / "gen.py").write_text(GOOD_MODULE)
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, out, *sweep), "not written by gencompress")
    user_error(run_cli("compress", f"{out / 'sweep' / 'gen.py'}:G", out, *sweep), "not written by gencompress")
    assert_untouched(tmp_path, before)
    shutil.rmtree(out / "sweep")
    (out / "sweep").write_text("a file of mine")
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, out, *sweep), "not written by gencompress")
    assert_untouched(tmp_path, before)
    (out / "sweep").unlink()
    assert run_cli("compress", m, out, *sweep).exit_code == 0  # its own sweep/ it replaces on the next run
    assert run_cli("compress", m, out, *sweep).exit_code == 0
    assert sorted(p.name for p in (out / "sweep").iterdir() if p.suffix == ".onnx") == ["bits-4.onnx", "bits-8.onnx"]


def test_compress_report_says_timed_plans_may_differ(tmp_path, run_cli):
    m = tiny(tmp_path / "g.onnx")
    assert run_cli("compress", m, tmp_path / "a", "--no-bench", "--samples", "8", "--calib-size", "8").exit_code == 0
    assert "may differ" in json.loads((tmp_path / "a" / "report.json").read_text())["reproducibility"]
    assert "may differ" in (tmp_path / "a" / "report.html").read_text()
    assert run_cli("compress", m, tmp_path / "b", "--no-bench", "--samples", "8", "--calib-size", "8", "--objective", "size").exit_code == 0
    assert "reproducibility" not in json.loads((tmp_path / "b" / "report.json").read_text())


def test_check_cli_allow_nonfinite(tmp_path, run_cli, user_error):
    good = tiny(tmp_path / "g.onnx")
    (tmp_path / "nan").mkdir()
    bad = tiny(tmp_path / "nan" / "g.onnx", weight=np.full((LATENT, WIDTH), np.nan, np.float32))
    user_error(run_cli("check", good, bad, "--samples", "8"), "--allow-nonfinite")
    r = run_cli("check", good, bad, "--samples", "8", "--allow-nonfinite")
    assert r.exit_code == 0 and "NaN or Inf" in r.stderr, r


@pytest.mark.parametrize("graph", ["pytorch-converted/test_Conv2d", "pytorch-converted/test_ConvTranspose2d", "pytorch-operator/test_operator_conv"])
def test_onnx_wheel_ir3_graphs_prune_and_quantize(graph, tmp_path):
    """The IR version 3 test graphs issue 26 tried by hand (every weight also a graph input): they
    were refused ('every quantizable layer is excluded'); read as weights they prune and quantize."""
    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / graph / "model.onnx"
    assert onnx.load(str(src)).ir_version == 3
    pruned = gencompress.prune(src, tmp_path / "p.onnx", sparsity=0.5)
    assert any(r["status"] == "pruned" for r in pruned["initializers"])
    report = gencompress.quantize(src, tmp_path / "q.onnx", calib_size=32, eval_size=32)  # test_operator_conv takes batches of 20
    assert report["psnr_db"] > 20
    for out in ("p.onnx", "q.onnx"):
        proto = onnx.load(str(tmp_path / out))
        assert not {i.name for i in proto.graph.input} & {t.name for t in proto.graph.initializer}


def test_compress_ship_never_replaces_a_users_ship_folder(tmp_path, run_cli, user_error):
    m = tiny(tmp_path / "g.onnx")
    (tmp_path / "out" / "ship").mkdir(parents=True)
    (tmp_path / "out" / "ship" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, tmp_path / "out", "--ship", "--no-bench", "--samples", "8"), "not written by gencompress")
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("spec, fragment", [
    ("models: [g.onnx]\nconfigs: {bits: [3], mode: weight-only}\n", "bits must be 8 or 4"),
    ("models: [g.onnx]\nconfigs: [{calib_size: -3}]\n", "calib_size -3"),
    ("models: [g.onnx]\nconfigs: [{objective: size}]\noptions: {samples: 99999999999999999999}\n", "--samples"),
    ("models: [g.onnx]\nconfigs: [{objective: size}]\noptions: {seed: 99999999999999999999}\n", "seed"),
    ("models: [g.onnx]\nconfigs: [{objective: size}]\noptions: {provider: x}\n", "unknown execution provider"),
    ("models: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
], ids=["bits", "calib_size", "samples", "seed", "provider", "deep"])
def test_sweep_spec_values_are_checked_before_any_trial(spec, fragment, tmp_path, run_cli, user_error):
    """Each was a failed trial (exit 1, Ray started) or a RecursionError traceback: one line now."""
    tiny(tmp_path / "g.onnx")
    (tmp_path / "spec.yaml").write_text(spec)
    user_error(run_cli("sweep", tmp_path / "spec.yaml", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_python_objects_is_one_line(tmp_path, run_cli):
    """A pickle (protocol 4) of an object: torch warned on stderr before refusing, and its message
    advised weights_only=False, which would run the file's code."""
    import pickle
    from fractions import Fraction

    (tmp_path / "gen.py").write_text(GOOD_MODULE)
    (tmp_path / "g.pt").write_bytes(pickle.dumps({"fc.weight": Fraction(1, 2)}, protocol=4))
    r = run_cli("export", f"{tmp_path / 'gen.py'}:G", tmp_path / "g.onnx", "--checkpoint", tmp_path / "g.pt")
    ours = [line for line in r.stderr.splitlines() if "hello from" not in line and "building G" not in line]
    assert r.exit_code == 2 and len(ours) == 1 and "Python objects" in ours[0] and "weights_only" not in ours[0], r
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("text, suffix", [
    ("- pass: cleanup\n  pass: magnitude_prune\n  options: {sparsity: 0.5}\n", ".yaml"),
    ("- pass: magnitude_prune\n  options: {sparsity: 0.5, sparsity: 0.9}\n", ".yaml"),
    ('[{"pass": "cleanup", "pass": "magnitude_prune"}]', ".json"),
], ids=["yaml step", "yaml option", "json"])
def test_recipe_naming_a_key_twice_is_refused(text, suffix, tmp_path, run_cli, user_error):
    """YAML and JSON let the later key win: the first pass or value was silently dropped."""
    m = tiny(tmp_path / "g.onnx")
    (tmp_path / f"r{suffix}").write_text(text)
    before = snapshot(tmp_path)
    user_error(run_cli("compress", m, tmp_path / "out", "--recipe", tmp_path / f"r{suffix}", "--no-bench", "--samples", "8"), "twice")
    assert_untouched(tmp_path, before)


def test_recipe_yaml_merge_may_override(tmp_path):
    """A ``<<: *anchor`` merge's keys may be overridden (YAML's rule), so that is not a duplicate."""
    from gencompress.passes.registry import load_recipe

    (tmp_path / "r.yaml").write_text("- pass: nm_prune\n  options:\n    <<: {n: 2, m: 4}\n    n: 1\n")
    assert load_recipe(tmp_path / "r.yaml") == [{"pass": "nm_prune", "options": {"n": 1, "m": 4}}]


def test_plan_that_would_not_fit_in_memory_falls_back_to_one_streamed_build(tmp_path, monkeypatch):
    """quantize and compress with default options: the timed plan is replaced by every layer int8
    (the streamed one build) with a note, when the memory available is too small for it."""
    import gencompress.onnx_io

    m = tiny(tmp_path / "g.onnx")
    monkeypatch.setattr(gencompress.onnx_io, "free_memory", lambda: 1 << 20)  # 1 MiB available
    notes = []
    report = gencompress.quantize(m, tmp_path / "q.onnx", calib_size=8, eval_size=8, log=notes.append)
    assert any("would take about" in n for n in notes) and any("would take about" in n for n in report["notes"])
    assert report["objective"] == "balanced" and report["psnr_db"] > 20
    notes.clear()
    written = gencompress.compress(m, tmp_path / "c", samples=8, bench=False, flags={"calib_size": 8}, log=notes.append)
    assert any("would take about" in n for n in notes)
    step = next(s for s in written["passes"] if s["pass"] == "plan_int8")  # the step takes quantize's route itself
    assert step["summary"]["route"] == "untimed: memory" and not step["summary"]["configs_measured"], step


def test_free_memory_without_memavailable(monkeypatch):
    """Old kernels have no MemAvailable line: the free pages count instead; neither: None (the
    plan then runs as if memory were plenty, and the fill check assumes 16 GiB)."""
    import io

    import gencompress.onnx_io as io_

    monkeypatch.setattr(io_, "open", lambda *a, **k: io.StringIO("MemTotal: 100 kB\nMemFree: 50 kB\n"), raising=False)
    free = io_.free_memory()
    assert isinstance(free, int) and free > 0
    monkeypatch.setattr(io_.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert io_.free_memory() is None


def test_compress_exclude_given_as_one_string_names_layers_not_letters():
    """flags={"exclude": "conv1,conv2"} (quantize's form) excluded the layers 'c', 'o', 'n', ..."""
    from gencompress.verbs.compress import default_recipe

    for mode in ("static", "fp16"):
        steps = default_recipe(mode=mode, exclude="conv1, conv2", objective="size")
        assert [s["options"]["exclude"] for s in steps if "exclude" in s["options"]][-1] == ["conv1", "conv2"]


@pytest.mark.parametrize("verb", list(VERBS))
def test_graph_without_outputs(verb, tmp_path, run_cli, user_error):
    """bench ended in onnxruntime's InvalidArgument traceback; prune wrote a model computing nothing."""
    m = tiny(tmp_path / "g.onnx")
    proto = onnx.load(str(m))
    del proto.graph.output[:]
    onnx.save(proto, str(m))
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    user_error(run_cli(*VERBS[verb](m, tmp_path / "out")), "no outputs")
    assert_untouched(tmp_path, before)


@pytest.mark.parametrize("side", [12, 20])
def test_image_larger_than_pillows_limit_is_one_line(side, tmp_path, monkeypatch):
    """Pillow warned on stderr (and decoded) up to twice its pixel limit and raised its own
    DecompressionBombError (a traceback) above it; the limit is scaled down here to 100 pixels."""
    import warnings

    from PIL import Image

    from gencompress.images import load_image_folder

    Image.new("L", (side, side)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the way
        with pytest.raises(GencompressError, match="decompression bomb"):
            load_image_folder(tmp_path, (1, 1, 8, 8), -1.0, 1.0, 2**20, "image")


def test_error_messages_quote_values_on_one_line(tmp_path):
    """A value's repr in a message: numpy's spans lines (a two-line error), a hostile __repr__
    raised inside the error path (a traceback)."""
    class Evil:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    m = tiny(tmp_path / "g.onnx")
    with pytest.raises(GencompressError) as e:
        gencompress.sensitivity(m, calib_data={"z": np.zeros((4, LATENT), np.float32)}, eval_size=8)
    assert "\n" not in str(e.value)
    with pytest.raises(GencompressError, match="exclude must be"):
        gencompress.quantize(m, tmp_path / "q.onnx", exclude=[Evil()])


def test_a_weight_whose_activations_square_past_float32(tmp_path):
    """A flipped exponent bit (one ConvTranspose weight 0.064 -> 2.2e37, found by
    benchmarks/hostile_fuzz.py): activations stay finite, their squares do not, and the portable
    int8 search's input moments ended in numpy's LinAlgError. That layer now goes without moments."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale", Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    m = scale.build_generator(4, tmp_path / "g.onnx", external=False)
    proto = onnx.load(str(m))
    w0 = next(t for t in proto.graph.initializer if t.name == "w0")
    array = numpy_helper.to_array(w0).copy()
    array[96, 13, 1, 0] = 2.1666824e37
    w0.CopyFrom(numpy_helper.from_array(array, "w0"))
    onnx.save(proto, str(m))
    try:
        gencompress.quantize(m, tmp_path / "q.onnx", objective="size", calib_size=16, eval_size=16)
    except GencompressError:
        pass  # a one-line refusal would do too


# ---- refusals that give the true reason --------------------------------------------------------------
@pytest.fixture(scope="module")
def half_models(tmp_path_factory) -> dict[str, Path]:
    """tiny's model converted by ``quantize --mode fp16``: float16 inside (float32 I/O), and float16 I/O."""
    folder = tmp_path_factory.mktemp("half")
    src = tiny(folder / "f32.onnx")
    gencompress.quantize(src, folder / "f16.onnx", mode="fp16", eval_size=8)
    gencompress.quantize(src, folder / "f16io.onnx", mode="fp16", keep_io_types=False, eval_size=8)
    return {"f16": folder / "f16.onnx", "f16io": folder / "f16io.onnx"}


@pytest.mark.parametrize("which", ["f16", "f16io"])
@pytest.mark.parametrize("args", [[], ["--objective", "size"], ["--mode", "weight-only"], ["--mode", "fp16"]])
def test_float16_model_to_quantize_names_its_type(which, args, half_models, tmp_path, run_cli, user_error):
    src = half_models[which]
    before = snapshot(src.parent)
    user_error(run_cli("quantize", src, tmp_path / "q.onnx", *args), "float16, not float32", "'W'")
    assert snapshot(src.parent) == before and not any(tmp_path.iterdir())


@pytest.mark.parametrize("which", ["f16", "f16io"])
def test_float16_model_sensitivity_and_compress(which, half_models, tmp_path, run_cli, user_error):
    src = half_models[which]
    user_error(run_cli("sensitivity", src), "float16, not float32")
    # compress reaches the same reason (through its recipe; float16 inputs are calibrated with float16 draws)
    with pytest.raises(GencompressError, match="float16, not float32"):
        gencompress.compress(src, tmp_path / "out", bench=False)


def test_float16_model_still_prunes_and_checks(half_models, tmp_path):
    report = gencompress.prune(half_models["f16"], tmp_path / "p.onnx", sparsity=0.5)
    assert report["initializers"][0]["status"] == "pruned"
    assert onnx.load(str(tmp_path / "p.onnx")).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_weights_kept_as_inputs_are_named_not_nothing(tmp_path, run_cli, user_error):
    m = ir3(tmp_path / "g.onnx")
    with pytest.raises(GencompressError, match="weights are graph inputs .*'W'.*--keep-initializer-inputs"):
        with initializer_inputs(keep=True):
            gencompress.quantize(m, tmp_path / "w.onnx", mode="weight-only", eval_size=8)
    # static int8 treats the fed W as an activation; the run measures it on the spilled model (no traceback)
    r = run_cli("quantize", m, tmp_path / "s.onnx", "--objective", "size", "--keep-initializer-inputs", "--calib-size", "8")
    assert r.exit_code == 0, r
    assert [i.name for i in onnx.load(str(tmp_path / "s.onnx")).graph.input] == ["z", "W"]


def test_external_data_checksum_is_verified(tmp_path, run_cli, user_error):
    """An entry's SHA-1 (of the tensor's bytes, or of the whole side file) is checked; a tampered
    side file is refused in one line by every reader, the input left as it was."""
    import hashlib

    w = np.arange(LATENT * WIDTH, dtype=np.float32).reshape(LATENT, WIDTH) / 1000
    for i, digest in enumerate([hashlib.sha1(w.tobytes()).hexdigest(), hashlib.sha1(w.tobytes()).hexdigest().upper()]):
        (tmp_path / f"ok{i}").mkdir()
        m = tiny(tmp_path / f"ok{i}" / "g.onnx", weight=w, external={"location": "w.bin", "checksum": digest})
        assert run_cli("prune", m, tmp_path / f"p{i}.onnx", "--sparsity", "0.5").exit_code == 0
    (tmp_path / "t").mkdir()
    m = tiny(tmp_path / "t" / "g.onnx", weight=w, external={"location": "w.bin", "checksum": hashlib.sha1(w.tobytes()).hexdigest()})
    assert run_cli("check", m, m, "--samples", "4").exit_code == 0
    data = bytearray((tmp_path / "t" / "w.bin").read_bytes())
    data[100] ^= 0x01  # one flipped bit, after a first successful read (the digest cache is per file version)
    (tmp_path / "t" / "w.bin").write_bytes(bytes(data))
    before = snapshot(tmp_path / "t")
    for args in (["prune", m, tmp_path / "x.onnx", "--sparsity", "0.5"], ["check", m, m, "--samples", "4"], ["bench", m, "--runs", "2", "--no-memory"],
                 ["quantize", m, tmp_path / "x.onnx", "--objective", "size"]):
        user_error(run_cli(*args), "does not match its SHA-1 checksum")
    assert_untouched(tmp_path / "t", before)
    assert not (tmp_path / "x.onnx").exists()


def test_whole_file_checksum_and_a_large_inline_model_type_check(tmp_path, monkeypatch):
    import hashlib

    from gencompress import onnx_io

    (tmp_path / "a").mkdir()
    w = np.random.default_rng(1).standard_normal((LATENT, WIDTH)).astype(np.float32)
    m = tiny(tmp_path / "a" / "g.onnx", weight=w, external={"location": "w.bin", "offset": "0", "checksum": "1" * 40})
    with open(tmp_path / "a" / "w.bin", "ab") as f:  # a shared side file: the digest is the whole file's
        f.write(b"\0" * 64)
    whole = hashlib.sha1((tmp_path / "a" / "w.bin").read_bytes()).hexdigest()
    proto = onnx.load(str(m), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "checksum":
            entry.value = whole
    proto.graph.initializer[0].external_data.add(key="length", value=str(w.nbytes))
    onnx.save(proto, str(m))
    assert onnx_io.load_model(m).graph.initializer[0].raw_data == w.tobytes()
    # a model held in memory past the inline limit is type-checked on its skeleton: same verdict
    monkeypatch.setattr(onnx_io, "INLINE_TYPECHECK_BYTES", 0)
    bad = tiny(tmp_path / "d.onnx", weight=np.ones((LATENT, WIDTH), np.float64))
    with pytest.raises(GencompressError, match=r"types do not match: .*node name: #0 writing h\): B has inconsistent type tensor\(double\)"):
        onnx_io.load_header(bad)
    onnx_io.load_header(tiny(tmp_path / "f.onnx"))


# ---- paths the tool writes -----------------------------------------------------------------------------

def test_output_onto_a_fifo_or_with_a_too_long_name_is_refused(tmp_path, run_cli, user_error):
    """A device/FIFO/socket named as an output is refused, never replaced by the rename (as root,
    ``prune g.onnx /dev/null`` replaced the machine's null device with a file); a name the OS
    refuses (> 255 bytes) is one line, not an OSError traceback."""
    m = tiny(tmp_path / "g.onnx")
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    long = tmp_path / ("x" * 300 + ".onnx")
    before = snapshot(tmp_path)
    for out, fragment in ((fifo, "not a regular file"), (long, "longer than 255 bytes")):
        user_error(run_cli("prune", m, out, "--sparsity", "0.5"), fragment)
        user_error(run_cli("quantize", m, out, "--objective", "size", "--calib-size", "8", "--eval-size", "8"), fragment)
        with pytest.raises(GencompressError, match=fragment):
            save_model(onnx.load(str(m)), out)
    user_error(run_cli("check", m, m, "--samples", "4", "--json", "--report", tmp_path / ("y" * 300)), "longer than 255 bytes")
    for verb in ("compress", "ship"):  # OUT_DIR
        user_error(run_cli(verb, m, tmp_path / ("z" * 300), *(["--no-bench"] if verb == "compress" else [])), "longer than 255 bytes")
    with pytest.raises(GencompressError, match="longer than 255 bytes"):
        gencompress.prune(m, tmp_path / ("p" * 300), sparsity=0.5)
    assert fifo.is_fifo() and snapshot(tmp_path).keys() == before.keys()


def test_out_dir_that_is_not_a_folder_is_named(tmp_path, run_cli, user_error):
    """OUT_DIR is checked in one place (``arguments.out_dir_path``) for compress, ship and sweep,
    from the CLI and the API: a FIFO is called a FIFO (it was "exists and is a file"), a file a
    file, a value that is no path one line."""
    m = tiny(tmp_path / "g.onnx")
    fifo, plain = tmp_path / "pipe", tmp_path / "plain"
    os.mkfifo(fifo)
    plain.write_text("mine")
    for verb in ("compress", "ship"):
        extra = ["--no-bench"] if verb == "compress" else []
        user_error(run_cli(verb, m, fifo, *extra), "is a FIFO (named pipe); OUT_DIR must be a folder")
        user_error(run_cli(verb, m, plain, *extra), "exists and is a file; OUT_DIR must be a folder")
        for value in (5, None, ""):
            with pytest.raises(GencompressError, match="OUT_DIR: expected a file path"):
                getattr(gencompress, verb)(m, value)
    with pytest.raises(GencompressError, match="is a FIFO"):
        gencompress.sweep({"models": [str(m)], "configs": [{"sparsity": 0.5}]}, fifo)
    assert fifo.is_fifo() and plain.read_text() == "mine"
