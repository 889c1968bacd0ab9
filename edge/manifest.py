"""manifest.json: what a device needs to run and check the bundle, without gencompress.

Inputs (name, shape with the batch axis as "N", dtype, prior), outputs (name, shape, dtype, kind,
nominal range), opsets, every file's sha256 and size, the source model, per-target results,
the fidelity and latency a compress report measured, and the tool versions.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

from gencompress.errors import GencompressError
from gencompress.onnx_io import file_sha256

FORMAT = "gencompress.ship/1"
MANIFEST = "manifest.json"
# InputSpec fields whose meaning sample.py and the web page reproduce. A field added to InputSpec
# must be taught to prior_of, sample.py and index.html before a model using it ships (a test checks).
KNOWN_SPEC_FIELDS = ("name", "shape", "dtype", "low", "high", "prior", "recorded")
# The exporter records the nominal peak-to-peak range only; these are the ranges it stands for.
DISPLAY_RANGES = {2.0: [-1.0, 1.0], 1.0: [0.0, 1.0]}
_ELEM = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool", 2: "uint8", 3: "int8"}


def prior_of(spec) -> dict:
    """The prior ``InputSpec.sample`` draws from, as data (see sample.py ``draw`` and index.html ``drawJs``)."""
    from gencompress.inputs import prior_parts  # the one parser of a spec's prior

    extra = {f.name for f in dataclasses.fields(spec)} - set(KNOWN_SPEC_FIELDS)
    defaults = {f.name: f.default for f in dataclasses.fields(spec)}
    changed = sorted(k for k in extra if getattr(spec, k) != defaults[k])
    if changed:
        raise GencompressError(f"input {spec.name!r}: its prior uses {', '.join(changed)}, which the bundle's samplers do not reproduce yet")
    kind, args = prior_parts(spec)
    if kind == "normal":
        return {"kind": "normal", "mean": 0.0, "std": 1.0}
    if kind == "uniform":
        return {"kind": "uniform", "low": float(args[0]), "high": float(args[1])}
    if kind == "onehot":
        return {"kind": "onehot", "classes": int(args[0])}
    if kind == "bool":
        return {"kind": "integers", "low": 0, "high": 1}
    if kind == "range":
        return {"kind": "integers", "low": int(spec.low), "high": int(spec.high)}
    if kind == "images":  # the checks' natural-image crops are not bundled: the samplers draw the same range
        return {"kind": "uniform", "low": float(args[0]), "high": float(args[1]),
                "note": "gencompress draws natural-image crops for this input; the bundle draws uniform noise in their range"}
    if kind == "data":
        raise GencompressError(f"input {spec.name!r}: drawn from data ({args[0]}); a bundle carries priors only, "
                               f"so ship a model whose inputs are drawn from normal, uniform, onehot or integer priors")
    raise GencompressError(f"input {spec.name!r}: prior kind {kind!r} is not reproduced by the bundle's samplers yet")


def _dims(vi, batch_axis_name: str = "N") -> list:
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(batch_axis_name if i == 0 else (d.dim_param or None))
    return dims


def input_entries(proto, specs, batch: int | None) -> list[dict]:
    graph_dtypes = {vi.name: _ELEM.get(vi.type.tensor_type.elem_type) for vi in proto.graph.input}
    for s in specs:
        if s.name not in graph_dtypes:
            raise GencompressError(f"input {s.name!r}: recorded in the model's metadata but not a graph input")
        if graph_dtypes[s.name] != s.dtype:  # e.g. fp16 with keep_io_types=False: the samplers would feed the wrong type
            raise GencompressError(f"input {s.name!r}: the graph takes {graph_dtypes[s.name]} but its prior draws {s.dtype}; "
                                   f"ship a model whose inputs keep the prior's dtype (fp16: keep_io_types)")
    return [{"name": s.name, "shape": [batch or "N", *map(int, s.shape[1:])], "dtype": s.dtype, "prior": prior_of(s)} for s in specs]


def output_entries(proto, peak: float | None) -> list[dict]:
    from gencompress.runtime_check.fidelity import output_kind

    entries = []
    for vi in proto.graph.output:
        shape = _dims(vi)
        entries.append({
            "name": vi.name,
            "shape": shape,
            "dtype": _ELEM.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type)),
            "kind": output_kind(shape),
            "nominal_range": peak,  # peak-to-peak, as the exporter recorded it (None: unknown)
            "display_range": DISPLAY_RANGES.get(peak) if peak is not None else None,
        })
    return entries


def opsets(proto) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import}


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file under ``folder`` but the manifest, by relative POSIX path."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out[path.relative_to(folder).as_posix()] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    return out


def report_figures(report_path: Path, model_path: Path) -> dict | None:
    """Fidelity and latency from a compress report.json beside the model, if it describes this model."""
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text())
        candidate = report["sizes"]["candidate"]["file_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"report": report_path.name, "note": "report.json beside the model is unreadable; figures left out"}
    if candidate != model_path.stat().st_size:  # a report of another model that happens to sit beside it
        return {"report": report_path.name, "note": f"report.json describes a {candidate}-byte candidate, not this model; figures left out"}
    fid = report.get("fidelity") or {}
    keys = ("peak", "psnr_db", "psnr_worst_sample_db", "ssim", "max_abs_error", "cosine_similarity", "frechet_distance_relative")
    figures = {
        "report": report_path.name,
        "fidelity": {
            "against": "the float reference (reference.onnx of the compress run)",
            "samples": fid.get("samples"),
            "seed": fid.get("seed"),
            "outputs": {o["name"]: {k: o.get(k) for k in keys} for o in fid.get("outputs", [])},
        },
        "latency": None,
        "sizes": report.get("sizes"),
    }
    lat = report.get("latency") or {}
    if lat.get("results"):
        figures["latency"] = [{"provider": r.get("provider"), "threads": r.get("threads"), "batch": r.get("batch"),
                               "model_p50_ms": (r.get("model") or {}).get("p50_ms"),
                               "reference_p50_ms": (r.get("reference") or {}).get("p50_ms"), "speedup": r.get("speedup")}
                              for r in lat["results"]]
    return figures


def tool_versions(web_version: str | None) -> dict:
    import numpy
    import onnx
    import onnxruntime

    import gencompress

    return {"gencompress": gencompress.__version__, "onnxruntime": onnxruntime.__version__, "onnxruntime-web": web_version,
            "onnx": onnx.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def write(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
