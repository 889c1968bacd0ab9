"""The one folder gencompress keeps caches in: ``$GENCOMPRESS_CACHE``, else
``$XDG_CACHE_HOME/gencompress``, else ``~/.cache/gencompress``. onnxruntime-web's files live in
``onnxruntime-web/``, timed int8 plans in ``plans/`` (``$GENCOMPRESS_PLAN_CACHE`` moves only those)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("GENCOMPRESS_CACHE"):
        return Path(os.environ["GENCOMPRESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gencompress"
