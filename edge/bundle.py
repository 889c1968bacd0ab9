"""`ship`: build a bundle in a staging folder beside OUT_DIR, then move it into place.

    OUT_DIR/model.onnx, manifest.json, test_vectors.bin     always
    OUT_DIR/sample.py                           python target
    OUT_DIR/model.ort, required_operators.config, mobile_usability.txt     ort target
    OUT_DIR/web/                                web target: index.html, coi-sw.js, model.onnx, latents.bin,
                                                test_vectors.bin, onnxruntime-web (the chosen backends' builds)

Test vectors: a few seeded inputs and onnxruntime CPU's outputs for them on this machine (its ISA
named), so ``sample.py --verify`` and the page can check the device computes what the host did.

Failures:
- anything wrong with the model or OUT_DIR (not ONNX, onnxruntime cannot load it, the ORT converter
  rejects it, OUT_DIR holds the model): a GencompressError, and nothing is written;
- the web runtime cannot be fetched (no npm, registry unreachable): the other targets are still
  moved into OUT_DIR, manifest.json says ``"web": {"built": false, "error": ...}``, no web/ folder is
  left, and ``PartialShip`` (a GencompressError: one line, exit 2) is raised after the move.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError
from gencompress.onnx_io import file_sha256
from gencompress.runtime_check.saturation import portability

TARGETS = ("python", "ort", "web")
LATENTS = "latents.bin"
LATENT_SAMPLES = 16  # the page's default batch, drawn with seed 0 like `gencompress check`
LATENT_SEED = 0
TEST_VECTORS = "test_vectors.bin"
TEST_VECTOR_SAMPLES = 4
TEST_VECTOR_SEED = 1  # not the latents' seed: the check does not rerun what the page shows
# PSNR a device must reach against the host's outputs: int8 graphs are made to compute alike on every
# kernel path (DESIGN: portable by default), so only float rounding order differs.
VERIFY_BOUND_DB = 40.0


class PartialShip(GencompressError):
    """Some targets were built and moved into OUT_DIR; ``result`` is the manifest written (failures under targets)."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def parse_targets(text) -> tuple[str, ...]:
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in TARGETS]
    if unknown or not items:
        raise GencompressError(f"--target {','.join(items) or text!r}: choose from {','.join(TARGETS)} (comma-separated)")
    return tuple(t for t in TARGETS if t in items)


