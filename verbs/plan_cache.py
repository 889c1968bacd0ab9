"""Measured int8 plans kept on disk, so a second ``quantize`` of the same model does not time it again.

A plan is the outcome of timing (``int8_plan.plan_layers``): which layers compute in int8 and
the measurements behind it. It holds only for the model, the options and the kind of machine
it was timed on, so the key covers all of them:

- the prepared float model's content (graph, weights, metadata; after opset upgrade and
  ``prepare``, before the rewrites),
- the objective, ``--exclude``, the rewrite setting and the static options (calibration method,
  size, seed, data file content, activation type, weight granularity, int8 kernels),
- what was timed: provider, threads, batch sizes,
- the machine kind: the int8 kernel path (``gencompress.isa.host_isa``), onnxruntime's version,
  and this module's ``FORMAT`` and gencompress's version (a plan from other code is not reused).

Reusing a plan skips the timing only; the model is built from it as on the first run, so the
output is byte-identical. Beside the plans, the calibration's ranges (``cached_ranges``): keyed by
the calibrated model's content, the calibration options and rows, and the machine kind (float
results, and so ranges, may differ in the last bits from one ISA or onnxruntime to another). Entries live in ``$GENCOMPRESS_PLAN_CACHE`` or the cache folder's
``plans/`` (``gencompress/cache.py``; default ``~/.cache/gencompress/plans``), one small JSON
file per key, written to a temp file in that folder then renamed. The cache is an optimisation:
a folder that cannot be written or an entry that cannot be read or does not fit the model is a
miss, never an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

FORMAT = 4  # bump when what a plan means changes (2: groups decided from isolated layer timings; 3: kernel keys of the float layer; 4: pixel-block weights stored compactly, so the sizes balanced compares changed)


def cache_folder() -> Path:
    from gencompress.cache import cache_root

    return Path(os.environ.get("GENCOMPRESS_PLAN_CACHE") or cache_root() / "plans")


def machine_kind(threads: int | None = None) -> dict:
    """What a timing depends on besides the model: int8 kernel path, onnxruntime version, threads."""
    import onnxruntime

    from gencompress.isa import host_isa

    return {"isa": host_isa(), "onnxruntime": onnxruntime.__version__, "threads": threads}


def model_digest(proto: onnx.ModelProto) -> str:
    """sha256 of a model's content, one tensor or node serialized at a time (no whole-model copy)."""
    h = hashlib.sha256()
    graph = proto.graph
    for part in (*graph.initializer, *graph.sparse_initializer, *graph.node, *graph.input, *graph.output, *proto.opset_import,
                 *proto.metadata_props, *proto.functions):
        h.update(type(part).__name__.encode())
        data = part.SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def digest_value(value, h) -> None:
    """Feed an option's value to ``h``: file and folder paths by content, arrays by bytes."""
    if isinstance(value, dict):
        for k in sorted(value):
            h.update(repr(k).encode())
            digest_value(value[k], h)
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (str, os.PathLike)) and os.path.exists(value):
        path = Path(value)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else "").encode())
            with open(f, "rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    h.update(chunk)
    else:
        h.update(repr(value).encode())


def _options_dict(options) -> dict:
    """Static options as plain values (a dataclass or a keyword dict; callables such as ``log`` left out)."""
    if dataclasses.is_dataclass(options):
        options = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return {k: v for k, v in dict(options).items() if not callable(v)}


def plan_key(prepared: onnx.ModelProto, *, objective: str, rewrite: bool, exclude, static_options, timed: dict) -> str:
    """The cache key of a plan (see the module docstring); ``timed``: provider, threads, batches."""
    import gencompress

    h = hashlib.sha256()
    h.update(model_digest(prepared).encode())
    settings = {"format": FORMAT, "gencompress": gencompress.__version__, "objective": objective, "rewrite": bool(rewrite),
                "exclude": sorted(exclude), "static": _options_dict(static_options),
                "timed": {**timed, "batches": sorted(int(b) for b in timed["batches"])}, **machine_kind(timed["threads"])}
    digest_value(settings, h)
    return h.hexdigest()


class PlanCache:
    """Plans on disk by key. ``load`` returns the stored dict or None; ``store`` never raises."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else cache_folder()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == key else None

    def store(self, key: str, entry: dict) -> Path | None:
        """Write ``entry`` atomically; None when it cannot be written."""
        return self.path(key) if _write_json(self.path(key), {**entry, "format": FORMAT, "key": key}) else None


def _write_json(path: Path, value) -> bool:
    """``value`` as JSON at ``path``, atomically (temp file in the folder, then rename); False when it
    cannot be written (a cache is an optimisation: never an error)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, sort_keys=True)
        os.replace(tmp, path)
        return True
    except (OSError, TypeError, ValueError):
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


# ---- kernel timings: one layer in isolation, float against int8 -----------------------------------


