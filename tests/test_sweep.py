"""gencompress sweep on a local Ray: spec errors, trials equal to serial compress runs, resume,
a failing trial, Ctrl-C/SIGTERM, and the sweep page in Chromium.

Small on purpose: the zoo dcgan, --objective size, 32 fidelity samples, few timing runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import gencompress

OPTIONS = {"samples": 32, "runs": 5, "batches": [1]}
CONFIGS = [{"objective": "size"}, {"objective": "size", "sparsity": 0.5, "distill": 20}]
RAY = dict(num_cpus=2, object_store_memory=100 << 20)  # light: tests share 2 cores


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


# ---- the spec is validated before anything runs -------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"models": ["dcgan"], "configs": {"sparsity": []}}, "empty list"),
        ({"models": ["dcgan"], "configs": {}}, "empty grid"),
        ({"models": ["dcgan"], "configs": [{"sparsty": 0.5}]}, "unknown key 'sparsty'"),
        ({"models": ["dcgan"], "configs": [{"mode": "int3"}]}, "--mode"),
        ({"models": ["dcgan"], "configs": [{"sparsity": 2}]}, "sparsity"),
        ({"models": ["nosuchzoo"], "configs": [{}]}, "unknown zoo model"),
        ({"models": ["missing.onnx"], "configs": [{}]}, "no such file"),
        ({"models": [{"model": "gen.py:G", "checkpoint": "nope.pt"}], "configs": [{}]}, "no such file"),
        ({"models": ["dcgan"], "configs": [{"recipe": "nope.yaml"}]}, "no such file"),
        ({"models": ["dcgan"], "configs": [{}], "options": {"samples": 0}}, "options.samples"),
        ({"models": ["dcgan"], "configs": [{}], "optionz": {}}, "unknown key 'optionz'"),
        ({"models": [], "configs": [{}]}, "non-empty list"),
        ({"configs": [{}]}, "'models' is missing"),
        ({"models": ["dcgan", "dcgan"], "configs": [{}]}, "two models named"),
        ({"models": ["dcgan"], "configs": [{"target_psnr": 1e30}]}, "target_psnr"),
        ({"models": ["dcgan"], "configs": [{"target_psnr": float("inf")}]}, "target_psnr"),
    ],
)
def test_bad_spec_is_one_line_exit_2(tmp_path, run_cli, user_error, spec, fragment):
    (tmp_path / "gen.py").write_text("class G: pass\n")
    out = tmp_path / "out"
    user_error(run_cli("sweep", _write(tmp_path / "spec.yaml", spec), out), fragment)
    assert not out.exists()  # nothing written, no Ray started


def test_spec_not_yaml(tmp_path, run_cli, user_error):
    bad = tmp_path / "spec.yaml"
    bad.write_text("models: [dcgan\n")
    user_error(run_cli("sweep", bad, tmp_path / "out"), "not valid YAML")


def test_trial_key_is_content_addressed(tmp_path):
    from gencompress.sweeps.spec import load_spec

    onnx_a = tmp_path / "a.onnx"
    onnx_a.write_bytes(b"model bytes v1")
    spec = {"models": [{"model": "a.onnx"}], "configs": [{"sparsity": 0}, {"sparsity": 0.0, "mode": "static"}]}
    first, same = load_spec(spec, tmp_path)
    assert first.key == same.key  # the same configuration written two ways
    onnx_a.write_bytes(b"model bytes v2")
    (changed, _) = load_spec(spec, tmp_path)
    assert changed.key != first.key  # retrained model: run again


# ---- a local sweep ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "broken.onnx").write_bytes(b"not an onnx model")
    (folder / "bad.py").write_text("import torch\n\nclass G(torch.nn.Module):\n    def forward(self, z):\n"
                                   "        raise ValueError('this generator cannot be traced')\n")
    models = ["dcgan", {"model": "broken.onnx", "name": "broken"}, {"model": "bad.py:G", "name": "unexportable", "inputs": ["z=1x4"]}]
    spec = _write(folder / "spec.yaml", {"models": models, "configs": CONFIGS, "options": OPTIONS})
    summary = gencompress.sweep(spec, folder / "out", **RAY)
    return {"spec": spec, "out": folder / "out", "summary": summary,
            "results": json.loads((folder / "out" / "results.json").read_text())}


def test_local_sweep_completes_and_records_failures(local_sweep):
    s, rows = local_sweep["summary"], local_sweep["results"]["trials"]
    assert (s["trials"], s["done"], s["failed"], s["resumed"]) == (6, 2, 4, 0)
    for r in rows:
        if r["model"] in ("broken", "unexportable"):  # a trial that fails is a row with its one-line reason; the others go on
            assert r["status"] == "failed" and "\n" not in r["error"] and r["folder"] is None
            continue
        assert r["status"] == "done"
        folder = local_sweep["out"] / r["folder"]
        assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "reference.onnx", "report.html", "report.json", "trial.json"]
        report = json.loads((folder / "report.json").read_text())
        assert r["bytes"] == report["sizes"]["candidate"]["bytes"] == (folder / "model.onnx").stat().st_size
        assert r["psnr_db"] == report["fidelity"]["outputs"][0]["psnr_db"] > 20
        latency = report["latency"]["results"]  # timed after the builds and merged into compress's report
        assert [(x["batch"], x["threads"]) for x in latency] == [(1, 2)]
        assert r["b1_t2.speedup"] == latency[0]["speedup"] > 0
        page = (folder / "report.html").read_text()
        assert "Latency" in page and "<h2>Samples</h2>" in page and "data:image/png" in page  # the build's previews kept
    # the model is exported once for its trials: its failure is each trial's, in the exporter's words
    unexportable = {r["error"] for r in rows if r["model"] == "unexportable"}
    assert len(unexportable) == 1 and "cannot be traced" in unexportable.pop()
    csv_lines = (local_sweep["out"] / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    assert not list(local_sweep["out"].glob("trials/*/.partial-*"))


@pytest.mark.skipif(bool(os.environ.get("GENCOMPRESS_TEST_CPU")), reason="emulated CPU: Ray workers run onnxruntime natively, this "
                    "process emulated, so their calibrations differ (tests/emulated_cpu.py covers this process only)")
def test_trials_are_byte_identical_to_serial_compress(local_sweep, tmp_path):
    rows = [r for r in local_sweep["results"]["trials"] if r["status"] == "done"]
    for config, r in zip(CONFIGS, rows):
        serial = tmp_path / r["key"][:8]
        report = gencompress.compress("dcgan", serial, flags=dict(config), samples=OPTIONS["samples"], bench=False)
        trial = local_sweep["out"] / r["folder"]
        for name in ("model.onnx", "reference.onnx"):
            assert (trial / name).read_bytes() == (serial / name).read_bytes(), (config, name)
        swept = json.loads((trial / "report.json").read_text())
        assert swept["fidelity"]["outputs"] == report["fidelity"]["outputs"]
        assert swept["recipe"] == report["recipe"]


def test_rerun_executes_nothing(local_sweep):
    before = {p: p.stat().st_mtime_ns for p in local_sweep["out"].glob("trials/*/*/model.onnx")}
    summary = gencompress.sweep(local_sweep["spec"], local_sweep["out"], **RAY)
    assert summary["resumed"] == 2 and summary["done"] == 2
    assert summary["executed"] == []  # the broken model's trials are tried again, and fail again
    assert {p: p.stat().st_mtime_ns for p in local_sweep["out"].glob("trials/*/*/model.onnx")} == before


def test_sweep_page_in_chromium(local_sweep, tmp_path):
    from PIL import Image

    from gencompress.edge.browser import run_page

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Chromium is not installed (tests/test_report_html.py installs it)")
    page = (local_sweep["out"] / "report.html").read_text()
    probe = ("<script>window.addEventListener('load',function(){var p=document.createElement('pre');p.id='result';"
             "p.textContent=JSON.stringify({charts:Array.prototype.map.call(document.querySelectorAll('svg.chart'),function(s){"
             "var b=s.getBoundingClientRect();return {id:s.id,points:s.querySelectorAll('circle').length,"
             "front:s.querySelectorAll('circle[data-pareto=\"true\"]').length,w:b.width,h:b.height};}),"
             "links:Array.prototype.map.call(document.querySelectorAll('table.trials a'),function(a){return a.getAttribute('href');})});"
             "document.body.appendChild(p);});</script>")
    probed = local_sweep["out"] / "probe.html"  # beside report.html so the trial links resolve
    probed.write_text(page.replace("</body>", probe + "</body>"))
    shot = tmp_path / "sweep.png"
    result = run_page(probed.as_uri(), tmp_path / "profile", chromium=chromium, screenshot=shot, clip=".charts", size=(1100, 900))
    probed.unlink()
    charts = {c["id"]: c for c in result["charts"]}
    assert set(charts) == {"size-dcgan", "speed-dcgan"}  # the broken models have no chart, only their failed rows
    for c in charts.values():
        assert c["points"] == 2 and c["front"] >= 1 and c["w"] > 100 and c["h"] > 100
    for href in result["links"]:
        assert (local_sweep["out"] / href).is_file()
    pixels = Image.open(shot).convert("RGB")
    red = sum(1 for p in pixels.getdata() if p[0] > 180 and p[1] < 110 and p[2] < 90)  # the front's #d0452f points
    assert pixels.size[0] > 500 and red > 50


# ---- Ctrl-C / SIGTERM --------------------------------------------------------------------------------


def test_sigterm_keeps_finished_trials_and_rerun_resumes(tmp_path):
    spec = _write(tmp_path / "spec.yaml", {"models": ["dcgan"], "configs": {"objective": "size", "sparsity": [0.0, 0.5, 0.75]},
                                           "options": {**OPTIONS, "bench": False}})
    out = tmp_path / "out"
    gencompress_cli = Path(sys.executable).parent / "gencompress"
    # the sweep's temp files (its workers' too) in a folder of their own; Ray's where it always is
    temp = Path(tempfile.mkdtemp(prefix="gencompress-test-"))  # short: Ray's socket paths are limited
    env = {**os.environ, "TMPDIR": str(temp), "RAY_TMPDIR": tempfile.gettempdir()}
    proc = subprocess.Popen([str(gencompress_cli), "sweep", str(spec), str(out), "--num-cpus", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300  # a guard, not a measurement
        while not list(out.glob("trials/dcgan/*/trial.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] in ("gencompress: aborted", "gencompress: interrupted")
    assert not list(out.glob("trials/*/.partial-*"))
    # the killed workers' trial folders removed with the sweep's scratch folder (onnxruntime keeps its .ses id there)
    leftover = [p.name for p in temp.iterdir() if p.name.startswith("gencompress-")]
    shutil.rmtree(temp, ignore_errors=True)
    assert leftover == []
    finished = sorted(p.parent for p in out.glob("trials/dcgan/*/trial.json"))
    assert 1 <= len(finished) < 3
    for folder in finished:  # every folder that exists is a whole trial
        assert {"model.onnx", "reference.onnx", "report.json", "report.html"} <= {p.name for p in folder.iterdir()}
    rows = json.loads((out / "results.json").read_text())["trials"]
    assert sum(r["status"] == "done" for r in rows) == len(finished)
    assert {r["status"] for r in rows} <= {"done", "pending"}

    summary = gencompress.sweep(spec, out, **RAY)
    assert summary["resumed"] == len(finished) and len(summary["executed"]) == 3 - len(finished) and summary["done"] == 3


def test_python_api_is_registered():
    assert "sweep" in gencompress.__all__
    from gencompress.cli.main import COMMANDS

    assert COMMANDS["sweep"][0] == "gencompress.cli.sweep"
    assert not os.environ.get("RAY_ADDRESS")  # the tests start their own Ray


def test_which_trials_time_while_building(tmp_path):
    from gencompress.sweeps.spec import load_spec

    (tmp_path / "plan.yaml").write_text("- {pass: cleanup}\n- {pass: plan_int8, options: {objective: speed}}\n")
    (tmp_path / "qdq.yaml").write_text("- {pass: cleanup}\n- {pass: insert_qdq}\n")
    configs = [{"objective": "balanced"}, {"objective": "size"}, {"mode": "weight-only"}, {"target_psnr": 30},
               {"recipe": "plan.yaml"}, {"recipe": "qdq.yaml"}]
    trials = load_spec({"models": ["dcgan"], "configs": configs}, tmp_path)
    # these go whole into the timing phase (one per node); the others build in parallel first
    assert [t.times_in_build for t in trials] == [True, False, False, True, True, False]


def test_builds_are_submitted_longest_first(tmp_path):
    from gencompress.sweeps.runner import build_cost
    from gencompress.sweeps.spec import load_spec

    (tmp_path / "long.yaml").write_text("- {pass: magnitude_prune, options: {sparsity: 0.5}}\n- {pass: distill, options: {steps: 500}}\n")
    configs = [{"objective": "size"}, {"objective": "size", "distill": 200}, {"recipe": "long.yaml"}]
    trials = load_spec({"models": ["vae", "dcgan"], "configs": configs}, tmp_path)
    costs = {(t.model["name"], t.label): build_cost(t) for t in trials}
    assert [c[0] for c in costs.values()] == [0, 200, 500, 0, 200, 500]
    order = sorted(trials, key=build_cost, reverse=True)
    assert [build_cost(t)[0] for t in order] == [500, 500, 200, 200, 0, 0]
    # same steps: the larger model first
    assert order[0].model_bytes >= order[1].model_bytes
    # a fresh process knows the recipe steps that run models (distill, plan_int8) when it reads a spec
    code = "import sys; from gencompress.sweeps.spec import load_spec; print(len(load_spec(sys.argv[1])))"
    (tmp_path / "spec.yaml").write_text("models: [vae]\nconfigs: [{recipe: long.yaml}]\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spec.yaml")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-500:]
