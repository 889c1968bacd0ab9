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
import contextvars
import errno
import functools
import gc
import hashlib
import math
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import zlib

from gencompress.errors import GencompressError, short

PROTOBUF_LIMIT = 2**31 - 1
# save_model writes weights to a side file above this many bytes (tests lower it)
EXTERNAL_DATA_LIMIT = PROTOBUF_LIMIT
# a write that fails for one of these reasons is the user's disk, not a bug: one line
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def as_path(value, role: str = "model") -> Path:
    """A user-given path (str or os.PathLike) as a Path; anything else is a user error."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise GencompressError(f"{role}: expected a file path, got {type(value).__name__} {short(value)}")
    text = os.fspath(value)
    if isinstance(text, bytes) or not text or "\0" in text:
        raise GencompressError(f"{role}: expected a file path, got {short(value)}")
    path = Path(text)
    # the OS refuses such names (ENAMETOOLONG), from os.stat too: said here, before any use
    if len(os.fsencode(text)) >= 4096 or any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise GencompressError(f"{role}: {short(text, 80)}: a file name longer than 255 bytes (or a path over 4096); choose a shorter one")
    return path


def _refuse_special_output(out: Path) -> None:
    """An output path naming a device, FIFO or socket is refused: the atomic rename would replace
    it with a regular file (``/dev/null`` as root: the machine's own null device)."""
    try:
        st = out.lstat()
    except OSError:
        return  # nothing there (or unreadable: the write says why)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise GencompressError(f"{out}: not a regular file (a device, FIFO or socket); refusing to replace it with an output")


def regular_file(path: Path, what: str = "") -> int:
    """Size of ``path``, refusing a missing file, a folder, or a device/FIFO/socket before any read."""
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise GencompressError(f"{label}: no such file") from None
    except OSError as e:
        raise GencompressError(f"{label}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GencompressError(f"{label}: is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise GencompressError(f"{label}: not a regular file (a device, FIFO or socket); refusing to read it")
    return st.st_size


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model with its external data; a clear error for anything that isn't one."""
    model = load_header(path)
    load_external_data(model, path)
    return model


def load_header(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX model without its external data (the entries validated, the weights left in
    their side files): what onnxruntime will read by path, or all that inputs/outputs/metadata need."""
    path = as_path(path)
    size = regular_file(path)
    if size == 0:
        raise GencompressError(f"{path}: not an ONNX model (empty file)")
    if size > PROTOBUF_LIMIT:
        raise GencompressError(f"{path}: {size / 2**30:.2f} GiB, above the 2 GB limit of an .onnx file (keep weights in external data)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise GencompressError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise GencompressError(f"{path}: not an ONNX model (empty graph)")
    external_data_entries(model, path)
    validate_model(model, path, checker=size <= CHECKER_BYTES)
    weights_from_inputs(model)
    return model


# ---- IR version 3 graphs: initializers listed as graph inputs too ----------------------------

_KEEP_INPUTS: contextvars.ContextVar = contextvars.ContextVar("gencompress_keep_initializer_inputs", default=False)
_LIFTED: contextvars.ContextVar = contextvars.ContextVar("gencompress_lifted_inputs", default=None)


@contextlib.contextmanager
def initializer_inputs(keep: bool = False):
    """Models read within (``load_header``, ``load_mapped``, ``load_model``) keep the initializers
    they also list as graph inputs as inputs (``keep``), or, by default, have them taken as
    weights (``weights_from_inputs``); yields the list of the names so taken, for the verb's note."""
    lifted: list[str] = []
    tokens = _KEEP_INPUTS.set(bool(keep)), _LIFTED.set(lifted)
    try:
        yield lifted
    finally:
        _KEEP_INPUTS.reset(tokens[0])
        _LIFTED.reset(tokens[1])


def keeping_initializer_inputs() -> bool:
    """Whether models read now keep their initializer inputs (``initializer_inputs(keep=True)``)."""
    return bool(_KEEP_INPUTS.get())


def lifted_inputs() -> list[str]:
    """The names taken as weights so far within ``initializer_inputs`` (empty outside it)."""
    return list(_LIFTED.get() or ())


def note_lifted(names) -> None:
    """Add ``names`` to the list ``initializer_inputs`` yields, once each (outside it: nothing), as
    reading a model that lists them would (an output reused from the cache reads no model)."""
    holder = _LIFTED.get()
    if holder is not None:
        holder.extend(n for n in names if n not in holder)


def weights_from_inputs(model: onnx.ModelProto) -> list[str]:
    """Drop from the graph inputs those that have an initializer of the same name (IR version 3
    requires that listing: a feed may override them; exporters of that era wrote every weight so),
    raising the IR version to 4, where initializers are constants: the passes then see weights
    where they are. What onnxruntime does with an unfed input, and its
    ``remove_initializer_from_input.py`` tool, only without the overriding. Returns the names."""
    if _KEEP_INPUTS.get():
        return []
    names = {t.name for t in model.graph.initializer}
    lifted = [vi.name for vi in model.graph.input if vi.name in names]
    if not lifted:
        return []
    kept = [vi for vi in model.graph.input if vi.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)
    note_lifted(lifted)
    return lifted


def lifted_note(lifted: list[str], path) -> str | None:
    """The verb's note on ``weights_from_inputs``; None when nothing was taken."""
    if not lifted:
        return None
    return (f"{path}: {len(lifted)} initializer(s) also listed as graph inputs (IR version 3 style), e.g. "
            f"{short(lifted[0])}, taken as weights; --keep-initializer-inputs keeps them as inputs")


# onnx.checker serializes the model it checks (a transient copy): a model read whole is checked up
# to this size (above it, its text fields only; onnxruntime still refuses a broken graph in one
# line); a model read by load_mapped (prune, quantize) is checked at any size: its weights are
# references into the file, the graph is small
CHECKER_BYTES = 64 * 2**20


def validate_model(model: onnx.ModelProto, path, *, checker: bool = True) -> None:
    """What onnx_ir's reader and serializer need, checked before any verb works on ``model``:
    every text field valid UTF-8 (a flipped bit in a name reads as bytes, and onnx_ir fails
    only when it writes the result), and onnx.checker's verdict (op known at the model's opset,
    attributes of the right type, tensor sizes matching their dims, graph in topological order).
    A problem is one line naming it; the file is not the user's fault to debug."""
    bad = _non_text_field(model)
    if bad:
        raise GencompressError(f"{path}: damaged ONNX model ({bad} is not valid UTF-8 text)")
    if not model.graph.output:  # onnx.checker lets it through; onnxruntime has nothing to run
        raise GencompressError(f"{path}: the graph has no outputs, so there is nothing to compute or compare")
    _refuse_huge_fills(model, path)
    bad = _tensor_size_mismatch(model)
    if bad:
        raise GencompressError(f"{path}: damaged ONNX model ({bad})")
    if checker:
        try:
            onnx.checker.check_model(_without_external_data(model))
        except Exception as e:  # ValidationError; protobuf errors for a damaged message
            raise GencompressError(f"{path}: not a valid ONNX model ({_first_line(e)})") from None
    bad = _type_mismatch(model, Path(path))
    if bad:
        raise GencompressError(f"{path}: not a valid ONNX model (types do not match: {bad})")


def _first_line(e: Exception) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return short(first, 240)[1:-1]


# a model holding more weight bytes than this in memory is type-checked on its skeleton (shape
# inference serializes what it is given: a whole copy of the model otherwise)
INLINE_TYPECHECK_BYTES = 2**20


def _type_mismatch(model: onnx.ModelProto, path: Path) -> str | None:
    """The first node whose inputs' types do not match its operator (a double weight into a
    float Gemm; onnx.checker without full_check lets it through, onnxruntime refuses it later or
    a verb writes it on), from onnx's strict shape inference with type checks; None if none.
    Runs on the graph and small tensors only (weights in files or large ones left out)."""
    from onnx.external_data_helper import uses_external_data

    inline = sum(_tensor_nbytes(t) or 0 for t in model.graph.initializer if not uses_external_data(t))
    try:
        if inline <= INLINE_TYPECHECK_BYTES:
            target = onnx.ModelProto()
            target.CopyFrom(model)  # small: named below without touching the model
        else:
            target = skeleton(model)
    except Exception:  # a graph onnx_ir cannot read is the verbs' to refuse, each in one line
        return None
    listed = {i.name for i in target.graph.input}
    for sparse in (t for t in target.graph.sparse_initializer if t.values.name not in listed):  # strict inference refuses
        target.graph.input.append(  # them ("type case mismatch"): checked as inputs of their type and shape
            onnx.helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, list(sparse.dims)))
    del target.graph.sparse_initializer[:]
    for i, node in enumerate(target.graph.node):  # the message names the node: an unnamed one by position and output
        if not node.name:
            node.name = f"#{i} writing {node.output[0] if node.output else '<nothing>'}"
    _inline_small_external(target, path)
    try:
        onnx.shape_inference.infer_shapes(target, check_type=True, strict_mode=True)
    except Exception as e:  # InferenceError; protobuf errors
        if "Cannot parse data from external tensors" in str(e):
            return None  # a large shape-like tensor left in a file: undecided here, onnxruntime judges it
        return _first_line(e)
    return None


def _inline_small_external(model: onnx.ModelProto, path: Path, limit: int = 64 * 1024) -> None:
    """Small external-data tensors of ``model`` (a copy) read into it: shape inference needs the
    values of a Reshape's shape or a Resize's scales, and cannot read files. Entries were validated."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        length = int(info.length) if info.length is not None else None
        if length is None or length > limit:
            continue
        try:
            with open(path.parent / info.location, "rb") as f:
                f.seek(int(info.offset or 0))
                data = f.read(length)
        except (OSError, ValueError):
            continue
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = data


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _tensor_size_mismatch(model: onnx.ModelProto) -> str | None:
    """The first inline tensor whose stored values do not fill its dims (a flipped bit in a dim or
    a length; onnx.checker lets it through, and numpy fails on it at first use), or None."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor) or any(d < 0 for d in tensor.dims):
            continue  # external data: its entries are checked against the tensor (external_data_entries)
        elements = math.prod(tensor.dims)
        if tensor.HasField("raw_data"):
            expected = _tensor_nbytes(tensor)
            if expected is not None and len(tensor.raw_data) != expected:
                return f"tensor {short(tensor.name)} holds {len(tensor.raw_data)} bytes, its dims {list(tensor.dims)} need {expected}"
            continue
        stored = [f for f in _TYPED_FIELDS if len(getattr(tensor, f))]
        if not stored:
            continue  # an empty tensor; or a segment, which the checker judges
        count = len(getattr(tensor, stored[0]))
        per_element = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            continue
        if count != elements * per_element:
            return f"tensor {short(tensor.name)} holds {count} values, its dims {list(tensor.dims)} need {elements * per_element}"
    return None


def _refuse_huge_fills(model: onnx.ModelProto, path) -> None:
    """ConstantOfShape nodes of constant shape (the "light" nets' weights; a damaged shape asks
    for terabytes) fill in memory what nothing stores: onnxruntime at load, the verbs that store
    them as weights. More of it than half the free memory is refused before any work."""
    shapes = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1}
    total, largest = 0, None
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.input or node.input[0] not in shapes:
            continue
        try:
            dims = onnx.numpy_helper.to_array(shapes[node.input[0]])
        except Exception:
            continue
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        itemsize = 4 if value is None else (_tensor_nbytes(value) or 4) // max(1, math.prod(value.dims))
        if dims.size and (dims >= 0).all():
            total += math.prod(int(d) for d in dims) * max(itemsize, 1)
            largest = node.name or node.output[0]
    budget = (free_memory() or 16 * 2**30) // 2  # unknown: as if 16 GiB were free
    if total > budget:
        raise GencompressError(f"{path}: its ConstantOfShape nodes (e.g. {short(largest, 80)}) fill in {total / 2**30:,.1f} GiB, more than "
                               f"half this machine's free memory ({budget / 2**30:.1f} GiB); refusing to read it (a damaged shape?)")


def free_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable: free pages and reclaimable
    cache; else the free pages), None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _without_external_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for onnx.checker: its external-data tensors (already validated against their
    files by ``external_data_entries``) made empty inline tensors, since the checker would look
    for their files relative to the working folder. ``model`` itself when it has none."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    if not any(uses_external_data(t) for t in _get_all_tensors(model)):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the graph and small tensors: the large ones are references
    for t in _get_all_tensors(copy):
        if uses_external_data(t):
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            del t.dims[:]
            t.dims.append(0)
    return copy


