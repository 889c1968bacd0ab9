"""onnxruntime sessions with an explicit execution provider and no silent CPU fallback.

``resolve_provider`` turns a user's name (``cpu``, ``cuda``, ``tensorrt``, ``trt``, or the full
``CUDAExecutionProvider``) into onnxruntime's provider name, and refuses one that onnxruntime
does not know or that this build does not offer. ``make_session`` builds a session on that
provider (CPU kept behind it only for the nodes the provider cannot run, as onnxruntime
partitions graphs) and refuses a session where the provider did not actually initialise —
onnxruntime would otherwise quietly run everything on the CPU.

Sessions are built with intra-op and inter-op spinning off: several sessions live in one process
when a reference and a candidate are compared, and spinning idle threads steal the cores from
the session being timed (see DESIGN.md, Metrics).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from gencompress.errors import GencompressError

CPU = "CPUExecutionProvider"

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
}


def _ort():
    import onnxruntime as ort

    return ort


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers on this machine."""
    return list(_ort().get_available_providers())


def resolve_provider(name: str) -> str:
    """onnxruntime's name for ``name``; a one-line error if it is unknown or not available here."""
    ort = _ort()
    text = str(name).strip()
    known = {p.lower(): p for p in ort.get_all_providers()}
    full = ALIASES.get(text.lower()) or known.get(text.lower()) or known.get(text.lower() + "executionprovider")
    if full is None:
        short = ", ".join(sorted(ALIASES))
        raise GencompressError(f"unknown execution provider {name!r}; use one of {short} or a full onnxruntime provider name")
    available = available_providers()
    if full not in available:
        raise GencompressError(
            f"execution provider {full} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); refusing to fall back to CPU"
        )
    return full


def resolve_providers(names) -> list[str]:
    names = list(names) or ["cpu"]
    out = []
    for n in names:
        full = resolve_provider(n)
        if full not in out:
            out.append(full)
    return out


OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "layout", "all")


def session_options(
    threads: int | None = None,
    *,
    spinning: bool = False,
    log_level: int = 4,  # fatal only: a failing run raises, with the message; its ERROR log would be extra stderr lines
    optimization: str = "all",
    profile_prefix: str | None = None,
    lean: bool = False,
    prepack: bool = True,
):
    """SessionOptions: ``threads`` intra-op threads (None = onnxruntime's default), one inter-op
    thread (sequential execution), spinning off unless asked for, graph ``optimization`` level
    (one of ``OPTIMIZATION_LEVELS``), profiling to ``profile_prefix``*.json if given. ``lean``: a
    one-off session (calibration) that should hold as little memory as possible: no memory arena
    kept between runs. ``prepack`` False: weights not copied into the kernels' packed layouts (a
    session that never runs; onnxruntime frees a weight it has packed, so packing costs time, not
    memory)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    if threads is not None:
        if int(threads) <= 0:
            raise GencompressError(f"thread count must be positive, got {threads}")
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    flag = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
    opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "layout": getattr(ort.GraphOptimizationLevel, "ORT_ENABLE_LAYOUT", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise GencompressError(f"optimization level {optimization!r}: choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    opts.graph_optimization_level = levels[optimization]
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if lean:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    return opts


# Models larger than this are handed to onnxruntime as a file with external data (written
# tensor by tensor) rather than as one serialized string: no 2 GB protobuf limit, no second copy.
BYTES_LIMIT = 32 * 2**20


def model_bytes(model) -> bytes:
    """Serialized bytes of a path, ``onnx.ModelProto`` or ``onnx_ir.Model`` (external data inlined)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        from gencompress.onnx_io import load_model

        return load_model(model).SerializeToString()  # external data inlined; one-line error if unreadable
    from gencompress.onnx_io import to_proto

    return to_proto(model).SerializeToString()


@contextlib.contextmanager
def _loadable(model):
    """What ``InferenceSession`` takes for ``model``: bytes, or the path of a file. A path is
    checked by ``onnx_io.load_header`` (external data inside its folder) and read by onnxruntime
    itself; a large in-memory model is written to a temp folder with external data first."""
    from gencompress import onnx_io

    if isinstance(model, (bytes, bytearray)):
        yield bytes(model)
        return
    if isinstance(model, (str, os.PathLike)):
        header = onnx_io.load_header(model)  # a clear error for anything that is not a readable model
        if not onnx_io.small_external_tensors(header):
            yield str(model)
            return
        # onnxruntime cannot infer shapes from small tensors (a Reshape's shape) kept in a side
        # file: read the model here and hand it over with only large weights outside
        model = onnx_io.load_model(model)
    import onnx

    if not isinstance(model, onnx.ModelProto) and onnx_io.external_tensors(model):
        # weights moved out of memory (``onnx_io.spill``): only the graph is written, beside
        # them; onnxruntime maps the weights from there
        path = _header_beside_weights(model)
        if path is not None:
            try:
                yield str(path)
            finally:
                path.unlink(missing_ok=True)
            return
        if onnx_io.tensor_bytes(model) <= BYTES_LIMIT:
            onnx_io.materialize(model)  # small: serialized whole below
    if onnx_io.tensor_bytes(model) <= BYTES_LIMIT:
        yield model_bytes(model)
        return
    with tempfile.TemporaryDirectory(prefix="gencompress-session-") as folder:
        path = Path(folder) / "model.onnx"
        onnx_io.write_external(model, path)
        yield str(path)


