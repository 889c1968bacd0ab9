"""The web target's runtime: onnxruntime-web at a pinned version, fetched once with npm, then cached.

``npm pack`` downloads the package tarball (npm checks its integrity and keeps its own cache); only
the files the page needs are kept, in ``$GENCOMPRESS_CACHE/onnxruntime-web/<version>/`` (default
``~/.cache/gencompress``), so a second build needs no registry. Each backend the page can use is one
build of the package (``BACKEND_FILES``: its script, the Emscripten module it imports, the .wasm),
and a bundle carries only the builds of the backends it ships. The .wasm is kept gzip-compressed
(about a quarter of its size): the page inflates it with the browser's ``DecompressionStream`` and
hands it to onnxruntime-web as ``env.wasm.wasmBinary``, so any static server will do.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gencompress.cache import cache_root
from gencompress.errors import GencompressError, short
from gencompress.onnx_io import file_sha256

ORT_WEB_VERSION = "1.30.0"
# What each backend loads (dist/ of the package): ort.wasm.min.js imports the plain multi-threaded SIMD
# module; ort.webgpu.min.js the asyncify one, which holds the WebGPU execution provider and the wasm
# kernels as its fallback. (ort.min.js / ort-wasm-simd-threaded.jsep.* is the older JSEP WebGPU.)
BACKEND_FILES = {
    "wasm": ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
BACKENDS = tuple(BACKEND_FILES)
PAGE_FILES = tuple(f for files in BACKEND_FILES.values() for f in files)
# cached (and shipped) as FILE.gz for FILE.wasm; package.json: version and MIT licence of the vendored files
KEPT_FILES = (*(f + ".gz" if f.endswith(".wasm") else f for f in PAGE_FILES), "package.json")
NPM_TIMEOUT_S = 600


class WebRuntimeUnavailable(GencompressError):
    """onnxruntime-web could not be fetched (no npm, registry unreachable): the web target alone fails."""


def cache_dir(version: str = ORT_WEB_VERSION) -> Path:
    return cache_root() / "onnxruntime-web" / checked_version(version)


def checked_version(version) -> str:
    """An npm version of onnxruntime-web (``1.30.0``, ``1.23.0-dev.20250101-abc``): it names a cache
    folder and an npm package spec, so nothing else (``../..``, a URL, a path) gets that far."""
    if not isinstance(version, str) or not re.fullmatch(r"\d{1,4}\.\d{1,4}\.\d{1,4}(-[0-9A-Za-z][0-9A-Za-z.-]{0,63})?", version):
        raise GencompressError(f"--web-version {short(version)}: expected an onnxruntime-web version such as {ORT_WEB_VERSION}")
    return version


def runtime_files(version: str = ORT_WEB_VERSION, log=None) -> Path:
    """The cache folder holding KEPT_FILES of onnxruntime-web ``version``; fetched with npm if absent."""
    folder = cache_dir(version)
    if _complete(folder):
        return folder
    (log or (lambda m: None))(f"fetching onnxruntime-web@{version} with npm into {folder} ...")
    _fetch(version, folder)
    return folder


def _complete(folder: Path) -> bool:
    """All kept files present with the sizes and digests recorded when they were fetched."""
    index = folder / "files.json"
    if not index.is_file():
        return False
    try:
        recorded = json.loads(index.read_text())
        return all(file_sha256(folder / name) == recorded[name] for name in KEPT_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _fix_hint(version: str) -> str:
    return (f"fix: make the npm registry reachable (npm config get registry), or copy {cache_dir(version)} from a machine "
            f"that built the web target (GENCOMPRESS_CACHE sets the cache folder), or leave web out with --target python,ort")


def _fetch(version: str, folder: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise WebRuntimeUnavailable(f"web target: npm is not installed, so onnxruntime-web@{version} cannot be fetched; "
                                    f"install Node.js/npm; {_fix_hint(version)}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{version}.fetch-", dir=folder.parent))
    except OSError as e:
        raise WebRuntimeUnavailable(f"web target: cannot create the cache folder {folder.parent} ({e.strerror}); "
                                    f"set GENCOMPRESS_CACHE to a writable folder") from None
    try:
        cmd = [npm, "pack", f"onnxruntime-web@{version}", "--pack-destination", str(work), "--json", "--prefer-offline",
               "--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=4000", "--loglevel=error"]
        try:
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise WebRuntimeUnavailable(f"web target: npm pack onnxruntime-web@{version} took over {NPM_TIMEOUT_S} s; "
                                        f"{_fix_hint(version)}") from None
        tarballs = sorted(work.glob("onnxruntime-web-*.tgz"))
        if r.returncode != 0 or not tarballs:
            raise WebRuntimeUnavailable(f"web target: npm could not fetch onnxruntime-web@{version} "
                                        f"({_npm_reason(r.stderr or r.stdout)}); {_fix_hint(version)}")
        staged = work / "files"
        staged.mkdir()
        _extract(tarballs[0], staged, version)
        (staged / "files.json").write_text(json.dumps({n: file_sha256(staged / n) for n in KEPT_FILES}, indent=1))
        if folder.exists():  # an incomplete or corrupted earlier copy
            shutil.rmtree(folder)
        staged.replace(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _npm_reason(text: str) -> str:
    """npm's error code and first message line, e.g. ``ECONNREFUSED: FetchError: request to ... failed``."""
    lines = [ln.removeprefix("npm error").removeprefix("npm ERR!").strip() for ln in text.splitlines()]
    code = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("code ") and " " in ln), None)
    message = next((ln for ln in lines if ln and not ln.startswith(("code ", "syscall ", "errno ", "at "))), "")
    reason = f"{code}: {message}" if code and code not in message[:len(code) + 2] else message or code or "no message"
    return " ".join(reason.split())[:200]