def _non_text_field(message, where: str = "model") -> str | None:
    """The first string field of ``message`` (recursively) that protobuf could not decode as
    UTF-8 (ONNX is proto2: such a field reads as bytes), or None. Tensor payloads are not read."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    for fd in message.DESCRIPTOR.fields:
        if fd.type == FD.TYPE_STRING:
            values = getattr(message, fd.name) if fd.is_repeated else [getattr(message, fd.name)]
            if any(not isinstance(v, str) for v in values):
                return f"{where}.{fd.name}"
        elif fd.type == FD.TYPE_MESSAGE:
            if fd.is_repeated:
                children = getattr(message, fd.name)
            else:
                children = [getattr(message, fd.name)] if message.HasField(fd.name) else []
            for i, child in enumerate(children):
                bad = _non_text_field(child, f"{where}.{fd.name}" + (f"[{i}]" if fd.is_repeated else ""))
                if bad:
                    return bad
    return None


# ---- a self-contained model read with its weights left in the file --------------------------

MAPPED_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


class _NotMappable(Exception):
    pass


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _NotMappable
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(buf, pos: int, end: int):
    """(field number, wire type, start of the field, start of its value, end of the field) of a
    protobuf message's bytes ``buf[pos:end]``; a length-delimited value is ``buf[value:end]``."""
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value = pos
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, value = _read_varint(buf, pos, end)
            pos = value + length
        elif wire == 5:
            pos += 4
        else:  # groups: not in ONNX
            raise _NotMappable
        if pos > end or number == 0:
            raise _NotMappable
        yield number, wire, start, value, pos