def _header_beside_weights(model) -> Path | None:
    """Write an onnx_ir model whose large weights are all memory-mapped from the scratch folder
    (``onnx_io.spill``) as a graph-only ``.onnx`` there (its weights referenced where they are);
    None when some live elsewhere (never write into a user's folder) or large ones are in memory."""
    import onnx_ir as ir

    from gencompress import onnx_io

    folders = {Path(t.base_dir).resolve() for t in onnx_io.external_tensors(model)}
    scratch = onnx_io.scratch_folder()
    if scratch is None or folders != {scratch.resolve()} or onnx_io.inline_bytes(model) > BYTES_LIMIT:
        return None
    folder = scratch
    fd, name = tempfile.mkstemp(prefix=".session-", suffix=".onnx", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(ir.serde.serialize_model(model).SerializeToString())
    return Path(name)


def make_session(
    model,
    *,
    provider: str = CPU,
    threads: int | None = None,
    spinning: bool = False,
    label: str = "model",
    optimization: str = "all",
    profile_prefix: str | None = None,
    lean: bool = False,
    prepack: bool = True,
):
    """An ``InferenceSession`` on ``provider`` (resolved first); CPU only as the per-node fallback.
    The one place in gencompress that makes onnxruntime sessions.

    ``model``: path (onnxruntime reads it and its external data itself), bytes, ``onnx.ModelProto``
    or ``onnx_ir.Model``. A model onnxruntime cannot load, or a provider that fails to initialise,
    is a ``GencompressError``. See ``session_options`` for the other settings.
    """
    ort = _ort()
    provider = resolve_provider(provider)
    providers = [provider] if provider == CPU else [provider, CPU]
    if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available_providers():
        providers.insert(1, "CUDAExecutionProvider")  # what TensorRT cannot take runs on CUDA first
    options = session_options(threads, spinning=spinning, optimization=optimization, profile_prefix=profile_prefix, lean=lean, prepack=prepack)
    with _loadable(model) as data:
        try:
            session = ort.InferenceSession(data, options, providers=providers)
        except Exception as e:
            reason = " ".join(str(e).split())[:240] or type(e).__name__
            raise GencompressError(f"{label}: onnxruntime cannot load it on {provider} ({type(e).__name__}: {reason})") from None
    if provider not in session.get_providers():
        raise GencompressError(
            f"{label}: execution provider {provider} failed to initialise (session runs on "
            f"{', '.join(session.get_providers())}); refusing to fall back to CPU"
        )
    return session


def load_error(model) -> str | None:
    """Why onnxruntime cannot load ``model`` (one line), or None if it can."""
    try:
        make_session(model, optimization="disable", lean=True, prepack=False)
    except GencompressError as e:
        return str(e).split(": ", 1)[-1]
    return None


def run(session, feeds: dict, label: str = "model"):
    """``session.run`` with onnxruntime's failures turned into one-line user errors."""
    try:
        return session.run(None, feeds)
    except Exception as e:
        reason = " ".join(str(e).split())[:240] or type(e).__name__
        raise GencompressError(f"{label}: onnxruntime failed to run it ({type(e).__name__}: {reason})") from None


_FLOAT_INPUTS = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def cast_feeds(session, feeds: dict) -> dict:
    """``feeds`` with float arrays cast to the float type each input of ``session`` takes (float32
    latents for a float16-I/O model); other arrays as given."""
    out = dict(feeds)
    for i in session.get_inputs():
        want = _FLOAT_INPUTS.get(i.type)
        value = out.get(i.name)
        if want is not None and value is not None and value.dtype.kind == "f" and value.dtype != want:
            out[i.name] = value.astype(want)
    return out


def run_all(session, feeds: dict, n: int, batch: int, *, fixed: int | None = None, label: str = "model", progress: bool = False,
            on_first=None) -> list:
    """Every output of ``session`` over the ``n`` samples of ``feeds``, ``batch`` at a time, in
    output order. A model whose graph fixes the batch size gets chunks of exactly that size (the
    last one padded by repeating its last sample, the padding dropped), so every sample counts.
    ``on_first(outputs, rows)`` sees the first batch's outputs (e.g. to refuse a run whose
    outputs would not fit in memory)."""
    import numpy as np

    from gencompress.output import progress as bar

    chunk = fixed or batch
    parts: list[list] = [[] for _ in session.get_outputs()]
    starts = range(0, n, chunk)
    for start in bar(starts, desc=label.split()[0], unit="batch") if progress else starts:
        stop = min(start + chunk, n)
        piece = {k: v[start:stop] for k, v in feeds.items()}
        pad = chunk - (stop - start)
        if fixed and pad:
            piece = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in piece.items()}
        outs = run(session, cast_feeds(session, piece), label)
        if start == 0:
            for out, value in zip(session.get_outputs(), outs):
                if not isinstance(value, np.ndarray) or value.ndim == 0:  # a sequence, a map or a scalar
                    raise GencompressError(f"{label}: output {out.name!r} is not a batched tensor (no batch axis): samples cannot be compared")
            if on_first is not None:
                on_first(outs, len(next(iter(piece.values()))))
        for part, arr in zip(parts, outs):
            part.append(np.asarray(arr)[: stop - start])
    return [np.concatenate(p, axis=0) for p in parts]
