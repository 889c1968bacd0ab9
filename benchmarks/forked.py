"""One call in a forked child: the outcome a user would see, and what it cost.

Used by benchmarks/onnx_backend_graphs.py and benchmarks/hostile_fuzz.py: the parent imports
once, each call runs in a fork (a segfault, a hang or a leak stays in the child), and ends as

- ``refused``: one line of ``GencompressError`` (or a CLI result ``(2, stderr)`` with one error line),
- ``ok``: the call returned (a CLI result with exit code 0),
- ``crash``: any other exception, a multi-line message, or a child that died,
- ``hang``: over ``timeout`` seconds (the child's alarm, else SIGKILL 30 s later).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time


class Hang(BaseException):  # not an Exception: a library's `except Exception` (onnx_ir's serde) must not swallow it
    pass


def _outcome(call) -> tuple[str, str]:
    from gencompress.errors import GencompressError

    try:
        result = call()
    except GencompressError as e:
        return ("crash" if "\n" in str(e) else "refused"), str(e)[:300]
    except Hang:
        raise
    except BaseException as e:  # noqa: BLE001  (SystemExit from a user module included: a bug if it escapes)
        return "crash", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    if isinstance(result, tuple):  # (exit code, stderr) of the CLI
        code, err = result
        errors = [line for line in err.splitlines() if re.match(r"\S+( \S+)?: error: ", line)]  # "gencompress VERB: error: ..."
        one_line = len(errors) == 1 and "Traceback" not in err
        if code == 0:
            return "ok", ""
        return ("refused", errors[0][:300]) if code == 2 and one_line else ("crash", " ".join(err.split())[:300])
    return "ok", ""


def forked(call, timeout: int, *, quiet: bool = True) -> dict:
    """``call()`` in a forked child: {"outcome", "detail", "seconds", "peak_mb"} (the child's peak RSS)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        if quiet:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the verbs' output tables

        def alarm(signum, frame):
            raise Hang

        signal.signal(signal.SIGALRM, alarm)
        signal.alarm(timeout)
        started = time.perf_counter()
        try:
            outcome, detail = _outcome(call)
        except Hang:
            outcome, detail = "hang", f"over {timeout} s"
        signal.alarm(0)
        with os.fdopen(write_fd, "w") as f:
            f.write(json.dumps({"outcome": outcome, "detail": detail, "seconds": time.perf_counter() - started}))
        os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + timeout + 30  # the child's own alarm first; this if native code never returns
    status = usage = None
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        status = None
    with os.fdopen(read_fd) as f:
        text = f.read()
    if text:
        row = json.loads(text)
    elif status is None:
        row = {"outcome": "hang", "detail": f"killed after {timeout + 30} s", "seconds": None}
    else:
        row = {"outcome": "crash", "detail": f"child ended without a result (status {status})", "seconds": None}
    row["peak_mb"] = usage.ru_maxrss / 1024 if usage else None
    return row