def _message(number: int, body: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(body)) + body


def _mapped_tensor(buf, start: int, end: int, location: str) -> bytes | None:
    """A TensorProto's bytes with its raw data replaced by a reference to where it lies in the
    file (``location``, absolute offset and length); None to keep it as it is."""
    fields = list(_fields(buf, start, end))

    def varints(number):
        return [_read_varint(buf, f[3], f[4])[0] for f in fields if f[0] == number and f[1] == 0]

    dtype = next(iter(varints(2)), None)
    raw = [f for f in fields if f[0] == 9 and f[1] == 2]
    external = any(f[0] == 13 for f in fields) or any(varints(14))  # already external: left as it is
    if dtype not in MAPPED_TYPES or len(raw) != 1 or external or raw[0][4] - raw[0][3] < SPILL_THRESHOLD:
        return None
    _, _, raw_start, offset, raw_end = raw[0]
    kept = b"".join(bytes(buf[f[2] : f[4]]) for f in fields if f is not raw[0] and f[0] != 14)  # data_location DEFAULT: set below
    entries = b"".join(
        _message(13, _message(1, key.encode()) + _message(2, value.encode()))
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(raw_end - offset)))
    )
    return kept + entries + _encode_varint(14 << 3) + _encode_varint(onnx.TensorProto.EXTERNAL)