def resolve_model(model) -> Path:
    """MODEL is an .onnx file or a compress OUT_DIR (its model.onnx)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise GencompressError(f"{path}: a folder without model.onnx; give a compressed .onnx or a compress OUT_DIR")
        return path / "model.onnx"
    if not path.exists():
        raise GencompressError(f"{path}: no such file")
    return path


def check_out_dir(out: Path, model: Path) -> None:
    """OUT_DIR is replaced as a whole: it must not hold the model, nor be a file, nor another folder's content."""
    from gencompress.edge.manifest import FORMAT, MANIFEST

    here, model_dir = out.resolve(), model.resolve().parent
    if here == model_dir or here in model_dir.parents:
        raise GencompressError(f"{out}: holds the model {model}; OUT_DIR is replaced as a whole, choose a new folder (e.g. {model_dir / 'ship'})")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads((out / MANIFEST).read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise GencompressError(f"{out}: is not empty and not a gencompress bundle; choose an empty or new folder")


def ship(model, out_dir, *, targets=TARGETS, web_version: str | None = None, web_backends=("wasm",), source: str | None = None,
         log=None) -> dict:
    """Bundle ``model`` for the given targets into ``out_dir``; returns the manifest (as written).

    ``web_backends``: the onnxruntime-web builds the page carries, ``wasm`` and/or ``webgpu``; the first
    is the page's default (``?backend=`` chooses another); WebGPU falls back to wasm without an adapter.

    ``source``: the model path to record in the manifest (default: ``model``'s absolute path;
    compress passes its final OUT_DIR/model.onnx, not the staging copy it ships from).
    """
    from gencompress.arguments import out_dir_path
    from gencompress.inputs import output_range_of_model, sample_inputs, specs_of_model
    from gencompress.onnx_io import load_model, refuse_nonfinite_weights, save_model
    from gencompress.batches import fixed_batch
    from gencompress.runtime_check.sessions import make_session
    from gencompress.edge import manifest as M
    from gencompress.edge import ort_format
    from gencompress.edge import web as W

    log = log or (lambda msg: None)
    targets = parse_targets(targets)
    web_backends = W.parse_backends(web_backends)
    web_version = W.checked_version(web_version or W.ORT_WEB_VERSION)
    model_path = resolve_model(model)
    out = out_dir_path(out_dir)  # a path, new or a folder (gencompress/arguments.py)
    check_out_dir(out, model_path)
    proto = load_model(model_path)
    refuse_nonfinite_weights(proto, model_path)  # a bundle of NaN weights would ship NaN images
    specs = specs_of_model(proto)
    if not specs:
        raise GencompressError(f"{model_path}: the graph has no inputs to draw latents for; ship takes a generator")
    batch = fixed_batch(proto)
    manifest = {
        "format": M.FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": "model.onnx",
        "source": {"model": source or str(model_path.resolve()), "sha256": file_sha256(model_path), "bytes": model_path.stat().st_size,
                   "exported_from": {p.key: p.value for p in proto.metadata_props}.get("gencompress.source")},
        "opsets": M.opsets(proto),
        "batch": batch,  # None: any batch size (shape "N")
        "inputs": M.input_entries(proto, specs, batch),
        "outputs": M.output_entries(proto, output_range_of_model(proto)),
        "sampling": "numpy.random.default_rng(seed); inputs drawn in this order as one batch of n (= gencompress.inputs.sample_inputs)",
        "test_vectors": None,
        "targets": {},
        "compress_report": M.report_figures(model_path.parent / "report.json", model_path),
        "portability": portability(proto),  # the ISA here, and whether x86 without VNNI computes the same
        "tools": None,
        "files": None,
    }
    session = make_session(proto, threads=1, label=str(model_path))  # onnxruntime must load it before any target is built

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; OUT_DIR should look like any other folder
    except OSError as e:
        raise GencompressError(f"{out.parent}: cannot create the output folder ({e.strerror})") from None
    failed: dict[str, str] = {}
    try:
        save_model(proto, staging / "model.onnx")
        feeds = sample_inputs(specs, batch or LATENT_SAMPLES, LATENT_SEED)
        manifest["test_vectors"] = _write_test_vectors(staging / TEST_VECTORS, session, sample_inputs(specs, batch or TEST_VECTOR_SAMPLES, TEST_VECTOR_SEED),
                                                       manifest["outputs"])
        if "python" in targets:
            _copy_template("sample.py", staging / "sample.py")
            manifest["targets"]["python"] = {"built": True, "files": ["sample.py"], "needs": ["onnxruntime", "numpy"],
                                             "run": "python sample.py --n 16 --seed 0 --out samples.png"}
        if "ort" in targets:
            log("converting to ORT format with onnxruntime.tools.convert_onnx_models_to_ort ...")
            entry = ort_format.convert(staging / "model.onnx", staging)
            entry["check"] = ort_format.verify(staging / ort_format.ORT_MODEL, staging / "model.onnx", feeds)
            entry["operator_count"] = sum(len(v) for v in entry["operators"].values())
            log("checking mobile usability with onnxruntime.tools.check_onnx_model_mobile_usability ...")
            entry["mobile_usability"] = ort_format.mobile_usability(staging / "model.onnx", staging / ort_format.MOBILE_LOG)
            entry["files"].append(ort_format.MOBILE_LOG)
            manifest["targets"]["ort"] = {"built": True, **entry}
        if "web" in targets:
            try:
                manifest["targets"]["web"] = _build_web(staging / "web", staging, manifest, feeds, web_version, web_backends, log)
            except W.WebRuntimeUnavailable as e:
                shutil.rmtree(staging / "web", ignore_errors=True)
                failed["web"] = str(e)
                manifest["targets"]["web"] = {"built": False, "error": str(e)}
        manifest["tools"] = M.tool_versions(web_version if "web" in targets else None)
        manifest["files"] = M.file_entries(staging)
        M.write(staging, manifest)
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if failed:
        built = [t for t in targets if t not in failed]
        where = f"{', '.join(built)} built in {out}" if built else f"only model.onnx and manifest.json written to {out}"
        raise PartialShip(f"{'; '.join(failed.values())} ({where}; manifest.json lists the failure)", manifest)
    return manifest


def _copy_template(name: str, dest: Path) -> None:
    dest.write_bytes(resources.files("gencompress.edge.templates").joinpath(name).read_bytes())


def _build_web(web: Path, staging: Path, manifest: dict, feeds: dict, version: str, backends: tuple, log) -> dict:
    from gencompress.edge import web as W

    web.mkdir()
    runtime = W.vendor(web, backends, version, log)
    form = _write_web_model(web / "model.onnx", staging, manifest["test_vectors"], manifest["outputs"])
    shutil.copyfile(staging / TEST_VECTORS, web / TEST_VECTORS)  # the page is served from web/ alone
    _copy_template("coi-sw.js", web / "coi-sw.js")
    latents = _write_latents(web / LATENTS, feeds)
    builds = {b: dict(zip(("script", "mjs", "wasm"), map(W.shipped_name, W.BACKEND_FILES[b]))) for b in backends}
    config = {"title": manifest["source"]["exported_from"] or Path(manifest["source"]["model"]).name, "model": "model.onnx",
              "batch": manifest["batch"], "inputs": manifest["inputs"], "outputs": manifest["outputs"],
              "latents": latents, "onnxruntime_web": version, "backends": list(backends), "runtime": builds,
              "test_vectors": manifest["test_vectors"]}
    page = resources.files("gencompress.edge.templates").joinpath("index.html").read_text()
    inline = json.dumps(config).replace("</", "<\\/")  # safe inside <script>
    title = (config["title"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    (web / "index.html").write_text(page.replace("__CONFIG__", inline).replace("__TITLE__", title))
    return {"built": True, "files": ["web/index.html", "web/coi-sw.js", "web/model.onnx", f"web/{LATENTS}", f"web/{TEST_VECTORS}",
                                     *(f"web/{n}" for n in runtime)],
            "onnxruntime_web": version, "backends": list(backends), "runtime": builds, "model_form": form,
            "threads": "min(4, navigator.hardwareConcurrency) when cross-origin isolated (coi-sw.js or COOP/COEP headers), else 1",
            "latents": latents,
            "run": "python -m http.server -d web 8000, then open http://127.0.0.1:8000/ (any static server on localhost or https; works offline)"}


def _write_web_model(dest: Path, staging: Path, test_vectors: dict, outputs: list[dict]) -> dict:
    """web/model.onnx: model.onnx in the form onnxruntime-web runs fastest (``edge.web_form``), if it
    computes model.onnx's outputs on the test vectors (onnxruntime CPU, >= the verify bound); else model.onnx."""
    from gencompress.edge.web_form import web_form
    from gencompress.onnx_io import load_model, save_model

    form, rewritten = web_form(load_model(staging / "model.onnx"))
    if not rewritten:
        shutil.copyfile(staging / "model.onnx", dest)
        return {"same_as": "model.onnx"}
    save_model(form, dest)
    db = _psnr_on_test_vectors(dest, staging / TEST_VECTORS, test_vectors, outputs)
    if not db >= test_vectors["bound_db"]:  # not expected (the same dequantized values); never ship a worse page
        shutil.copyfile(staging / "model.onnx", dest)
        return {"same_as": "model.onnx", "web_form_rejected": f"{db:.1f} dB < {test_vectors['bound_db']} dB on the test vectors"}
    return {"rewritten": "weight DequantizeLinear of Gemm/MatMul as Cast -> Mul (float product in wasm; edge/web_form.py)",
            "nodes": rewritten, "psnr_db_vs_model_onnx": None if db == float("inf") else round(db, 2)}


def _psnr_on_test_vectors(model: Path, blob_path: Path, test_vectors: dict, outputs: list[dict]) -> float:
    """The worst output's PSNR of ``model`` (onnxruntime CPU) against the test vectors' outputs."""
    from gencompress.runtime_check.fidelity import mse, psnr
    from gencompress.runtime_check.sessions import make_session

    blob = blob_path.read_bytes()
    arrays = {(e["role"], e["name"]): np.frombuffer(blob, np.dtype(e["dtype"]).newbyteorder("<"), int(np.prod(e["shape"])), e["offset"]).reshape(e["shape"])
              for e in test_vectors["tensors"]}
    session = make_session(model, threads=1, label="web/model.onnx")
    feeds = {name: arr for (role, name), arr in arrays.items() if role == "input"}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    peaks = {e["name"]: e["peak"] for e in test_vectors["tensors"] if e["role"] == "output"}
    return min(psnr(mse(arrays[("output", o["name"])].astype(np.float64), np.asarray(got[o["name"]], np.float64)), peaks[o["name"]])
               for o in outputs)


def _pack(blob: bytearray, arrays: dict) -> list[dict]:
    """Append arrays to ``blob`` as raw little-endian bytes, each 8-byte aligned; their entries (name, dtype, shape, offset, bytes)."""
    entries = []
    for name, arr in arrays.items():
        blob += b"\0" * (-len(blob) % 8)
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        entries.append({"name": name, "dtype": str(arr.dtype) if arr.dtype != np.bool_ else "bool", "shape": list(arr.shape),
                        "offset": len(blob), "bytes": data.nbytes})
        blob += data.tobytes()
    return entries


def _write_latents(path: Path, feeds: dict) -> dict:
    """Each input's draws, described for the page."""
    blob = bytearray()
    entries = _pack(blob, feeds)
    path.write_bytes(bytes(blob))
    return {"file": LATENTS, "seed": LATENT_SEED, "n": len(next(iter(feeds.values()))), "inputs": entries}


def _write_test_vectors(path: Path, session, feeds: dict, outputs: list[dict]) -> dict:
    """``feeds`` and onnxruntime CPU's outputs for them, in one file; the PSNR peak of each output recorded."""
    import onnxruntime

    from gencompress.isa import host_isa
    from gencompress.runtime_check.sessions import cast_feeds, run

    got = dict(zip([o.name for o in session.get_outputs()], run(session, cast_feeds(session, feeds), "model.onnx")))
    blob = bytearray()
    entries = [{"role": "input", **e} for e in _pack(blob, feeds)]
    for o, e in zip(outputs, _pack(blob, {o["name"]: np.asarray(got[o["name"]]) for o in outputs})):
        values = np.asarray(got[o["name"]], np.float64)
        finite = values[np.isfinite(values)]
        peak = o["nominal_range"] or (float(np.ptp(finite)) if finite.size else 0.0) or 1.0
        entries.append({"role": "output", **e, "peak": peak})
    path.write_bytes(bytes(blob))
    return {"file": TEST_VECTORS, "n": len(next(iter(feeds.values()))), "seed": TEST_VECTOR_SEED, "isa": host_isa(),
            "onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider", "bound_db": VERIFY_BOUND_DB,
            "metric": "PSNR (dB) of each output against these, with the peak given; the worst output counts", "tensors": entries}


def _move_into(staging: Path, out: Path) -> None:
    """Replace OUT_DIR by the staging folder: rename the old one aside, move the new one in, drop the old."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old / "bundle")
    try:
        staging.replace(out)
    except OSError as e:
        if old is not None:
            (old / "bundle").replace(out)
        raise GencompressError(f"{out}: cannot move the bundle into place ({e.strerror})") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
