"""Open a bundle's web page in headless Chromium and read back what it computed.

Used by the tests and ``benchmarks/ship.py``. ``--dump-dom`` cannot wait for the page's
asynchronous work in real time (``--virtual-time-budget`` freezes ``performance.now()``, so the
page would time every run at 0 ms), so Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``): open the page, wait until ``<pre id="result">`` is filled, read it,
take a screenshot.

``serve(folder, isolate=True)`` sends the COOP/COEP headers that make a page cross-origin isolated
(what the README's ``serve`` helper does); without them the bundle's service worker adds them.
``run_page(..., webgpu=True)`` starts Chromium with the flags that give WebGPU a software adapter
(SwiftShader's Vulkan) on a machine without a GPU.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import select
import subprocess
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
         # a page opened over the protocol counts as a background tab: keep its timers and priority unthrottled
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"]
# WebGPU without a GPU: SwiftShader's Vulkan as the adapter (--disable-gpu would leave none)
WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader", "--enable-features=Vulkan"]
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
WAIT_FOR_RESULT = """new Promise((resolve) => {
  const poll = () => { const e = document.getElementById('result');
    if (location.href === %s && e && e.textContent) resolve(e.textContent); else setTimeout(poll, 25); };
  poll(); })"""


@contextlib.contextmanager
def serve(folder: Path, isolate: bool = False):
    """A static HTTP server for ``folder`` on 127.0.0.1 (a free port) in a thread; yields its base URL.
    ``isolate``: send COOP/COEP with every response (the page is then cross-origin isolated at once)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".wasm": "application/wasm"}

        def log_message(self, *args):
            pass

        def end_headers(self):
            for key, value in (ISOLATION_HEADERS.items() if isolate else ()):
                self.send_header(key, value)
            super().end_headers()

        def handle(self):
            with contextlib.suppress(ConnectionError):  # Chromium closing early is not an error here
                super().handle()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Pipe:
    """DevTools protocol over Chromium's fds 3 (commands in) and 4 (replies out), NUL-separated JSON."""

    def __init__(self, to_chrome: int, from_chrome: int):
        self.to_chrome, self.from_chrome = to_chrome, from_chrome
        self.buffer = b""
        self.next_id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout:.0f} s")
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited during {method}")
            self.buffer += chunk


def run_page(url: str, profile: Path, *, chromium: str = CHROMIUM, timeout: float = 120.0, screenshot: Path | None = None,
             clip: str | None = "#grid", size=(900, 700), webgpu: bool = False) -> dict:
    """Open ``url``, wait for ``<pre id="result">``, return its JSON; optionally save a PNG screenshot
    (of the element ``clip`` selects, the page's sample grid by default; None: the whole window).
    Also returned: ``verify_line`` and its ``verify_class``, the page's visible verdict."""
    commands_r, commands_w = os.pipe()  # we write; Chromium reads it as fd 3
    replies_r, replies_w = os.pipe()  # Chromium writes it as fd 4; we read

    def as_fds_3_and_4():
        os.dup2(commands_r, 3)
        os.dup2(replies_w, 4)

    flags = [f for f in FLAGS if f != "--disable-gpu"] + WEBGPU_FLAGS if webgpu else FLAGS
    cmd = [chromium, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4)
    os.close(commands_r)
    os.close(replies_w)
    try:
        pipe = _Pipe(commands_w, replies_r)
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        pipe.call("Page.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        wait = {"expression": WAIT_FOR_RESULT % json.dumps(url), "awaitPromise": True, "returnByValue": True}
        for attempt in range(5):  # evaluated in about:blank before the page commits, or before the page reloads
            # itself through its service worker (coi-sw.js): the context is destroyed, ask again
            try:
                reply = pipe.call("Runtime.evaluate", wait, session=session, timeout=timeout)
            except RuntimeError as e:
                if not any(k in str(e).lower() for k in ("context", "navigated")):
                    raise
                reply = {"exceptionDetails": str(e)}
            if "exceptionDetails" not in reply:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"could not read the page's result: {reply['exceptionDetails']}")
        result = json.loads(reply["result"]["value"])
        line = pipe.call("Runtime.evaluate", {"expression": "(e => e ? [e.textContent, e.className] : null)(document.getElementById('verify'))",
                                              "returnByValue": True}, session=session)["result"].get("value")
        if line:
            result["verify_line"], result["verify_class"] = line
        if screenshot is not None:
            params = {"format": "png"}
            if clip:
                rect = pipe.call("Runtime.evaluate", {"expression": f"JSON.stringify(document.querySelector({json.dumps(clip)}).getBoundingClientRect())",
                                                      "returnByValue": True}, session=session)["result"]["value"]
                r = json.loads(rect)
                params["clip"] = {"x": r["x"], "y": r["y"], "width": r["width"], "height": r["height"], "scale": 1}
            png = pipe.call("Page.captureScreenshot", params, session=session)["data"]
            Path(screenshot).write_bytes(base64.b64decode(png))
        with contextlib.suppress(Exception):
            pipe.call("Browser.close", timeout=10)
        return result
    finally:
        os.close(commands_w)
        os.close(replies_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