def _header_bytes(buf, location: str) -> bytes | None:
    """The model's bytes with every large float initializer of its main graph left in the file."""
    out, mapped = bytearray(), 0
    for number, wire, start, value, end in _fields(buf, 0, len(buf)):
        if number != 7 or wire != 2:  # not ModelProto.graph
            out += buf[start:end]
            continue
        graph = bytearray()
        for g_number, g_wire, g_start, g_value, g_end in _fields(buf, value, end):
            tensor = _mapped_tensor(buf, g_value, g_end, location) if g_number == 5 and g_wire == 2 else None  # GraphProto.initializer
            if tensor is None:
                graph += buf[g_start:g_end]
            else:
                graph += _message(5, tensor)
                mapped += 1
        out += _message(7, bytes(graph))
    return bytes(out) if mapped else None


def _walked_header(path: Path) -> onnx.ModelProto | None:
    """The model at ``path`` parsed without the raw bytes of its large float initializers (each an
    external-data reference into the file itself, not validated); None when the file cannot be
    walked, does not parse, or has no such initializer."""
    import mmap

    header = None
    try:
        if not 0 < path.stat().st_size <= PROTOBUF_LIMIT:
            return None
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            view = memoryview(buf)
            try:
                header = _header_bytes(view, path.name)
            except _NotMappable:
                pass
            finally:
                view.release()  # before the mapping closes
    except (OSError, ValueError):
        return None
    if header is None:
        return None
    try:
        return onnx.load_model_from_string(header)
    except Exception:
        return None


def load_mapped(path: str | os.PathLike) -> onnx.ModelProto:
    """``load_header``, and for a self-contained file also its large float initializers left in
    the file: each becomes an external-data reference to where its raw bytes lie in the ``.onnx``
    itself, read memory-mapped one at a time like a side file's weights (``load_header`` holds
    the file's bytes and the parsed model at once: twice the file). A file this reader cannot
    walk (a malformed one) is read by ``load_header``, which says what is wrong with it."""
    path = as_path(path)
    regular_file(path)
    model = _walked_header(path)
    if model is not None and (model.graph.node or model.graph.output):
        try:  # a name the side-file rules refuse (a colon; a symlink to another folder): read whole
            external_data_entries(model, path)
        except GencompressError:
            return load_header(path)
        validate_model(model, path)
        weights_from_inputs(model)
        return model
    return load_header(path)


