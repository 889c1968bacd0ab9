"""report.json + self-contained report.html; the page is opened in real headless Chromium.

The Chromium test installs Debian's ``chromium`` with apt-get when /usr/bin/chromium is missing
and we are root; otherwise it is skipped with the reason.
"""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencompress.errors import GencompressError
from gencompress.inputs import InputSpec, specs_to_json
from gencompress.verbs import check as api
from gencompress.runtime_check.report_html import jsonable, pareto_front, png_bytes, render_html, report_json, write_report

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def tiny_generator(path, *, noise=0.0, prune=0.0, qdq=False, kind="image"):
    """z [N, 8] → Gemm → Tanh image [N, 1, 16, 16] (or Sigmoid sequence [N, 8, 8])."""
    shape = [1, 16, 16] if kind == "image" else [8, 8]
    d = int(np.prod(shape))
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, d)) * 0.6).astype(np.float32)
    b = (rng.standard_normal(d) * 0.2).astype(np.float32)
    if noise:
        w = w + (np.random.default_rng(1).standard_normal(w.shape) * noise).astype(np.float32)
    if prune:
        w[np.abs(w) < np.quantile(np.abs(w), prune)] = 0
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array([-1, *shape], np.int64), "shape")]
    nodes = []
    if qdq:
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], axis=1))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    out = "image" if kind == "image" else "sequence"
    nodes += [
        helper.make_node("Gemm", ["z", "w", "b"], ["h"], name="dense"),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("Tanh" if kind == "image" else "Sigmoid", ["r"], [out]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *shape])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.add(key="gencompress.inputs", value=specs_to_json([InputSpec("z", (1, 8))]))
    m.metadata_props.add(key="gencompress.output_range", value="2.0" if kind == "image" else "1.0")
    onnx.save(m, str(path))
    return path


def decode_png(data: bytes) -> np.ndarray:
    """A minimal independent PNG reader (8-bit grey/RGB, filter 0 only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and b"IEND" in chunks
    ch = {0: 1, 2: 3}[color]
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + w * ch)
    assert (raw[:, 0] == 0).all()
    px = raw[:, 1:].reshape(h, w, ch)
    return px[..., 0] if ch == 1 else px


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(png_bytes(grey)), grey)
    assert np.array_equal(decode_png(png_bytes(rgb)), rgb)
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2, 2), np.uint8))


def test_pareto_front():
    pts = [(100, 30.0), (50, 25.0), (60, 24.0), (50, 20.0), (200, 30.0), (10, float("nan")), (80, float("inf"))]
    assert pareto_front(pts) == [False, True, False, False, False, False, True]
    assert pareto_front([(1, 1)]) == [True]


def test_json_form_has_no_infinity_and_no_arrays():
    report = {"fidelity": {"outputs": [{"psnr_db": float("inf"), "mse": np.float32(0.0)}], "preview": {"reference": np.zeros((2, 1, 4, 4)), "kind": "image"}}}
    data = jsonable(report)
    assert data["fidelity"]["outputs"][0] == {"psnr_db": "inf", "mse": 0.0}
    assert data["fidelity"]["preview"] == {"reference_shape": [2, 1, 4, 4], "kind": "image"}
    json.dumps(data, allow_nan=False)


SWEEP = [
    {"label": "float", "bytes": 9558, "psnr_db": float("inf"), "ssim": 1.0},
    {"label": "int8", "bytes": 4000, "psnr_db": 41.5, "selected": True, "ssim": 0.991, "recipe": [{"pass": "insert_qdq"}]},
    {"label": "prune 50% + int8", "bytes": 3000, "psnr_db": 33.0},
    {"label": "prune 50%", "bytes": 9558, "psnr_db": 30.2},
    {"label": "prune 80% + int8", "bytes": 2500, "psnr_db": 35.0},
]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    ref = tiny_generator(d / "ref.onnx")
    cand = tiny_generator(d / "cand.onnx", noise=0.03, prune=0.5, qdq=True)
    fid = api.check(ref, cand, samples=24, preview=6)
    lat = api.bench(cand, reference=ref, batches=(1, 4), threads=(1,), runs=3, warmup=1, memory=False)
    lat["memory"] = {"method": "test figures", "results": [{"provider": "CPUExecutionProvider", "batch": 1, "threads": 1, "model_peak_bytes": 1234, "reference_peak_bytes": 2345}]}
    report = api.build_report(
        ref,
        cand,
        fidelity=fid,
        latency=lat,
        recipe=[{"pass": "magnitude_prune", "options": {"sparsity": 0.5}}, {"pass": "insert_qdq", "options": {}}],
        passes=[
            {
                "pass": "magnitude_prune",
                "options": {"sparsity": 0.5},
                "modified": True,
                "summary": {"sparsity": 0.5, "params_removed": 1024},
                "layers": [{"initializer": "w", "shape": [8, 256], "zeros": 1024, "sparsity": 0.5}],
            }
        ],
        sweep=SWEEP + [api.sweep_entry("this run", cand, fid)],
        title="tiny <generator> report",
    )
    paths = write_report(d / "out", report)
    return {"dir": d, "paths": paths, "report": report, "data": json.loads(paths["json"].read_text())}


def _get(data, key):
    cur = data
    for part in key.split("."):
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur


def test_report_json_contents(report_dir):
    data, report = report_dir["data"], report_dir["report"]
    assert data["schema"] == "gencompress.report/1"
    o = data["fidelity"]["outputs"][0]
    assert o["psnr_db"] == pytest.approx(report["fidelity"]["outputs"][0]["psnr_db"])
    assert data["fidelity"]["preview"]["reference_shape"] == [6, 1, 16, 16]
    assert [e["pareto"] for e in data["sweep"]][:5] == [True, True, False, False, True]
    assert data["sweep"][5]["bytes"] == data["sizes"]["candidate"]["bytes"]
    assert data["sweep"][5]["psnr_db"] == o["psnr_db"]
    assert data["sweep"][0]["psnr_db"] == "inf"
    layer = data["layers"][0]
    assert layer["precision"] == "int8" and layer["granularity"] == "per-channel (axis 1)"
    assert 0.45 < layer["sparsity"] < 0.55
    assert data["sizes"]["ratio"] == pytest.approx(data["sizes"]["candidate"]["bytes"] / data["sizes"]["reference"]["bytes"])
    assert not list(report_dir["paths"]["json"].parent.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_report_html_is_self_contained(report_dir):
    page = report_dir["paths"]["html"].read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", page, re.I)
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) == 3 * 6 + 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "tiny &lt;generator&gt; report" in page  # escaped
    assert '<svg id="sweep-chart"' in page
    assert page.count('data-pareto="true"') == sum(e["pareto"] for e in report_dir["data"]["sweep"])


def test_write_report_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(GencompressError, match="not a folder"):
        write_report(f, {"title": "x"})


def test_minimal_report_renders():
    page = render_html({"title": "empty"})
    assert "<h1>empty</h1>" in page
    assert report_json({"sweep": [{"label": "a", "bytes": 1, "psnr_db": None}]})["sweep"][0]["pareto"] is False


# ---- Chromium ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium():
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            pytest.skip("Chromium is not installed (/usr/bin/chromium) and installing it needs root")
        if not shutil.which("apt-get"):
            pytest.skip("Chromium is not installed and there is no apt-get to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log = ""
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            if Path(CHROMIUM).exists():
                break
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
            log = (r.stderr or r.stdout)[-300:]
        if not Path(CHROMIUM).exists():
            pytest.skip(f"could not install Chromium with apt-get: {' '.join(log.split())}")
    return CHROMIUM


PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight};
  });
  var cells = Array.prototype.map.call(document.querySelectorAll('[data-key]'), function (e) {
    return {key: e.getAttribute('data-key'), value: e.getAttribute('data-value'),
            scale: e.getAttribute('data-scale'), text: e.textContent};
  });
  var front = document.querySelectorAll('#sweep-chart circle[data-pareto="true"]').length;
  var out = document.createElement('pre');
  out.id = 'gc-probe';
  out.textContent = JSON.stringify({imgs: imgs, cells: cells, front: front,
                                    tables: document.querySelectorAll('table').length});
  document.body.appendChild(out);
});
</script>"""


