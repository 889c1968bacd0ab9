"""Load and save ONNX models: external data understood, outputs self-contained and atomic.

Every model read or written by gencompress goes through this module, so that
- a model whose weights live in a side file (as the dynamo exporter writes them) loads whole,
- an output is one self-contained ``.onnx`` below the 2 GB protobuf limit,
- an output is written to a temp file in the target folder and renamed into place,
- an output never overwrites one of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import onnx

from gencompress.errors import GencompressError

PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model with its external data; a clear error for anything that isn't one."""
    path = Path(path)
    if not path.exists():
        raise GencompressError(f"{path}: no such file")
    if path.is_dir():
        raise GencompressError(f"{path}: is a folder, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise GencompressError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise GencompressError(f"{path}: not an ONNX model (empty graph)")
    _load_external_data(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read weights kept in side files into the model, naming a side file that is missing."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for location in sorted({ExternalDataInfo(t).location for t in external}):
        if not (path.parent / location).is_file():
            raise GencompressError(f"{path}: its external data file {location!r} is missing (expected beside the model)")
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise GencompressError(f"{path}: cannot read its external data ({type(e).__name__}: {e})") from None


def load_ir(path: str | os.PathLike):
    """Read an ONNX model as an ``onnx_ir.Model`` (the form passes work on)."""
    import onnx_ir as ir

    return ir.serde.deserialize_model(load_model(path))


def to_proto(model) -> onnx.ModelProto:
    """An ``onnx_ir.Model`` or ``ModelProto`` as a ``ModelProto``."""
    if isinstance(model, onnx.ModelProto):
        return model
    import onnx_ir as ir

    return ir.serde.serialize_model(model)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_overwrite(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    for src in inputs:
        if src is not None and same_file(out, src):
            raise GencompressError(f"{out}: output is the same file as the input; choose another path")


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temp path beside ``out``; rename it onto ``out`` only if the block succeeds."""
    out = Path(out)
    refuse_overwrite(out, inputs)
    if out.is_dir():
        raise GencompressError(f"{out}: is a folder, expected a file path")
    folder = out.parent if str(out.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GencompressError(f"{folder}: cannot create output folder ({e.strerror})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise GencompressError(f"{folder}: cannot write there ({e.strerror})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output should look like any other file
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(model, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write ``model`` (proto or onnx_ir) as one self-contained file, atomically.

    ``inputs`` are the paths the model was read from; writing over one of them is refused.
    """
    proto = to_proto(model)
    size = proto.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise GencompressError(
            f"{out}: model is {size / 2**30:.2f} GiB, above the 2 GB limit of a self-contained .onnx"
        )
    with atomic_path(out, inputs) as tmp:
        with open(tmp, "wb") as f:
            f.write(proto.SerializeToString(deterministic=True))
    return Path(out)