def stored_bytes(path: str | os.PathLike, entries) -> int:
    """A model's self-contained size from its files: the ``.onnx`` plus the external data
    ``entries`` (``external_data_entries``) hold outside it (not ByteSize: protobuf serializes a
    model to size it, a transient copy of the whole)."""
    own = Path(path).resolve()
    return Path(path).stat().st_size + sum(length for _, file, _, length in entries if file.resolve() != own)


def mapped_ir(header: onnx.ModelProto, path: str | os.PathLike):
    """The ``onnx_ir`` model of ``header`` (read from ``path`` by ``load_mapped`` or
    ``load_header``): its external weights read from their files when used, memory-mapped."""
    import onnx_ir as ir

    model = ir.serde.deserialize_model(header)
    ir.external_data.set_base_dir(model.graph, Path(path).resolve().parent)
    return model


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


EXTERNAL_DATA_KEYS = {"location", "offset", "length", "checksum", "basepath"}


def external_data_entries(model: onnx.ModelProto, path: Path) -> list[tuple[onnx.TensorProto, Path, int, int]]:
    """(tensor, file, offset, length) of every external-data tensor, each entry validated:
    offset/length integers >= 0 inside the file, the file a regular file inside the model's
    folder (no absolute path, no ``..``, no symlink out), length matching the tensor's size."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = path.parent.resolve()
    sizes: dict[Path, int] = {}
    entries = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        where = f"{path}: tensor {short(tensor.name)}'s external data"
        info = {e.key: e.value for e in tensor.external_data}
        unknown = sorted(set(info) - EXTERNAL_DATA_KEYS)
        if unknown:  # onnx and onnx_ir warn and go on; the ONNX spec allows no others
            raise GencompressError(f"{where} has unknown key(s) {', '.join(map(short, unknown))}; the ONNX format allows "
                                   f"{', '.join(sorted(EXTERNAL_DATA_KEYS))}")
        location = info.get("location", "")
        rel = Path(location)
        if not location or "\0" in location or not rel.parts:  # "" and "." name no file
            raise GencompressError(f"{where} has no file location")
        if rel.is_absolute() or ".." in rel.parts or location.startswith(("/", "\\")) or ":" in rel.parts[0]:
            raise GencompressError(f"{where} points outside the model's folder ({short(location)}); refusing to read it")
        target = path.parent / rel
        if not target.resolve().is_relative_to(folder):
            raise GencompressError(f"{where} ({short(location)}) resolves outside the model's folder (a symlink?); refusing to read it")
        if not os.path.lexists(target):
            raise GencompressError(f"{path}: its external data file {location!r} is missing (expected beside the model)")
        if target not in sizes:
            sizes[target] = regular_file(target, "external data")
        numbers = {}
        for key in ("offset", "length"):
            text = info.get(key)
            if text is None:
                continue
            if not re.fullmatch(r"\d{1,19}", text.strip()):
                raise GencompressError(f"{where}: {key} {short(text)} is not an integer >= 0")
            numbers[key] = int(text)
        offset = numbers.get("offset", 0)
        length = numbers.get("length", sizes[target] - offset)
        if offset + length > sizes[target]:
            raise GencompressError(f"{where}: bytes {offset}..{offset + length} lie beyond the end of {location!r} ({sizes[target]} bytes)")
        expected = _tensor_nbytes(tensor)
        if expected is not None and expected != length:
            raise GencompressError(f"{where}: holds {length} bytes, but a {tensor.dims} tensor of its type needs {expected}")
        if "checksum" in info:
            _verify_checksum(info["checksum"], target, offset, length, where)
        entries.append((tensor, target, offset, length))
    return entries


def _verify_checksum(checksum: str, file: Path, offset: int, length: int, where: str) -> None:
    """An entry's ``checksum``: the SHA-1 of "the file specified under location" (the ONNX
    spec); writers differ on whether that is the whole file or the tensor's bytes in it, so either
    matches. A mismatch (a damaged or swapped side file) is refused in one line."""
    text = checksum.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", text):
        raise GencompressError(f"{where}: checksum {short(checksum)} is not a SHA-1 digest (40 hex digits)")
    st = file.stat()
    if text == _sha1(file, st.st_mtime_ns, st.st_size, offset, length):
        return
    if (offset, length) != (0, st.st_size) and text == _sha1(file, st.st_mtime_ns, st.st_size, 0, st.st_size):
        return
    raise GencompressError(f"{where}: {file.name} does not match its SHA-1 checksum (a damaged or replaced side file); refusing to read it")


@functools.lru_cache(maxsize=4096)
def _sha1(file: Path, mtime_ns: int, size: int, offset: int, length: int, chunk: int = 16 * 2**20) -> str:
    """SHA-1 of ``length`` bytes at ``offset`` of ``file``, read a chunk at a time (bounded
    memory); cached per file version, since a verb reads a model's entries several times."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(file, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            block = f.read(min(chunk, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of a fixed-width tensor's raw data (None for types whose width varies, e.g. 4-bit)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        return None
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return None
    if any(d < 0 for d in tensor.dims):
        return -1
    return math.prod(tensor.dims) * itemsize


