"""A failed export in one line, its full text in a log file.

The exporters' own errors run to hundreds of lines (torch's TorchScript exporter prints the
whole IR graph from C++, straight to file descriptors 1 and 2). The user gets one line naming
each attempt's reason and the log file; the log holds the tracebacks and everything printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback
from pathlib import Path


class Attempts:
    """The output and tracebacks of each export attempt, for the log file."""

    def __init__(self):
        self.sections: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def capture(self, label: str):
        """Run the block with fds 1 and 2 sent to a temp file (the C++ side prints there too)."""
        with tempfile.TemporaryFile() as tmp:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            saved = [os.dup(1), os.dup(2)]
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            except BaseException:
                self.sections.append((f"{label}: traceback", traceback.format_exc()))
                raise
            finally:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                tmp.seek(0)
                printed = tmp.read().decode("utf-8", errors="replace")
                if printed.strip():
                    self.sections.append((f"{label}: printed", printed))

    def write(self, out) -> Path | None:
        """Write the log beside ``out`` (``OUT.export-error.log``); None if it cannot be written."""
        path = Path(f"{out}.export-error.log")
        text = "".join(f"==== {title} ====\n{body.rstrip()}\n\n" for title, body in self.sections)
        try:
            path.write_text(text or "(nothing recorded)\n")
        except OSError:
            return None
        return path


def reason(error: BaseException) -> str:
    """``Type: first line`` of an export error; for a chained error (the dynamo exporter's) the op
    it failed on and the innermost cause, which say more than the outer "failed to convert"."""
    import re

    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    text = f"{type(error).__name__}: {first_line(error)}"
    target = next((m.group(1) for e in chain if (m := re.search(r"target=([\w.]+)", str(e)))), None)
    if target:
        text = f"{type(error).__name__} in {target}"
    if len(chain) > 1:
        text += f" ({type(chain[-1]).__name__}: {first_line(chain[-1], 100)})"
    return text


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first meaningful line of an exception message, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0].split(" [Caused by")[0] if lines else type(error).__name__
    text = text.replace("\x1b[96m", "").replace("\x1b[0m", "")
    return text if len(text) <= limit else text[: limit - 3] + "..."