def structure_digest(*protos: onnx.ModelProto) -> str:
    """sha256 of models' structure without weight values: ops, attributes, how tensors connect (names
    replaced by their order of first use), input types, and each initializer's dtype and dims. Two
    layers of different models with the same op, shapes, attributes and rewrite form get the same
    digest (their scales and weight values differ; the kernels they run do not)."""
    h = hashlib.sha256()
    for proto in protos:
        graph = proto.graph
        ids: dict = {}
        ref = lambda n: ids.setdefault(n, len(ids)) if n else -1  # noqa: E731
        inits = {t.name: t for t in graph.initializer}
        for vi in graph.input:
            h.update(repr(("input", ref(vi.name), vi.type.SerializeToString(deterministic=True))).encode())
        for node in graph.node:
            ins = []
            for n in node.input:
                if n in inits and n not in ids:
                    ins.append(("init", inits[n].data_type, tuple(inits[n].dims)))
                ins.append(ref(n))
            attrs = sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute)
            h.update(repr((node.op_type, node.domain, ins, [ref(o) for o in node.output], attrs)).encode())
        h.update(repr(("outputs", [ref(o.name) for o in graph.output], sorted((o.domain, o.version) for o in proto.opset_import))).encode())
    return h.hexdigest()


class KernelCache:
    """Isolated layer timings of one machine kind (``machine_kind``, provider, threads), one JSON file
    of ``{key: {"gain": float p50 / int8 p50, "float_s": ..., "int8_s": ...}}`` per kind; keys from ``structure_digest`` and the
    batch size. Like ``PlanCache``, a miss or an unwritable folder is never an error."""

    def __init__(self, settings: dict, folder: str | os.PathLike | None = None):
        h = hashlib.sha256()
        digest_value({"format": FORMAT, **machine_kind(settings["threads"]), "provider": settings["provider"]}, h)
        self.path = (Path(folder) if folder is not None else cache_folder()) / f"kernels-{h.hexdigest()[:20]}.json"
        self._entries: dict | None = None

    def entries(self) -> dict:
        if self._entries is None:
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                loaded = {}
            self._entries = loaded if isinstance(loaded, dict) else {}
        return self._entries

    def get(self, key: str) -> dict | None:
        entry = self.entries().get(key)
        try:
            return entry if min(float(entry["gain"]), float(entry["float_s"]), float(entry["int8_s"])) > 0 else None
        except (TypeError, KeyError, ValueError):
            return None

    def put(self, entries: dict) -> None:
        """Store ``{key: entry}`` (merged with what another run may have written since), atomically, in one
        write (a layer's batch sizes together); errors ignored."""
        self._entries = None
        merged = {**self.entries(), **entries}
        self._entries = merged
        _write_json(self.path, merged)


# ---- calibration ranges -----------------------------------------------------------------------------


CALIBRATION_FIELDS = ("calib", "calib_size", "calib_data", "percentile", "activations", "seed")  # what a range depends on


def calibration_key(model, static, feeds=None, form=None) -> str:
    """The key of a calibration's ranges: the calibrated model's content (a proto: ``model_digest``;
    a path: its files' bytes, with ``form`` saying what the run made of it before calibrating), the
    options that decide its rows and ranges, the rows themselves when given, and the machine kind."""
    import gencompress

    from gencompress.onnx_io import model_files
    from gencompress.runtime_check import calibration

    h = hashlib.sha256()
    if isinstance(model, onnx.ModelProto):
        h.update(model_digest(model).encode())
    else:  # read from disk in chunks: a memory-mapped model is not paged in
        for f in model_files(model):
            digest_value(str(f), h)
    options = _options_dict(static)
    # no --calib-size: the draws are the model's default count, set by the calibration budget (a large model's is smaller)
    budget = None if options.get("calib_size") is not None else (calibration.DEFAULT_CALIB_SIZE, calibration.CALIB_MACS, calibration.MIN_CALIB_SIZE)
    digest_value({"format": FORMAT, "what": "calibration", "form": repr(form), "gencompress": gencompress.__version__, **machine_kind(),
                   "options": {k: options.get(k) for k in CALIBRATION_FIELDS}, "feeds": dict(feeds) if feeds is not None else None,
                   "calib_budget": budget}, h)
    return h.hexdigest()


def cached_ranges(model, static, compute, *, feeds=None, form=None, log=lambda m: None, folder=None) -> tuple[dict, dict]:
    """``compute()`` (``quantizers.calibrated_ranges`` of ``model``), or the ranges a run before kept
    for the same key (``calibration_key``), with their types (a range is a Python or a numpy float:
    the scales computed from it are the same to the bit). A miss or an unwritable folder: computed."""
    key = calibration_key(model, static, feeds, form)
    cache = PlanCache(folder)
    path = cache.folder / "calibration" / f"{key}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("format") == FORMAT and entry.get("key") == key:
            ranges = {name: tuple(_typed(v, t) for v, t in zip(values, types)) for name, (values, types) in entry["ranges"].items()}
            log(f"calibration ranges reused from {path}")
            return ranges, dict(entry["calibration"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    ranges, calibration = compute()
    _write_json(path, {"format": FORMAT, "key": key, "calibration": calibration,
                       "ranges": {name: [[float(v) for v in r], [type(v).__name__ for v in r]] for name, r in ranges.items()}})
    return ranges, calibration


RANGE_TYPES = {"float": float, "float64": np.float64, "float32": np.float32}


def _typed(value: float, type_name: str):
    """A stored range value as the type it was computed in (float, or a numpy float type); another
    type name: a damaged entry (KeyError, a miss)."""
    return RANGE_TYPES[type_name](value)