def load_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Read weights kept in side files into a model read by ``load_header`` from ``path``, after
    validating every entry (nothing for a self-contained model)."""
    path = Path(path)
    entries = external_data_entries(model, path)
    if entries:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise GencompressError(f"{path}: cannot read its external data ({type(e).__name__}: {short(str(e), 200)})") from None


def external_data_files(path) -> list[Path]:
    """The side files an .onnx file's weights live in (for refusing to write over them)."""
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        return []
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:  # the graph only: a self-contained model's weights are not read to find there are no side files
        model = _walked_header(path) or onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    files = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location and location != path.name:  # not the walker's references into the file itself
                files.add(path.parent / location)
    return sorted(files)


def nonfinite_weights(model) -> list[str]:
    """Names of float initializers / Constant tensors holding NaN or Inf (subgraphs included).
    ``model``: a proto, an onnx_ir model, or a path (its external data read a piece at a time,
    memory-mapped, never whole)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    if isinstance(model, (str, os.PathLike)):
        header = load_mapped(model)
        files = iter([(f, offset) for _, f, offset, _ in external_data_entries(header, Path(model))])  # in tensor order
    else:
        header, files = to_proto(model), iter(())
    bad = []
    for tensor in _get_all_tensors(header):
        external = next(files, None) if uses_external_data(tensor) else None
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        try:
            if external is not None:
                file, offset = external
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                arr = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=(math.prod(tensor.dims),)) if math.prod(tensor.dims) else np.zeros(0, dtype)
            else:
                arr = numpy_helper.to_array(tensor).reshape(-1)
        except Exception:
            continue
        step = 1 << 24  # a slice at a time: no whole-tensor temporaries
        if not all(np.isfinite(arr[i : i + step].astype(np.float32, copy=False)).all() for i in range(0, arr.size, step)):
            bad.append(tensor.name or "<unnamed constant>")
        del arr
    return bad


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def refuse_nonfinite_weights(model, path) -> None:
    """The verbs that compute from weights (prune, quantize, sensitivity, compress) call this:
    NaN/Inf weights would quantize to garbage or prune at random."""
    bad = nonfinite_weights(model)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise GencompressError(f"{path}: weight(s) {', '.join(short(n, 80) for n in bad[:3])}{more} contain NaN or Inf; fix the model first")


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
    a, b = as_path(a, "output"), as_path(b, "input")
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_overwrite(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is one of the inputs, or the external-data file of an input model, or
    a device/FIFO/socket."""
    out = as_path(out, "output")
    _refuse_special_output(out)
    for src in inputs:
        if src is None:
            continue
        if same_file(out, src):
            raise GencompressError(f"{out}: output is the same file as the input; choose another path")
        if not os.path.lexists(out):
            continue  # a side file exists: an output path that does not exist cannot be one
        for side in external_data_files(src):
            if same_file(out, side):
                raise GencompressError(f"{out}: is the external-data file of the input {src}; choose another path")


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temp path beside ``out``; rename it onto ``out`` only if the block succeeds."""
    out = as_path(out, "output")
    refuse_overwrite(out, inputs)  # a device/FIFO/socket too
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
        try:
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output should look like any other file
            os.replace(tmp, out)
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            raise GencompressError(f"{out}: cannot write it ({e.strerror or os.strerror(e.errno)})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


GRAPH_BYTES = 64 * 1024  # a model's graph structure, counted as this beside its tensors


def tensor_bytes(model) -> int:
    """Bytes of a model's tensors (initializers and Constant values, subgraphs included) and of
    its graph, about its serialized size, computed without serializing it."""
    if isinstance(model, onnx.ModelProto):  # dims x item size: protobuf's ByteSize serializes the whole model to count it
        from onnx.external_data_helper import _get_all_tensors

        sizes = ((_tensor_nbytes(t), t) for t in _get_all_tensors(model))
        return sum(n if n is not None and n >= 0 else t.ByteSize() for n, t in sizes) + GRAPH_BYTES
    import onnx_ir as ir

    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        total += sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    total += attr.value.nbytes
    return total + GRAPH_BYTES


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
    return [Path(path), *external_data_files(path)]


def external_data_path(out: str | os.PathLike) -> Path:
    """The side file ``save_model`` writes beside ``out`` for weights kept outside it."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def save_model(model, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *,
               external_data: bool | None = None, limit: int | None = None) -> list[Path]:
    """Write ``model`` (proto or onnx_ir), atomically: one self-contained file, or, when the
    model would exceed ``limit`` bytes (default ``EXTERNAL_DATA_LIMIT``, the 2 GB protobuf limit)
    or ``external_data`` is True, ``out`` plus its weights in ``out.data`` beside it (both
    written to temp names and renamed, the side file first). Returns the files written (reading
    them back to list them would parse the whole model).

    ``inputs`` are the paths the model was read from; writing over one of them (or over one of
    their external data files) is refused.
    """
    if external_data is None:
        external_data = tensor_bytes(model) > (EXTERNAL_DATA_LIMIT if limit is None else limit)
    if external_data:
        side = external_data_path(out)
        refuse_overwrite(side, inputs)
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
        return [Path(out), side]
    data = None
    if isinstance(model, onnx.ModelProto):
        try:  # serialized once, and only here
            data = model.SerializeToString(deterministic=True)
            too_large = False
        except Exception:  # protobuf's EncodeError / ValueError above 2 GB
            too_large = True
    else:
        too_large = tensor_bytes(model) > PROTOBUF_LIMIT
    if too_large:
        raise GencompressError(f"{out}: model is above the 2 GB limit of a self-contained .onnx (keep weights in external data)")
    with atomic_path(out, inputs) as tmp:
        with open(tmp, "wb") as f:
            if data is not None:
                f.write(data)
            else:
                write_streamed(model, f)
    return [Path(out)]


