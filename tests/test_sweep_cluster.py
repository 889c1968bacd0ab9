"""gencompress sweep on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster):
every trial completes on both nodes, a worker killed mid-trial is retried, a rerun executes
nothing, and the models are byte-identical to serial compress runs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

import gencompress

CONFIGS = [{"objective": "size", "sparsity": 0.5, "distill": 60}, {"objective": "size", "sparsity": 0.25, "distill": 60},
           {"objective": "size", "mode": "weight-only"}]
OPTIONS = {"samples": 32, "runs": 5, "batches": [1]}


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, resources={"gencompress_timing": 1}, object_store_memory=80 << 20, include_dashboard=False)
    c = Cluster(initialize_head=True, head_node_args=node)
    c.add_node(**{k: v for k, v in node.items() if k != "include_dashboard"})
    c.wait_for_nodes()
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _trial_workers() -> list[int]:
    """PIDs of Ray workers now running a build (Ray titles a busy worker ray::<task name>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::build_trial"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_two_node_sweep_survives_a_killed_worker(cluster, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"models": ["dcgan"], "configs": CONFIGS, "options": OPTIONS}))
    out = tmp_path / "out"
    outcome = {}

    def run():
        try:
            outcome["summary"] = gencompress.sweep(spec, out, address=cluster.address)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread below
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300  # a guard against a hung test, not a measurement
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        busy = _trial_workers()
        if busy:
            time.sleep(2)  # into the trial: export done, distilling
            if busy[0] in _trial_workers():
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)  # a worker process this test's cluster started
        time.sleep(0.2)
    thread.join(timeout=600)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert killed is not None, "no build was seen running"

    summary = outcome["summary"]
    assert (summary["done"], summary["failed"]) == (3, 0)  # the killed trial was retried and completed
    metas = [json.loads(p.read_text()) for p in out.glob("trials/dcgan/*/trial.json")]
    assert len(metas) == 3
    assert killed not in {m["build_pid"] for m in metas}  # the trial it ran was built again by another worker
    assert len({m["build_node"] for m in metas}) == 2  # both nodes built trials
    assert all(m["timing_node"] for m in metas)

    again = gencompress.sweep(spec, out, address=cluster.address)
    assert again["executed"] == [] and again["resumed"] == 3

    rows = json.loads((out / "results.json").read_text())["trials"]
    emulated = bool(os.environ.get("GENCOMPRESS_TEST_CPU"))  # the workers' onnxruntime is native, this process's emulated
    for config, row in zip([] if emulated else CONFIGS[:1], rows):  # the distilled one (test_sweep.py compares more on a local Ray)
        serial = tmp_path / "serial" / row["key"][:8]
        gencompress.compress("dcgan", serial, flags=dict(config), samples=OPTIONS["samples"], bench=False)
        for name in ("model.onnx", "reference.onnx"):
            assert (out / row["folder"] / name).read_bytes() == (serial / name).read_bytes(), (config, name)
