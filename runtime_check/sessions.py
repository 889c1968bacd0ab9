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

import os

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


def session_options(threads: int | None = None, *, spinning: bool = False, log_level: int = 3):
    """SessionOptions: ``threads`` intra-op threads (None = onnxruntime's default), one inter-op
    thread (sequential execution), spinning off unless asked for."""
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
    return opts


def model_bytes(model) -> bytes:
    """Serialized bytes of a path, ``onnx.ModelProto`` or ``onnx_ir.Model`` (external data inlined)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        from gencompress.onnx_io import load_model

        return load_model(model).SerializeToString()  # external data inlined; one-line error if unreadable
    from gencompress.onnx_io import to_proto

    return to_proto(model).SerializeToString()


def make_session(model, *, provider: str = CPU, threads: int | None = None, spinning: bool = False, label: str = "model"):
    """An ``InferenceSession`` on ``provider`` (resolved first); CPU only as the per-node fallback.

    ``model``: path, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``. A model onnxruntime cannot
    load, or a provider that fails to initialise, is a ``GencompressError``.
    """
    ort = _ort()
    provider = resolve_provider(provider)
    data = model if isinstance(model, (bytes, bytearray)) else model_bytes(model)
    providers = [provider] if provider == CPU else [provider, CPU]
    if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available_providers():
        providers.insert(1, "CUDAExecutionProvider")  # what TensorRT cannot take runs on CUDA first
    try:
        session = ort.InferenceSession(data, session_options(threads, spinning=spinning), providers=providers)
    except Exception as e:
        reason = " ".join(str(e).split())[:240] or type(e).__name__
        raise GencompressError(f"{label}: onnxruntime cannot load it on {provider} ({type(e).__name__}: {reason})") from None
    if provider not in session.get_providers():
        raise GencompressError(
            f"{label}: execution provider {provider} failed to initialise (session runs on "
            f"{', '.join(session.get_providers())}); refusing to fall back to CPU"
        )
    return session


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
