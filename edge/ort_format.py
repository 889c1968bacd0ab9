"""The ort target: onnxruntime's own tools, called through their Python entry points.

- ``onnxruntime.tools.convert_onnx_models_to_ort`` writes ``model.ort`` (the ORT format a minimal
  onnxruntime build reads) and the list of operators such a build needs. Only the ``Fixed``
  optimization style is built: it needs no runtime optimizations replayed on the device (the
  ``Runtime`` style also fails on QDQ int8 graphs in onnxruntime 1.32).
- ``onnxruntime.tools.mobile_helpers.usability_checker`` (what ``check_onnx_model_mobile_usability``
  runs) says how much of the graph NNAPI and CoreML could take.

A ``.ort`` that onnxruntime cannot load, or that computes other outputs than the ``.onnx``, is an error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError

ORT_MODEL = "model.ort"
OPERATORS_CONFIG = "required_operators.config"
MOBILE_LOG = "mobile_usability.txt"
# The .ort is the same graph after onnxruntime's offline optimizations; fused kernels may round differently.
# Allowed |difference|: this fraction of the output's largest magnitude (at least of 1).
MAX_REL_DIFF = 1e-4


def convert(model_path: Path, out_dir: Path) -> dict:
    """Write ``out_dir/model.ort`` and ``out_dir/required_operators.config`` from ``model_path``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    work = out_dir / ".ort-convert"
    work.mkdir()
    chatter = io.StringIO()
    quiet = logging.getLogger("ort_format_model.utils")  # logs "Created config" at INFO on its own handler
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            convert_onnx_models_to_ort(model_path, output_dir=work, optimization_styles=[OptimizationStyle.Fixed])
        (work / f"{model_path.stem}.ort").replace(out_dir / ORT_MODEL)
        (work / f"{model_path.stem}.required_operators.config").replace(out_dir / OPERATORS_CONFIG)
    except Exception as e:
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise GencompressError(f"ort target: onnxruntime's ORT format converter rejected the model ({reason})") from None
    finally:
        quiet.setLevel(level)
        shutil.rmtree(work, ignore_errors=True)
    return {"files": [ORT_MODEL, OPERATORS_CONFIG], "optimization_style": "Fixed", "operators": read_operators(out_dir / OPERATORS_CONFIG)}


def read_operators(config: Path) -> dict[str, list[str]]:
    """``{"domain;opset": [ops]}`` from a required_operators.config (lines ``domain;opset;Op1,Op2``)."""
    ops: dict[str, list[str]] = {}
    for line in config.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = line.split(";", 2)
        ops[f"{domain};{opset}"] = sorted(n for n in names.split(",") if n)
    return ops


def verify(ort_path: Path, onnx_path: Path, feeds: dict) -> dict:
    """Load the .ort in onnxruntime and compare its outputs with the .onnx's on ``feeds``."""
    from gencompress.runtime_check.sessions import cast_feeds, make_session, run

    try:
        ort_session = make_session(ort_path.read_bytes(), threads=1, label=f"{ort_path.name} (ORT format)")
    except GencompressError as e:  # e.g. int4 weights: the converter writes them, the ORT format reader refuses them
        raise GencompressError(f"ort target: the .ort onnxruntime's converter wrote does not load back ({e}); "
                               f"leave the ort target out with --target python,web") from None
    onnx_session = make_session(onnx_path, threads=1, label=onnx_path.name)
    names = [o.name for o in onnx_session.get_outputs()]
    got = dict(zip([o.name for o in ort_session.get_outputs()], run(ort_session, cast_feeds(ort_session, feeds), ORT_MODEL)))
    want = dict(zip(names, run(onnx_session, cast_feeds(onnx_session, feeds), onnx_path.name)))
    worst = 0.0
    for name in names:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        if a.shape != b.shape:
            raise GencompressError(f"ort target: {ORT_MODEL} output {name!r} has shape {a.shape}, model.onnx gives {b.shape}")
        if not a.size:
            continue
        diff = float(np.max(np.abs(a - b)))
        allowed = MAX_REL_DIFF * max(1.0, float(np.max(np.abs(b))))
        if not diff <= allowed:  # NaN counts as a difference
            raise GencompressError(f"ort target: {ORT_MODEL} computes other outputs than model.onnx "
                                   f"(output {name!r}: max |difference| {diff:.3g} > {allowed:.3g})")
        worst = max(worst, diff)
    return {"loads": True, "max_abs_diff_vs_onnx": worst, "samples": len(next(iter(feeds.values())))}


def mobile_usability(model_path: Path, log_path: Path) -> dict:
    """onnxruntime's mobile usability check; its full report goes to ``log_path``, a summary is returned."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    records = io.StringIO()
    logger = logging.getLogger("gencompress.edge.mobile_usability")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(records)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    summary: dict = {"tool": "onnxruntime.tools.check_onnx_model_mobile_usability", "report": log_path.name}
    try:
        with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
            # analyze_model's two steps, so the summary describes the same optimized graph as the report
            optimized = Path(tmp) / model_path.name
            uc.optimize_model(model_path, optimized, use_external_initializers=True)
            summary["nnapi_or_coreml_may_help"] = bool(uc.checker(optimized, logger))
            shaped = uc.ModelProtoWithShapeInfo(optimized).model_with_shape_info
            checks = {
                "NNAPI": lambda fixed: uc.check_nnapi_partitions(shaped, fixed),
                "CoreML NeuralNetwork": lambda fixed: uc.check_coreml_partitions(shaped, fixed, "coreml_supported_neuralnetwork_ops.md"),
                "CoreML MLProgram": lambda fixed: uc.check_coreml_partitions(shaped, fixed, "coreml_supported_mlprogram_ops.md"),
            }
            # as is (dynamic input shapes count against the EP), and with the input shapes made fixed
            summary["execution_providers"] = {name: {**_partitions(fn(True)), "if_input_shapes_fixed": fn(False).suitability().name}
                                              for name, fn in checks.items()}
    except Exception as e:  # the checker is advisory: the bundle is still valid without it
        summary["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    finally:
        logger.handlers = []
    log_path.write_text(records.getvalue())
    return summary


def _partitions(info) -> dict:
    return {
        "suitability": info.suitability().name,
        "partitions": info.num_partitions,
        "supported_nodes": info.num_supported_nodes,
        "nodes": info.num_nodes,
        "unsupported_ops": sorted(info.unsupported_ops),
    }