def _extract(tarball: Path, dest: Path, version: str) -> None:
    wanted = {f"package/dist/{n}": n for n in PAGE_FILES} | {"package/package.json": "package.json"}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            name = wanted.pop(member.name, None)
            if name is None or not member.isfile():
                continue
            with tar.extractfile(member) as src:
                if name.endswith(".wasm"):  # mtime 0: the same bytes on every machine
                    (dest / f"{name}.gz").write_bytes(gzip.compress(src.read(), 9, mtime=0))
                else:
                    with open(dest / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    if wanted:
        raise WebRuntimeUnavailable(f"web target: the onnxruntime-web@{version} package lacks {', '.join(sorted(wanted))}; "
                                    f"this gencompress expects the wasm and webgpu builds' files in dist/")


def parse_backends(text) -> tuple[str, ...]:
    """``"wasm,webgpu"`` -> ("wasm", "webgpu"), in the given order (the first is the page's default)."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in BACKENDS]
    if unknown or not items or len(set(items)) != len(items):
        raise GencompressError(f"--web-backends {','.join(items) or text!r}: choose one or both of {','.join(BACKENDS)} (comma-separated, no repeats)")
    return tuple(items)


def shipped_name(name: str) -> str:
    return {"package.json": "onnxruntime-web.package.json"}.get(name, f"{name}.gz" if name.endswith(".wasm") else name)


def vendor(dest: Path, backends=("wasm",), version: str = ORT_WEB_VERSION, log=None) -> list[str]:
    """Copy the onnxruntime-web files of ``backends`` into ``dest``; returns their names."""
    src = runtime_files(version, log)
    dest.mkdir(parents=True, exist_ok=True)
    names = [shipped_name(n) for b in backends for n in BACKEND_FILES[b]] + [shipped_name("package.json")]
    for name in names:
        shutil.copyfile(src / ("package.json" if name == "onnxruntime-web.package.json" else name), dest / name)
    return names
