"""Scale: one session factory, external data in and out (the > 2 GB path, forced with a small
threshold), and quantize's peak memory measured in a fresh process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx

PACKAGE_FOLDERS = ("gencompress", "exporter", "passes", "runtime_check", "models", "ship")
ROOT = Path(__file__).resolve().parents[1]


def test_the_session_factory_is_the_only_place_sessions_are_made():
    found = []
    for folder in PACKAGE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "templates" in path.parts:  # copied into ship bundles, which run without gencompress
                continue
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"InferenceSession\(", line) and not line.lstrip().startswith(("#", '"', "'")):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert found and all(f.startswith("runtime_check/sessions.py:") for f in found), found
    assert len(found) == 1, found


def _external_files(path: Path) -> set[str]:
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    header = onnx.load(str(path), load_external_data=False)
    return {ExternalDataInfo(t).location for t in _get_all_tensors(header) if uses_external_data(t)}


def _on_disk(path: Path) -> int:
    """Bytes of a model's files: the .onnx and the side files it names (read independently of gencompress)."""
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in _external_files(path))


def test_external_data_through_quantize_prune_and_check(zoo_onnx, tmp_path, monkeypatch, run_cli):
    """Every verb on the > 2 GB path without 2 GB: the limit lowered so that the zoo dcgan (and
    everything made from it) is written as OUT.onnx + OUT.onnx.data, and sessions read files."""
    from gencompress import onnx_io
    from gencompress.runtime_check import sessions

    dcgan = zoo_onnx("dcgan")  # exported before the limit is lowered: the shared copy stays self-contained
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_LIMIT", 4096)
    monkeypatch.setattr(sessions, "BYTES_LIMIT", 4096)
    src = tmp_path / "in" / "g.onnx"
    onnx_io.save_model(onnx_io.load_model(dcgan), src)
    assert _external_files(src) == {"g.onnx.data"} and src.stat().st_size < 64 * 1024

    pruned = tmp_path / "out" / "p.onnx"
    r = run_cli("prune", src, pruned, "--sparsity", "0.5", "--json")
    assert r.exit_code == 0, r
    assert _external_files(pruned) == {"p.onnx.data"}
    quantized = tmp_path / "out" / "q.onnx"
    r = run_cli("quantize", pruned, quantized, "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert _external_files(quantized) == {"q.onnx.data"} and report["psnr_db"] > 30
    assert report["bytes_after"] == quantized.stat().st_size + (tmp_path / "out" / "q.onnx.data").stat().st_size
    c = json.loads(run_cli("check", pruned, quantized, "--json").stdout)  # sessions read both by path
    assert round(c["outputs"][0]["psnr_db"], 2) == report["psnr_db"]
    # nothing left behind: exactly the two files per output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.onnx", "p.onnx.data", "q.onnx", "q.onnx.data"]
    # a rerun is byte-identical
    again = tmp_path / "again" / "q.onnx"
    assert run_cli("quantize", pruned, again, "--no-check").exit_code == 0
    assert again.read_bytes() == quantized.read_bytes()
    assert (tmp_path / "again" / "q.onnx.data").read_bytes() == (tmp_path / "out" / "q.onnx.data").read_bytes()


def test_external_data_on_request_and_side_file_never_an_input(zoo_onnx, tmp_path, run_cli, user_error):
    src = zoo_onnx("dcgan")
    out = tmp_path / "q.onnx"
    r = run_cli("quantize", src, out, "--external-data", "--no-check")
    assert r.exit_code == 0, r
    assert "not measured" in r.stdout and _external_files(out) == {"q.onnx.data"}
    # an output whose side file would be the input's own weights is refused, the input intact
    victim = tmp_path / "victim.onnx"
    onnx.save_model(onnx.load(str(src)), str(victim), save_as_external_data=True, location="w.onnx.data", size_threshold=0)
    weights = (tmp_path / "w.onnx.data").read_bytes()
    user_error(run_cli("quantize", victim, tmp_path / "w.onnx", "--external-data", "--no-check", "--objective", "size"), "w.onnx.data")
    assert (tmp_path / "w.onnx.data").read_bytes() == weights and not (tmp_path / "w.onnx").exists()


_PEAK_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    import numpy as np, onnx, onnxruntime, onnx_ir, onnxscript.optimizer  # imported before the baseline
    from gencompress.runtime_check import calibration as C
    from gencompress.verbs import quantize as Q
    from scale import build_generator, vm_hwm

    src, out = Path(sys.argv[1]), sys.argv[2]
    build_generator(80, src)
    base = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
    seen = {"bytes": 0}
    update = C.TensorStats.update
    def counting(self, x):  # every calibrated tensor of every batch passes here once
        seen["bytes"] += np.asarray(x).nbytes
        return update(self, x)
    C.TensorStats.update = counting
    Q.quantize(str(src), out, calib_size=64, check=False, objective="size")
    print(json.dumps({"base": base, "peak": vm_hwm(), "file": src.stat().st_size, "per_sample": seen["bytes"] / 64}))
    """
)


def test_quantize_peak_memory_is_a_few_files_plus_activations(tmp_path):
    """~21 MB generator, in a fresh process: peak RSS above the post-import baseline stays within
    3x the file plus one calibration batch of activations (x2: onnxruntime's buffers and numpy's
    float64 copy in the statistics)."""
    from gencompress.runtime_check.calibration import ACTIVATION_BUDGET, BATCH_SIZE

    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(tmp_path / "g.onnx"), str(tmp_path / "q.onnx"), str(ROOT / "benchmarks")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert 15e6 < r["file"] < 30e6
    batch = max(1, min(BATCH_SIZE, ACTIVATION_BUDGET // int(r["per_sample"])))
    activations = r["per_sample"] * batch
    used = r["peak"] - r["base"]
    assert used <= 3 * r["file"] + 2 * activations, {"used MB": used / 1e6, "file MB": r["file"] / 1e6, "activations MB": activations / 1e6}


def test_compress_and_bench_with_external_data(zoo_onnx, tmp_path, monkeypatch, run_cli):
    """compress (default recipe, --objective size) and bench on a model whose weights are in
    external data, the 2 GB limit lowered to a few KB: no whole model is ever serialized (what
    fails above 2 GB), OUT_DIR holds each model with its side file, sizes are the files'."""
    from gencompress import onnx_io
    from gencompress.runtime_check import sessions

    dcgan = zoo_onnx("dcgan")  # exported before the limit is lowered: the shared copy stays self-contained
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_LIMIT", 4096)
    monkeypatch.setattr(sessions, "BYTES_LIMIT", 4096)
    serialize = sessions.model_bytes

    def refusing(model):  # a model above the (lowered) limit serialized whole would fail at 2 GB
        data = serialize(model)
        assert len(data) <= 64 * 1024, f"a {len(data)}-byte model was serialized whole"
        return data

    monkeypatch.setattr(sessions, "model_bytes", refusing)
    src = tmp_path / "in" / "g.onnx"
    onnx_io.save_model(onnx_io.load_model(dcgan), src)
    assert _external_files(src) == {"g.onnx.data"}

    out = tmp_path / "job"
    out.mkdir()
    (out / "model.onnx.data").write_bytes(b"a previous run's weights")  # replaced by this run's
    r = run_cli("compress", src, out, "--objective", "size", "--samples", 16, "--batch", 1, "--calib-size", 32, "--json")
    assert r.exit_code == 0, r
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.onnx", "model.onnx.data", "reference.onnx", "reference.onnx.data", "report.html", "report.json"], names
    assert _external_files(out / "model.onnx") == {"model.onnx.data"} and _external_files(out / "reference.onnx") == {"reference.onnx.data"}
    report = json.loads((out / "report.json").read_text())
    for role in ("reference", "model"):
        key = "candidate" if role == "model" else role
        assert report["sizes"][key]["bytes"] == _on_disk(out / f"{role}.onnx")
    assert report["fidelity"]["outputs"][0]["psnr_db"] > 30 and report["latency"]["results"]

    b = json.loads(run_cli("bench", out / "model.onnx", "--reference", src, "--batch", 1, "--runs", 3, "--warmup", 1, "--json").stdout)
    assert b["sizes"]["model"]["bytes"] == _on_disk(out / "model.onnx")
    assert b["sizes"]["reference"]["bytes"] == _on_disk(src)
    assert b["memory"]["results"][0]["model_peak_bytes"] > 0  # the probe read the model with its side file


def test_streamed_save_equals_the_in_memory_model(zoo_onnx, tmp_path):
    """save_model writes an onnx_ir model tensor by tensor (no whole-model proto); the file reads
    back as the same model, onnxruntime gives the same outputs, and a rerun is byte-identical."""
    import numpy as np
    import onnx_ir as ir

    from gencompress import onnx_io
    from gencompress.runtime_check.sessions import make_session

    model = onnx_io.load_ir(zoo_onnx("dcgan"))
    expected = ir.serde.serialize_model(model)
    for name in ("a.onnx", "b.onnx"):
        onnx_io.save_model(model, tmp_path / name)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    got = onnx.load(str(tmp_path / "a.onnx"))
    def by_name(proto):  # data_location DEFAULT spelled out or not: the same tensor
        tensors = sorted(proto.graph.initializer, key=lambda t: t.name)
        for t in tensors:
            if t.data_location == onnx.TensorProto.DEFAULT:
                t.ClearField("data_location")
        return tensors

    assert by_name(got) == by_name(expected) and list(got.graph.node) == list(expected.graph.node)
    onnx.checker.check_model(got)
    dims = [d.dim_value or 1 for d in got.graph.input[0].type.tensor_type.shape.dim]
    z = {got.graph.input[0].name: np.random.default_rng(0).standard_normal((2, *dims[1:])).astype(np.float32)}
    a = make_session(tmp_path / "a.onnx").run(None, z)[0]
    b = make_session(expected).run(None, z)[0]
    assert np.array_equal(a, b)


def test_quantize_reads_external_data_in_place_and_writes_the_same_model(zoo_onnx, tmp_path):
    """--objective size on a model with external data reads the weights memory-mapped where they
    are (never into one proto) and writes the very file the self-contained input gives."""
    from gencompress import onnx_io
    from gencompress.verbs.quantize import quantize

    src = zoo_onnx("dcgan")
    external = tmp_path / "in" / "g.onnx"
    onnx_io.save_model(onnx_io.load_model(src), external, external_data=True)
    loaded = []
    real_load = onnx_io.load_model
    try:
        onnx_io.load_model = lambda path: loaded.append(path) or real_load(path)
        quantize(external, tmp_path / "a.onnx", objective="size", check=False)
    finally:
        onnx_io.load_model = real_load
    assert loaded == []  # the header and memory-mapped weights only
    quantize(src, tmp_path / "b.onnx", objective="size", check=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_load_mapped_leaves_the_weights_in_the_file_and_reads_the_same_model(zoo_onnx, tmp_path):
    """A self-contained model read with its large float initializers left in the .onnx itself:
    each an external-data reference to where its bytes lie, together the very model onnx.load
    reads; small, integer and subgraph tensors stay inline."""
    import numpy as np
    from onnx import helper, numpy_helper

    from gencompress import onnx_io

    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "big")
    half = numpy_helper.from_array(rng.standard_normal((40, 32)).astype(np.float16), "half")
    small = numpy_helper.from_array(np.ones(8, np.float32), "small")
    shape = numpy_helper.from_array(np.arange(300, dtype=np.int64), "ints")  # 2400 bytes, not float
    inner = helper.make_graph([helper.make_node("Identity", ["big"], ["t"])], "then", [], [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [64, 32])],
                              [numpy_helper.from_array(rng.standard_normal(1000).astype(np.float32), "sub")])
    nodes = [helper.make_node("MatMul", ["x", "big"], ["y"]), helper.make_node("If", ["c"], ["z"], then_branch=inner, else_branch=inner)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64]), helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32]), helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [64, 32])],
                              [big, half, small, shape])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    dcgan = tmp_path / "dcgan.onnx"
    onnx.save(onnx.load(str(zoo_onnx("dcgan"))), dcgan)  # self-contained (the zoo's copy may keep a side file)
    for source in (path, dcgan):
        header = onnx_io.load_mapped(source)
        mapped = {t.name for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        entries = onnx_io.external_data_entries(header, source)
        assert mapped and {file for _, file, _, _ in entries} == {source}
        if source == path:
            assert mapped == {"big", "half"}
        onnx.load_external_data_for_model(header, str(source.parent))
        whole = onnx.load(str(source))
        for tensor in [*header.graph.initializer, *whole.graph.initializer]:
            tensor.ClearField("data_location")  # DEFAULT, set or not
        assert header.SerializeToString(deterministic=True) == whole.SerializeToString(deterministic=True)


def test_load_mapped_reads_whole_what_side_file_rules_refuse(tmp_path, zoo_onnx):
    """A file whose name or place the external-data rules refuse (a colon, a symlink into another
    folder) is read whole, not refused."""
    from gencompress import onnx_io

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    odd = tmp_path / "a" / "x:y.onnx"
    onnx.save(onnx.load(str(zoo_onnx("dcgan"))), odd)
    (tmp_path / "b" / "link.onnx").symlink_to(odd)
    for path in (odd, tmp_path / "b" / "link.onnx"):
        model = onnx_io.load_mapped(path)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert model.graph.initializer[0].raw_data


def test_load_mapped_refuses_what_load_header_refuses(tmp_path, zoo_onnx):
    """A file the reader cannot walk (truncated, garbage) gets load_header's one-line error."""
    from gencompress import onnx_io
    from gencompress.errors import GencompressError

    data = Path(zoo_onnx("dcgan")).read_bytes()
    for name, content in (("cut.onnx", data[: len(data) // 2]), ("junk.onnx", b"\x3a\xff\xff\xff\xff\x0f" + data[:100]), ("text.onnx", b"hello")):
        (tmp_path / name).write_bytes(content)
        try:
            onnx_io.load_header(tmp_path / name)
            expected = None
        except GencompressError as e:
            expected = str(e)
        try:
            got = onnx_io.load_mapped(tmp_path / name)
        except GencompressError as e:
            assert str(e) == expected and "\n" not in str(e)
        else:
            assert expected is None and got.graph.node


def test_prune_reads_a_self_contained_model_in_place(zoo_onnx, tmp_path, monkeypatch):
    """prune never reads the whole input into one proto (its weights are memory-mapped from the
    .onnx) and writes the same model as from the same weights in a side file."""
    from gencompress import onnx_io
    from gencompress.verbs.prune import prune

    src = tmp_path / "dcgan.onnx"
    onnx.save(onnx.load(str(zoo_onnx("dcgan"))), src)  # self-contained (the zoo's copy may keep a side file)
    external = tmp_path / "in" / "g.onnx"
    onnx_io.save_model(onnx_io.load_model(src), external, external_data=True)
    loaded = []
    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda path, *a, **k: loaded.append(path) or real_load(path, *a, **k))
    a = prune(src, tmp_path / "a.onnx", sparsity=0.5)
    assert loaded == []
    monkeypatch.undo()
    b = prune(external, tmp_path / "b.onnx", sparsity=0.5)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert a["totals"]["bytes_before"] == src.stat().st_size  # the weights counted once, not as a side file too
    assert a["totals"]["deflate_before"] < src.stat().st_size