def write_streamed(model, f) -> None:
    """Write an ``onnx_ir`` model to the binary file ``f`` as one self-contained ``.onnx``
    without building it whole in memory: first the model with its large initializers left out,
    then each of them as a further ``ModelProto{graph{initializer}}`` record whose raw bytes are
    written straight from the array. Protobuf merges a repeated embedded message on parsing
    (appending to repeated fields), so every reader sees one model, those initializers last."""
    import sys

    import onnx_ir as ir

    swapped = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if (tensor is not None and tensor.nbytes > SPILL_THRESHOLD and tensor.dtype.bitwidth in (8, 16, 32, 64)
                and tensor.dtype != ir.DataType.STRING and sys.byteorder == "little"):
            swapped[value.name] = tensor
            value.const_value = ir.ExternalTensor(
                "gencompress-stream", offset=0, length=tensor.nbytes, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name
            )
    try:
        header = ir.serde.serialize_model(model)
    finally:
        for name, tensor in swapped.items():
            model.graph.initializers[name].const_value = tensor
    stubs = {}
    for i in reversed(range(len(header.graph.initializer))):
        if header.graph.initializer[i].name in swapped:
            stub = onnx.TensorProto()
            stub.CopyFrom(header.graph.initializer[i])
            del stub.external_data[:]
            stub.ClearField("data_location")
            stubs[stub.name] = stub
            del header.graph.initializer[i]
    f.write(header.SerializeToString(deterministic=True))
    for name, tensor in swapped.items():
        data = memoryview(np.ascontiguousarray(tensor.numpy())).cast("B")
        head = stubs[name].SerializeToString(deterministic=True)
        raw = b"\x4a" + _encode_varint(data.nbytes)  # TensorProto.raw_data (field 9)
        tensor_len = len(head) + len(raw) + data.nbytes
        initializer = b"\x2a" + _encode_varint(tensor_len)  # GraphProto.initializer (field 5)
        f.write(b"\x3a" + _encode_varint(len(initializer) + tensor_len) + initializer + head + raw)  # ModelProto.graph (field 7)
        f.write(data)
        del data
        release(tensor)


# ---- weights out of memory: a verb's scratch folder ------------------------------------------

_SCRATCH: contextvars.ContextVar = contextvars.ContextVar("gencompress_scratch", default=None)
SPILL_THRESHOLD = 1024  # tensors above this many bytes are moved to the side file (as write_external)


