"""`gencompress export`: a PyTorch generator to one self-contained ONNX file, checked in onnxruntime.

The torch.export-based exporter (dynamo, onnxscript) is the default; the TorchScript exporter
is used with ``legacy=True``, or as a named fallback when dynamo export fails. The batch axis
is dynamic, unless ``batch_size`` fixes it (a model whose graph depends on the batch, e.g.
StyleGAN2's fused modulated conv with groups = batch): then every input's dim 0 is that size,
and checkers read it off the graph and sample batches of exactly that size. Before anything is
written, onnxruntime and torch run the same seeded inputs at batch sizes 1, 7 and 64 (only the
fixed size, with ``batch_size``); the output is written only if they agree within ``tolerance``.
A failed export is one line naming each exporter's reason; the full text goes to
``OUT.export-error.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from gencompress.errors import GencompressError
from gencompress.inputs import (
    METADATA_INPUTS,
    METADATA_OUTPUT_RANGE,
    METADATA_SOURCE,
    InputSpec,
    parse_input_spec,
    sample_inputs,
    specs_to_json,
)
from gencompress.exporter.failure_log import Attempts, reason
from gencompress.onnx_io import refuse_overwrite, save_model

PARITY_BATCHES = (1, 7, 64)


def export(
    model,
    out,
    *,
    checkpoint=None,
    inputs=None,
    opset: int | None = None,
    legacy: bool = False,
    tolerance: float = 1e-4,
    batches=PARITY_BATCHES,
    seed: int = 0,
    batch_size: int | None = None,
    log=None,
) -> dict:
    """Export ``model`` (zoo name, ``file.py:Name``, ``package.module:attr`` or an nn.Module) to ``out``.

    ``inputs``: InputSpecs or ``NAME=SHAPE[:DTYPE[:LOW..HIGH]]`` strings; zoo models know theirs.
    ``batch_size``: keep dim 0 fixed at this size (default: the module's ``gencompress_batch_size``
    attribute, else a dynamic batch).
    Returns a report: exporter used, opset, parity error per batch size, file size.
    """
    if model is None or isinstance(model, (bool, int, float, bytes, list, tuple, dict)):  # before importing torch
        raise GencompressError(f"model: expected a zoo name, file.py:Name, package.module:attr or an nn.Module, got {type(model).__name__}")
    import torch

    from gencompress.exporter.resolve import ResolvedModel, module_inputs, resolve_model

    log = log or (lambda msg: None)
    if not 0 < tolerance < float("inf"):  # NaN or inf would let any parity error pass
        raise GencompressError(f"--tolerance must be a positive finite number, got {tolerance}")
    if opset is not None and not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise GencompressError(f"--opset {opset}: supported opsets are 7..{onnx.defs.onnx_opset_version()}")
    if Path(out).suffix != ".onnx":
        raise GencompressError(f"{out}: output should be an .onnx file")
    if isinstance(model, torch.nn.Module):
        resolved = ResolvedModel(model.eval(), module_inputs(model, type(model).__name__), None, None, type(model).__name__)
    else:
        resolved = resolve_model(str(model), checkpoint)
    refuse_overwrite(out, [checkpoint] if checkpoint else [])

    specs = _input_specs(inputs, resolved)
    module = resolved.module
    batch_size = _fixed_batch_size(batch_size, module)
    if batch_size:
        specs = [dataclasses.replace(s, shape=(batch_size, *s.shape[1:])) for s in specs]
        batches = (batch_size,)
    # A forward pass first: inputs that don't fit the model are the user's error, not the exporter's.
    example, outputs = _first_forward(module, specs, batch_size or 2, seed)
    n_outputs = len(outputs)
    output_names = list(resolved.output_names or (["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]))
    if len(output_names) != n_outputs:
        raise GencompressError(f"{resolved.source}: returns {n_outputs} outputs, expected {len(output_names)}")

    exporter = "legacy" if legacy else "dynamo"
    attempts = Attempts()
    failures = []
    with tempfile.TemporaryDirectory(prefix="gencompress-export-") as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        fallback = None
        if not legacy:
            try:
                with attempts.capture("dynamo exporter"):
                    _export_dynamo(module, example, specs, output_names, tmp_onnx, opset, dynamic=not batch_size)
                got = _opset(onnx.load(str(tmp_onnx), load_external_data=False))
                if opset is not None and got != opset:  # it exports at 18+ and may not convert down
                    fallback = f"the dynamo exporter gave opset {got}, not {opset}"
            except GencompressError:
                raise
            except Exception as e:
                _reraise_interrupt(e)  # torch wraps a Ctrl-C in its own error: stop, do not fall back
                failures.append(f"dynamo: {reason(e)}")
                fallback = f"dynamo export failed ({failures[-1]})"
            if fallback:
                log(f"warning: {fallback}; falling back to the TorchScript exporter (--legacy)")
                exporter = "legacy (fallback)"
        if legacy or fallback:
            try:
                with attempts.capture("TorchScript exporter"):
                    _export_legacy(module, example, specs, output_names, tmp_onnx, opset, dynamic=not batch_size)
            except Exception as e:
                _reraise_interrupt(e)
                failures.append(f"TorchScript: {reason(e)}")
                raise GencompressError(_failure_summary(failures, attempts.write(out), batch_size)) from None
        proto = onnx.load(str(tmp_onnx), load_external_data=True)

    _set_metadata(proto, specs, resolved)
    parity = check_parity(module, proto, specs, batches=batches, seed=seed, consistency=not batch_size)
    worst = max(parity["max_abs_error"].values())
    if not np.isfinite(worst) or worst > tolerance:
        raise GencompressError(
            f"parity check failed: onnxruntime and torch differ by {worst:.3g} (tolerance {tolerance:g}); "
            + ("try --legacy" if exporter == "dynamo" else "the model may use ops that do not export faithfully")
        )
    save_model(proto, out, inputs=[checkpoint] if checkpoint else [])
    return {
        "model": resolved.source,
        "output": str(out),
        "exporter": exporter,
        "opset": _opset(proto),
        "inputs": [{"name": s.name, "shape": [batch_size or "N", *s.shape[1:]], "dtype": s.dtype} for s in specs],
        "batch_size": batch_size,
        "outputs": output_names,
        "parity": parity,
        "tolerance": tolerance,
        "bytes": os.path.getsize(out),
    }


def _fixed_batch_size(batch_size, module) -> int | None:
    batch_size = batch_size if batch_size is not None else getattr(module, "gencompress_batch_size", None)
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise GencompressError(f"--batch-size must be a positive integer, got {batch_size!r}")
    return batch_size


def _first_forward(module, specs, batch: int, seed: int):
    """(inputs at ``batch``, torch outputs). If the model fails there but runs at the shapes as
    given, dim 0 is not its batch axis (a time-major input, or a batch the graph depends on): say so."""
    example = _torch_inputs(specs, batch, seed)
    try:
        return example, _run_torch(module, example)
    except GencompressError as error:
        if any(s.shape[0] != batch for s in specs):
            try:
                _run_torch(module, _torch_inputs_as_given(specs, seed))
            except GencompressError:
                raise error from None
            shapes = ", ".join(f"{s.name}={'x'.join(map(str, s.shape))}" for s in specs)
            moved = ", ".join(f"{s.name}={'x'.join(map(str, (batch, *s.shape[1:])))}" for s in specs)
            raise GencompressError(
                f"the model runs at the given shapes ({shapes}) but not with dim 0 changed to {batch} ({moved}): "
                "dim 0 is not a free batch axis (a time-major input?); put the batch first, or export with "
                f"--batch-size {specs[0].shape[0]} to keep dim 0 fixed"
            ) from None
        raise


def _torch_inputs_as_given(specs, seed: int):
    import torch

    rng = np.random.default_rng(seed)
    return tuple(torch.from_numpy(s.sample(s.shape[0], rng)) for s in specs)


def _failure_summary(failures, log_path, batch_size) -> str:
    where = f"; full error in {log_path}" if log_path else ""
    hint = "" if batch_size else " (if the graph depends on the batch size, e.g. groups = batch, try --batch-size N)"
    return f"export failed: {'; '.join(failures)}{hint}{where}"


def _reraise_interrupt(error: BaseException) -> None:
    """Raise KeyboardInterrupt if ``error`` was caused by one (torch re-raises Ctrl-C as an export error)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        seen.add(id(error))
        error = error.__cause__ or error.__context__


