"""Load and save ONNX models: external data understood, outputs self-contained and atomic.

Every model read or written by gencompress goes through this module, so that
- a model whose weights live in a side file (as the dynamo exporter writes them) loads whole,
- an output is one self-contained ``.onnx``, or, above the 2 GB protobuf limit (or when asked),
  ``OUT.onnx`` plus its weights in ``OUT.onnx.data`` beside it,
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
    model = load_header(path)
    _load_external_data(model, Path(path))
    return model


def load_header(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model without its external data (weights in a side file stay references,
    whose side files must exist): what onnxruntime will read by path."""
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
    _check_external_files(model, path)
    return model


def _check_external_files(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    for location in sorted({ExternalDataInfo(t).location for t in external}):
        if not (path.parent / location).is_file():
            raise GencompressError(f"{path}: its external data file {location!r} is missing (expected beside the model)")


def small_external_tensors(model: onnx.ModelProto, limit: int = 1024) -> bool:
    """Whether a model read without its external data keeps tensors under ``limit`` bytes in a
    side file (onnxruntime cannot read those as shape inputs when it loads the model by path)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if uses_external_data(t):
            length = ExternalDataInfo(t).length
            if length is None or int(length) < limit or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
                return True
    return False


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read weights kept in side files into the model, naming a side file that is missing."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(model) if uses_external_data(t)]
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


def skeleton(model) -> onnx.ModelProto:
    """``model`` (onnx_ir or proto) as a ModelProto whose large initializers are external-data
    references to nowhere: dims and types kept, data left out. What shape inference needs, at
    the cost of the graph alone (a full copy of a large model would double its memory)."""
    import onnx_ir as ir

    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    swapped = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.nbytes > 1024:
            swapped[value] = tensor
            value.const_value = ir.ExternalTensor(
                "gencompress-skeleton.bin", offset=0, length=tensor.nbytes, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name
            )
    try:
        return ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped.items():
            value.const_value = tensor


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


def tensor_bytes(model) -> int:
    """Bytes of a model's tensors (initializers and Constant values, subgraphs included) and of
    its graph, about its serialized size, computed without serializing it."""
    if isinstance(model, onnx.ModelProto):
        return model.ByteSize()
    import onnx_ir as ir

    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        total += sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    total += attr.value.nbytes
    return total + 64 * 1024  # graph structure: small beside the tensors


def write_external(model, path: str | os.PathLike, *, location: str | None = None) -> Path:
    """Write ``model`` (onnx_ir or proto) as ``path`` plus its weights in the side file
    ``location`` (default ``<name>.data``) beside it, tensor by tensor (no whole-model string).
    Not atomic: see ``save_model``."""
    import onnx_ir as ir

    path = Path(path)
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)  # wraps the proto's tensors, no copy
    ir.save(model, path, external_data=location or f"{path.name}.data", size_threshold_bytes=1024, alignment=64 * 1024)
    return path


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model's files on disk: the ``.onnx`` and the external data files it references."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    header = onnx.load(str(path), load_external_data=False)
    sides = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(header) if uses_external_data(t)})
    return [path, *(path.parent / s for s in sides)]


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model: the ``.onnx`` plus its external data files."""
    return sum(p.stat().st_size for p in model_files(path))


def external_data_path(out: str | os.PathLike) -> Path:
    """The side file ``save_model`` writes beside ``out`` for weights kept outside it."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def save_model(model, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
               external_data: bool | None = None, limit: int | None = None) -> Path:
    """Write ``model`` (proto or onnx_ir), atomically: one self-contained file, or, when the
    model would exceed ``limit`` bytes (the 2 GB protobuf limit) or ``external_data`` is True,
    ``out`` plus its weights in ``out.data`` beside it (both written to temp names and renamed).

    ``inputs`` are the paths the model was read from; writing over one of them (or over one of
    their external data files) is refused.
    """
    if external_data is None:
        external_data = tensor_bytes(model) > (PROTOBUF_LIMIT if limit is None else limit)
    side = external_data_path(out)
    if external_data:
        refuse_overwrite(side, [*inputs, *_side_files(inputs)])
        with atomic_path(out, inputs) as tmp, atomic_path(side, inputs) as tmp_side:
            staged = tmp.with_name(tmp.name + ".dir")
            staged.mkdir()
            try:
                write_external(model, staged / Path(out).name, location=side.name)
                os.replace(staged / side.name, tmp_side)
                os.replace(staged / Path(out).name, tmp)
            finally:
                for leftover in staged.iterdir():
                    leftover.unlink()
                staged.rmdir()
        return Path(out)
    proto = to_proto(model)
    with atomic_path(out, inputs) as tmp:
        with open(tmp, "wb") as f:
            f.write(proto.SerializeToString(deterministic=True))
    return Path(out)


def _side_files(inputs) -> list[Path]:
    """The external data files the input models read (refused as outputs)."""
    files = []
    for src in inputs or ():
        if src is None or not str(src).endswith(".onnx") or not Path(src).is_file():
            continue
        try:
            header = onnx.load(str(src), load_external_data=False)
        except Exception:
            continue
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

        files += [Path(src).parent / ExternalDataInfo(t).location for t in _get_all_tensors(header) if uses_external_data(t)]
    return sorted(set(files))