def with_scratch_folder(fn):
    """Run ``fn`` with a scratch folder (``scratch_folder``), made on first use and removed with
    everything in it when ``fn`` returns or raises (Ctrl-C and SIGTERM included)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        holder: list[Path] = []
        token = _SCRATCH.set(holder)
        try:
            return fn(*args, **kwargs)
        finally:
            _SCRATCH.reset(token)
            for folder in holder:
                shutil.rmtree(folder, ignore_errors=True)

    return wrapper


def scratch_folder() -> Path | None:
    """The scratch folder of the running verb (``with_scratch_folder``); None outside one."""
    holder = _SCRATCH.get()
    if holder is None:
        return None
    if not holder:
        try:
            holder.append(Path(tempfile.mkdtemp(prefix="gencompress-scratch-")))
        except OSError as e:
            raise GencompressError(f"{tempfile.gettempdir()}: cannot make a scratch folder ({e.strerror})") from None
    return holder[0]


def spill(model, name: str) -> Path | None:
    """Move an ``onnx_ir`` model's large weights out of memory, in place: each is written to
    ``NAME.data`` in the scratch folder and replaced by a tensor that reads it back memory-mapped,
    on demand (passes read one weight at a time; an untouched weight costs no memory). The graph
    is written beside it as ``NAME``, a file onnxruntime reads (mmaps) its weights from without a
    copy in this process. Returns that path, or None outside a scratch folder (nothing moved)."""
    import onnx_ir as ir

    folder = scratch_folder()
    if folder is None:
        return None
    path = folder / name
    try:
        ir.external_data.unload_from_model(model, folder, f"{name}.data", size_threshold_bytes=SPILL_THRESHOLD, alignment=64 * 1024)
        with open(path, "wb") as f:
            f.write(ir.serde.serialize_model(model).SerializeToString())
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise GencompressError(f"{folder}: cannot move weights out of memory there ({e.strerror or os.strerror(e.errno)}; set TMPDIR to a folder with room)") from None
    return path


def external_tensors(model) -> list:
    """The memory-mapped (``ir.ExternalTensor``) initializers of an ``onnx_ir`` model, subgraphs included."""
    import onnx_ir as ir

    return [v.const_value for g in model.graphs() for v in g.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]


def inline_bytes(model) -> int:
    """Bytes of the initializers an ``onnx_ir`` model holds in memory (not memory-mapped), subgraphs included."""
    import onnx_ir as ir

    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor))


def release(tensor) -> None:
    """Unmap a memory-mapped tensor's file (its pages leave this process's memory; it maps again
    if read again); nothing for an in-memory tensor or one whose array is still referenced."""
    if hasattr(tensor, "release") and hasattr(tensor, "raw"):
        with contextlib.suppress(BufferError):
            tensor.release()


# onnx_ir graphs hold reference cycles: a dropped model's weights go only with a cyclic collection,
# which walks every object of the process (RRDB's default quantize: 2 calls, 0.08 s CPU, cProfile at load 6).
# Worth it where the weights are large; small ones are left to Python's own collections.
COLLECT_BYTES = 4 * 2**20


def collect_cycles(weight_bytes: int) -> None:
    """``gc.collect()`` when the model whose cycles it frees holds ``weight_bytes`` of weights
    (``tensor_bytes``) of at least ``COLLECT_BYTES``; else nothing."""
    if weight_bytes >= COLLECT_BYTES:
        gc.collect()


def materialize(model):
    """Read an ``onnx_ir`` model's memory-mapped weights into memory (before serializing it as one
    self-contained proto); returns the model."""
    import onnx_ir as ir

    if external_tensors(model):
        ir.external_data.load_to_model(model)
    return model


# ---- compressed sizes -------------------------------------------------------------------------

# zlib at level 9 runs at a few MB/s on float weights (minutes for a 200 MB model): above this
# size the deflated sizes are measured at level 1 (the report says which level)
DEFLATE_9_LIMIT = 32 * 2**20


def deflate_level(size: int) -> int:
    return 9 if size <= DEFLATE_9_LIMIT else 1


def deflate_size(data: bytes, level: int = 9) -> int:
    """Bytes of ``data`` compressed with zlib at ``level``."""
    return len(zlib.compress(data, level))


def deflate_files(paths, level: int = 9, chunk: int = 16 * 2**20) -> int:
    """Bytes of the files' concatenated contents compressed with zlib at ``level``, read in chunks
    (the same count as ``deflate_size`` of the whole, without holding it)."""
    compressor = zlib.compressobj(level)
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                total += len(compressor.compress(block))
    return total + len(compressor.flush())


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