def _opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _input_specs(inputs, resolved) -> list[InputSpec]:
    inputs = inputs or resolved.inputs  # a module's own `gencompress_inputs` may be specs or strings too
    if not inputs:
        raise GencompressError(f"{resolved.source}: give its inputs, e.g. --input z=1x100x1x1 (one --input per forward argument)")
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(str(s)) for s in inputs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise GencompressError(f"--input names repeat: {', '.join(names)}")
    return specs


def _torch_inputs(specs, batch: int, seed: int):
    import torch

    return tuple(torch.from_numpy(a) for a in sample_inputs(specs, batch, seed).values())


def _run_torch(module, args):
    import torch

    from gencompress.exporter.resolve import user_code

    with torch.no_grad(), user_code("the model's forward"):
        try:
            out = module(*args)
        except Exception as e:
            _reraise_interrupt(e)
            msg = " ".join(str(e).split())[:300]
            raise GencompressError(f"the model fails on inputs of the given --input shapes ({type(e).__name__}: {msg})") from None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise GencompressError("the model must return a tensor or a tuple of tensors")
    return [o.detach().numpy() for o in outs]


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; keep stdout for our own result."""
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        except SystemExit as e:  # the user's forward ran sys.exit while being traced
            raise GencompressError(f"the model called sys.exit({e.code!r}) during export") from None
        finally:
            logger.setLevel(level)


def _export_dynamo(module, example, specs, output_names, path, opset, dynamic=True):
    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic_shapes = tuple({0: batch} for _ in specs) if dynamic else None
    kwargs = {"opset_version": opset} if opset else {}
    with _quiet():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=[s.name for s in specs],
            output_names=output_names,
            verbose=False,
            **kwargs,
        )
        program.save(str(path))


def _export_legacy(module, example, specs, output_names, path, opset, dynamic=True):
    import torch

    names = [s.name for s in specs]
    axes = {n: {0: "batch"} for n in [*names, *output_names]} if dynamic else None
    with _quiet():
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset or 17,
            do_constant_folding=True,
        )


def _set_metadata(proto, specs, resolved) -> None:
    meta = {METADATA_INPUTS: specs_to_json(specs), METADATA_SOURCE: resolved.source}
    if resolved.output_range:
        meta[METADATA_OUTPUT_RANGE] = repr(float(resolved.output_range))
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)


def check_parity(module, proto, specs, *, batches=PARITY_BATCHES, seed: int = 0, consistency: bool = True) -> dict:
    """Max abs error between torch and onnxruntime per batch size, and batch consistency.

    Batch consistency: rows of the largest batch run one at a time must equal the batched rows
    (a model in eval mode has no cross-sample interaction).
    """
    from gencompress.runtime_check.sessions import make_session

    session = make_session(proto, label="the exported model")
    errors = {}
    for batch in batches:
        feeds = sample_inputs(specs, batch, seed + batch)
        expected = _run_torch(module, tuple(_as_torch(feeds)))
        got = _run_onnx(session, feeds)
        for e, g in zip(expected, got):
            if e.shape != g.shape:
                raise GencompressError(
                    f"parity check failed: at batch {batch} onnxruntime returns shape {g.shape}, torch {e.shape} "
                    "(does the model fix the batch size, e.g. with int(x.shape[0])?)"
                )
        errors[str(batch)] = float(max(np.max(np.abs(e - g)) if e.size else 0.0 for e, g in zip(expected, got)))
    if not consistency:  # a fixed-batch model cannot run rows one at a time
        return {"max_abs_error": errors, "batch_consistency": None}
    big = max(batches)
    feeds = sample_inputs(specs, big, seed + big)
    batched = _run_onnx(session, feeds)
    rows = range(min(big, 8))
    consistency = 0.0
    for i in rows:
        single = _run_onnx(session, {k: v[i : i + 1] for k, v in feeds.items()})
        consistency = max(consistency, *(float(np.max(np.abs(b[i : i + 1] - s))) for b, s in zip(batched, single)))
    return {"max_abs_error": errors, "batch_consistency": consistency}


def _run_onnx(session, feeds):
    try:
        return session.run(None, feeds)
    except Exception as e:
        batch = len(next(iter(feeds.values())))
        msg = " ".join(str(e).split())[:200]
        raise GencompressError(
            f"parity check failed: onnxruntime cannot run the exported model at batch {batch} ({type(e).__name__}: {msg})"
        ) from None


def _as_torch(feeds):
    import torch

    return [torch.from_numpy(v) for v in feeds.values()]
