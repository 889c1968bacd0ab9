"""Quantize's written outputs kept on disk: a rerun of the same ``quantize`` copies the output.

The plan, kernel and calibration caches (``plan_cache``) skip the timing and the calibration on a
rerun, but loading, the rewrites and the build with its portable weight search remain (issue 25:
28% of the first run on the 47M DCGAN). An output depends only on

- the input's bytes: the model file and its external-data files, and ``calib_data``'s content,
- every option that shapes the output (mode, bits, calibration, objective, batches, threads,
  provider, ``--exclude``, ``--target-psnr``, ``external_data``, ...; ``check`` does not: the
  PSNR is measured again on a hit when asked),
- the machine kind (``plan_cache.machine_kind``: a timed plan depends on it),
- the code: gencompress's own ``.py`` sources (hashed once per process) and the versions of the
  libraries that build the model (onnx, onnx_ir, onnxscript, numpy),

so the key covers all of them, and a hit writes the stored bytes to the output path (a copy,
atomically, checked against its stored sha256 as it is copied: the user may edit the output, so
never a hard link) with the report the first run made. A rerun with a custom ``timer`` (tests)
is never cached.

Entries live in ``$GENCOMPRESS_OUTPUT_CACHE`` or the plan cache folder's ``outputs/``
(``plan_cache.cache_folder()/outputs``: moving the plan cache to an empty folder empties this one
too); ``GENCOMPRESS_OUTPUT_CACHE=off`` turns it off. The folder holds at most
``$GENCOMPRESS_OUTPUT_CACHE_MB`` (default ``DEFAULT_CAP_MB``; 0 turns it off) of outputs: the
least recently used entries are removed first. One folder per key, written as a temp folder and
renamed. A damaged or foreign entry, a full disk or an unwritable folder is a miss, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

FORMAT = 1
DEFAULT_CAP_MB = 2048  # about three int8 outputs of a 2.4 GB float model
CHUNK = 1 << 20
STALE_SECONDS = 3600  # a temp folder older than this was left by a killed run
OFF = ("off", "0", "no", "false", "none")
# options that do not shape the output: the PSNR check is measured again on a hit
NOT_SHAPING = ("in_path", "out_path", "check", "log", "timer")


class _Damaged(Exception):
    """A cache file that cannot be read or does not match its digest (not an OSError: atomic_path
    turns those into the output's write errors)."""


def cache_folder() -> Path | None:
    """Where outputs are kept; None when turned off."""
    from gencompress.verbs.plan_cache import cache_folder as plans

    value = os.environ.get("GENCOMPRESS_OUTPUT_CACHE", "").strip()
    if value.lower() in OFF or cap_bytes() == 0:
        return None
    return Path(value) if value else plans() / "outputs"


def cap_bytes() -> int:
    """The folder's size cap (``$GENCOMPRESS_OUTPUT_CACHE_MB``, default ``DEFAULT_CAP_MB``)."""
    text = os.environ.get("GENCOMPRESS_OUTPUT_CACHE_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_CAP_MB
    except ValueError:
        mb = DEFAULT_CAP_MB
    return int(max(mb, 0) * 1e6) if math.isfinite(mb) else DEFAULT_CAP_MB * 10**6


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of gencompress's own .py sources (every subpackage's folder: an editable install maps
    them from several) and of the versions of the libraries that build a model."""
    import importlib.metadata
    import importlib.util

    import gencompress

    roots = {Path(p).resolve() for p in gencompress.__path__}
    for name in ("exporter", "passes", "runtime_check", "models", "verbs", "cli", "distillation", "edge", "sweeps"):
        spec = importlib.util.find_spec(f"gencompress.{name}")  # imports only the parent package
        roots |= {Path(p).resolve() for p in (spec.submodule_search_locations or ()) if spec is not None}
    h = hashlib.sha256()
    files = sorted({f for root in roots for f in root.rglob("*.py") if "__pycache__" not in f.parts})
    for f in files:
        h.update(f"{f.parent.name}/{f.name}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    versions = {}
    for lib in ("onnx", "onnx_ir", "onnxscript", "numpy"):
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    h.update(json.dumps({"python": sys.version_info[:2], **versions}, sort_keys=True).encode())
    return h.hexdigest()


def output_key(in_path, options: dict) -> str | None:
    """The key of ``quantize(in_path, ..., **options)``'s output (the module docstring); None when an
    input file cannot be read (the run itself then says why)."""
    from gencompress.onnx_io import EXTERNAL_DATA_LIMIT, file_sha256, keeping_initializer_inputs, model_files
    from gencompress.verbs.plan_cache import digest_value, machine_kind

    shaping = {k: v for k, v in options.items() if k not in NOT_SHAPING}
    calib_data = shaping.pop("calib_data", None)
    h = hashlib.sha256()
    try:
        paths = model_files(in_path)
        calib = Path(calib_data) if isinstance(calib_data, (str, os.PathLike)) and os.path.exists(calib_data) else None
        if not all(_regular(p) for p in paths) or (calib is not None and not (calib.is_dir() or _regular(calib))):
            return None  # a FIFO or a device would block the hash: the run refuses it
        files = [(f.name, f.stat().st_size, file_sha256(f)) for f in paths]
        if calib_data is not None:
            digest_value(calib_data, h)  # a folder of images by content; a dict of arrays by bytes
    except (OSError, ValueError):
        return None
    settings = {"format": FORMAT, "code": code_digest(), "machine": machine_kind(options.get("threads")), "files": files,
                "options": shaping, "keep_initializer_inputs": keeping_initializer_inputs(), "external_data_limit": EXTERNAL_DATA_LIMIT}
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _remove(entry: Path) -> None:
    """Remove a key's entry (a folder, or whatever else holds its name); errors ignored."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif os.path.lexists(entry):
            entry.unlink()
    except OSError:
        pass


def _regular(path: Path) -> bool:
    import stat

    return stat.S_ISREG(path.stat().st_mode)


class OutputCache:
    """The outputs folder; ``reuse`` and ``store`` never raise for the cache's own reasons."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key

    @classmethod
    def of(cls, in_path, options: dict) -> "OutputCache | None":
        """The cache of this run, or None: turned off, a custom timer, or an input that cannot be read."""
        folder = cache_folder()
        if folder is None or options.get("timer") is not None:
            return None
        key = output_key(in_path, options)
        return cls(folder, key) if key else None

    @property
    def entry(self) -> Path:
        return self.folder / self.key

    def _load(self) -> dict | None:
        try:
            meta = json.loads((self.entry / "entry.json").read_text(encoding="utf-8"))
            ok = meta["format"] == FORMAT and meta["key"] == self.key and isinstance(meta["report"], dict)
            files = [(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in meta["files"]]
            side, lifted = meta["side"], [str(n) for n in meta["lifted"]]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not ok or [name for name, _, _ in files] not in (["model.onnx"], ["model.onnx", "model.data"]) or (side is None) != (len(files) == 1):
            return None  # a foreign entry
        return {**meta, "files": files, "lifted": lifted}

    def reuse(self, out_path, sources, log) -> dict | None:
        """Write the stored output to ``out_path`` (and its side file) and return the first run's
        report marked ``cached``; None on a miss (a damaged entry is removed)."""
        from gencompress.onnx_io import atomic_path, external_data_path, note_lifted

        meta = self._load()
        if meta is None:
            _remove(self.entry)  # a damaged entry of this key: this run stores it again
            return None
        if meta["side"] not in (None, external_data_path(out_path).name):
            return None  # the model names its side file: another output name is a miss
        targets = [Path(out_path), *([external_data_path(out_path)] if meta["side"] else [])]
        try:
            for (name, size, digest), target in reversed(list(zip(meta["files"], targets))):  # the side file first, as save_model
                with atomic_path(target, sources) as tmp:
                    _copy(self.entry / name, tmp, size, digest)
        except _Damaged:
            _remove(self.entry)
            return None
        try:
            os.utime(self.entry / "entry.json")  # recently used: evicted last
        except OSError:
            pass
        note_lifted(meta["lifted"])  # the verb's note on IR-3 initializer inputs, as reading the model would say it
        report = meta["report"]
        report["cached"] = {"entry": str(self.entry), "created": meta.get("created"), "first_run_seconds": report.get("seconds")}
        log(f"output reused from {self.entry} (written {meta.get('created')}: the same input bytes, options, machine kind and "
            "gencompress code); GENCOMPRESS_OUTPUT_CACHE=off builds it again")
        return report

    def store(self, out_path, report: dict) -> Path | None:
        """Keep a copy of the written output and its report; None when not kept (too large for the
        cap, the disk nearly full, the folder unwritable: never an error)."""
        from gencompress.onnx_io import lifted_inputs, model_files
        from gencompress.output import json_default

        tmp = None
        try:
            files = model_files(out_path)
            size = sum(f.stat().st_size for f in files)
            if len(files) > 2 or size > cap_bytes():
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.folder).free < 2 * size + 2**30:  # a cache never fills the disk
                return None
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.folder))
            stored = [{"name": name, "size": f.stat().st_size, "sha256": _copy(f, tmp / name)} for f, name in zip(files, ("model.onnx", "model.data"))]
            meta = {"format": FORMAT, "key": self.key, "files": stored, "side": files[1].name if len(files) > 1 else None,
                    "lifted": lifted_inputs(), "report": report, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / "entry.json").write_text(json.dumps(meta, default=json_default), encoding="utf-8")
            os.rename(tmp, self.entry)  # atomic; an entry another run stored meanwhile stays (ENOTEMPTY)
            tmp = None
        except (OSError, ValueError, TypeError, _Damaged):
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        evict(self.folder, cap_bytes())
        return self.entry


def finish(report: dict, in_path, out_path, *, evaluator, started: float, log) -> dict:
    """A reused output's report: this run's paths and time, and its PSNR measured again when
    asked (``evaluator``: a function making the run's ``Evaluator``, or None for --no-check: a
    measurement, not part of the output)."""
    from gencompress.verbs.quantizers import db

    report.update(input=str(in_path), output=str(out_path))
    if evaluator is not None:
        evaluation = evaluator()
        report.update(psnr_db=db(evaluation.psnr(str(out_path))), evaluation=evaluation.describe())
    else:
        report.update(psnr_db=None, evaluation={"skipped": "--no-check"})
    for warning in report.get("warnings") or ():
        log(f"warning: {warning}")
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _copy(src: Path, dst: Path, size: int | None = None, digest: str | None = None) -> str:
    """Copy ``src`` to ``dst`` a MiB at a time; returns its sha256. With ``size``/``digest``: a source
    that differs is ``_Damaged`` (reading errors too; writing errors are OSError)."""
    h = hashlib.sha256()
    try:
        if not _regular(src):  # a FIFO would block the read
            raise _Damaged(f"{src}: not a regular file")
        source = open(src, "rb")
    except OSError as e:
        raise _Damaged(str(e)) from None
    with source, open(dst, "wb") as out:
        while True:
            try:
                block = source.read(CHUNK)
            except OSError as e:
                raise _Damaged(str(e)) from None
            if not block:
                break
            h.update(block)
            out.write(block)
        if (size is not None and out.tell() != size) or (digest is not None and h.hexdigest() != digest):
            raise _Damaged(f"{src}: does not match its stored digest")
    return h.hexdigest()


def evict(folder: Path, cap: int) -> None:
    """Remove the least recently used entries (by ``entry.json``'s mtime) until the folder holds at
    most ``cap`` bytes, and temp folders a killed run left; errors ignored."""
    entries = []
    now = time.time()
    try:
        children = list(folder.iterdir())
    except OSError:
        return
    for child in children:  # only what this module names: a key's folder, or a temp folder (the folder may be a user's)
        try:
            ours = len(child.name) == 64 and all(c in "0123456789abcdef" for c in child.name)
            if not ours and not child.name.startswith(".tmp-"):
                continue
            if not ours or not (child / "entry.json").exists():
                if child.is_dir() and now - child.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(child, ignore_errors=True)  # left by a killed run, or damaged
                continue
            used = (child / "entry.json").stat().st_mtime
            entries.append((used, sum(f.stat().st_size for f in child.iterdir()), child))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, child in sorted(entries, key=lambda e: e[0]):
        if total <= cap:
            break
        shutil.rmtree(child, ignore_errors=True)
        total -= size