def _shown_number(text: str, scale: float):
    t = text.strip().replace("−", "-")
    if t in ("∞", "-∞", "nan"):
        return {"∞": "inf", "-∞": "-inf"}.get(t, t)
    if t in ("–", ""):
        return None
    t = re.sub(r"(%|×| MiB)$", "", t)
    return float(t) / scale


def test_report_renders_in_chromium(chromium, report_dir, tmp_path):
    page = report_dir["paths"]["html"].read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    cmd = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="gc-probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no probe output from Chromium (exit {r.returncode}): {r.stderr[-500:]}"
    result = json.loads(htmllib.unescape(m.group(1)))

    assert len(result["imgs"]) == 3 * 6 + 2
    for img in result["imgs"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    samples = [i for i in result["imgs"] if i["alt"].startswith(("reference sample", "compressed sample"))]
    assert samples and all(i["w"] == 64 and i["h"] == 64 for i in samples)  # 16x16 shown 4x
    assert result["front"] == sum(e["pareto"] for e in report_dir["data"]["sweep"])

    data = report_dir["data"]
    keys = {c["key"] for c in result["cells"]}
    for needed in ("fidelity.outputs.0.psnr_db", "fidelity.outputs.0.mse", "fidelity.outputs.0.ssim", "fidelity.outputs.0.frechet_distance",
                   "fidelity.outputs.0.max_abs_error", "fidelity.outputs.0.cosine_similarity", "layers.0.sparsity", "sizes.candidate.bytes",
                   "sizes.candidate.deflate_bytes", "latency.results.0.model.p50_ms", "latency.results.0.ratio", "sweep.1.psnr_db",
                   "latency.memory.results.0.model_peak_bytes", "passes.0.summary.params_removed", "passes.0.layers.0.zeros",
                   "sweep.1.ssim", "sweep.5.frechet_distance_relative"):
        assert needed in keys, needed
    for cell in result["cells"]:
        expected = _get(data, cell["key"])
        assert json.loads(cell["value"]) == expected, cell
        shown = _shown_number(cell["text"], float(cell["scale"] or 1))
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            # agree to the precision shown: half a unit of the last displayed digit
            mantissa = re.sub(r"(e.*|%|×| MiB)$", "", cell["text"].strip()).lstrip("-0.").replace(".", "")
            assert shown == pytest.approx(expected, rel=5 * 10.0 ** -max(len(mantissa), 1), abs=1e-12), cell
        else:
            assert shown == expected, cell
