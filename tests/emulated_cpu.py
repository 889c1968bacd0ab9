"""Run the test suite's onnxruntime on an emulated CPU: ``GENCOMPRESS_TEST_CPU=Haswell pytest ...``.

Why: onnxruntime's int8 kernels differ by CPU (x86 without VNNI adds u8×s8 product pairs in a
saturating int16), so a suite that passes on a VNNI host proves nothing for an AVX2-only one.
Running the whole suite under ``qemu-x86_64 -cpu Haswell`` does not answer it either: numpy and
torch under qemu's TCG compute other values (seen here: other models built, segfaults), so the
models themselves would differ from any real machine's.

What this does instead: every ``onnxruntime.InferenceSession`` made in the pytest process (by the
tests and by the tool they call, the in-process CLI included) is served by one onnxruntime
process running under ``qemu-x86_64 -cpu <CPU>`` — the kernels, CPUID dispatch included, that
such a CPU runs — while numpy, torch and the tool stay native. ``gencompress.isa`` reports the
emulated CPU's int8 path, so thresholds that depend on the kernel path use the emulated one.
Not covered: onnxruntime in other processes (subprocess CLI runs, Ray workers, a bundle's
sample.py in its own venv, the browser).

Loaded from ``tests/conftest.py`` when the variable is set; the server side is ``python
tests/emulated_cpu.py --serve`` (started by the client, under qemu).
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import types

ENV = "GENCOMPRESS_TEST_CPU"
# /proc/cpuinfo flags gencompress.isa reads, per emulated CPU model (qemu's names)
FLAGS = {"Haswell": {"sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"}}
# SessionOptions attributes carried to the emulated session (the rest are onnxruntime's defaults)
OPTION_ATTRS = ("graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads", "execution_mode", "execution_order",
                "enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse", "log_severity_level", "optimized_model_filepath",
                "enable_profiling", "profile_file_prefix", "use_deterministic_compute")


def _send(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the emulated onnxruntime process is gone")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


# ---- the server: onnxruntime under qemu ---------------------------------------------------------


def _options_of(ort, settings: dict):
    opts = ort.SessionOptions()
    for name, value in settings["attrs"].items():
        if name == "graph_optimization_level":
            value = ort.GraphOptimizationLevel(value)
        elif name == "execution_mode":
            value = ort.ExecutionMode(value)
        elif name == "execution_order":
            value = ort.ExecutionOrder(value)
        setattr(opts, name, value)
    for key, value in settings["config"].items():
        opts.add_session_config_entry(key, value)
    return opts


def _arg(a) -> tuple:
    return (a.name, a.type, list(a.shape) if a.shape is not None else None)


def serve() -> None:
    import onnxruntime as ort

    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    sessions = {}
    while True:
        try:
            op, sid, *args = _receive(inbox)
        except EOFError:
            return
        try:
            if op == "open":
                model, settings, providers = args
                s = ort.InferenceSession(model, _options_of(ort, settings), providers=providers)
                sessions[sid] = s
                meta = s.get_modelmeta()
                reply = {"inputs": [_arg(a) for a in s.get_inputs()], "outputs": [_arg(a) for a in s.get_outputs()],
                         "providers": s.get_providers(),
                         "meta": {k: getattr(meta, k) for k in ("producer_name", "graph_name", "domain", "description", "graph_description",
                                                                "version", "custom_metadata_map")}}
            elif op == "run":
                names, feeds = args
                reply = sessions[sid].run(names, feeds)
            elif op == "end_profiling":
                reply = sessions[sid].end_profiling()
            elif op == "close":
                sessions.pop(sid, None)
                reply = None
            else:
                raise ValueError(f"unknown request {op!r}")
            _send(outbox, ("ok", reply))
        except Exception as e:  # noqa: BLE001 - handed to the client, raised there
            _send(outbox, ("error", (type(e).__name__, str(e))))


# ---- the client: stands in for onnxruntime.InferenceSession in the pytest process ---------------


class _Server:
    def __init__(self, cpu: str):
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise RuntimeError(f"{ENV}={cpu}: qemu-x86_64 is not installed (apt-get install qemu-user)")
        self.proc = subprocess.Popen([qemu, "-cpu", cpu, sys.executable, os.path.abspath(__file__), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.next_id = 0
        self.closed = []  # sessions collected since the last call: closed before the next one

    def call(self, op, sid, *args):
        with self.lock:
            while self.closed:
                _send(self.proc.stdin, ("close", self.closed.pop()))
                _receive(self.proc.stdout)
            _send(self.proc.stdin, (op, sid, *args))
            status, reply = _receive(self.proc.stdout)
        if status == "error":
            name, message = reply
            import onnxruntime as ort

            error = getattr(ort.capi.onnxruntime_pybind11_state, name, None)
            raise (error if isinstance(error, type) and issubclass(error, Exception) else RuntimeError)(message)
        return reply


def install(cpu: str) -> None:
    """Route this process's onnxruntime sessions to ``cpu`` under qemu; report its ISA."""
    import onnxruntime as ort

    import gencompress.isa as isa

    if cpu not in FLAGS:
        raise SystemExit(f"{ENV}={cpu}: emulated CPUs known here: {', '.join(FLAGS)}")
    server = None
    native_options = ort.SessionOptions

    class RecordingOptions(native_options):
        """SessionOptions that remember their config entries (onnxruntime cannot list them)."""

        def __init__(self):
            super().__init__()
            self.config_entries = {}

        def add_session_config_entry(self, key, value):
            self.config_entries[key] = value
            super().add_session_config_entry(key, value)

    class EmulatedSession:
        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
            nonlocal server
            if server is None:
                server = _Server(cpu)
            self._server = server
            self._id = server.next_id = server.next_id + 1
            opts = sess_options or native_options()
            attrs = {}
            for name in OPTION_ATTRS:
                value = getattr(opts, name)
                attrs[name] = int(value) if name in ("graph_optimization_level", "execution_mode", "execution_order") else value
            settings = {"attrs": attrs, "config": dict(getattr(opts, "config_entries", {}))}
            model = path_or_bytes
            if isinstance(model, (str, os.PathLike)):
                model = os.path.abspath(model)  # the server's working folder is not this process's (tests chdir)
            self._opts = opts
            info = server.call("open", self._id, model, settings, list(providers or ["CPUExecutionProvider"]))
            self._inputs = [types.SimpleNamespace(name=n, type=t, shape=s) for n, t, s in info["inputs"]]
            self._outputs = [types.SimpleNamespace(name=n, type=t, shape=s) for n, t, s in info["outputs"]]
            self._providers = info["providers"]
            self._meta = types.SimpleNamespace(**info["meta"])

        def run(self, output_names, input_feed, run_options=None):
            return self._server.call("run", self._id, output_names, dict(input_feed))

        def get_inputs(self):
            return list(self._inputs)

        def get_outputs(self):
            return list(self._outputs)

        def get_providers(self):
            return list(self._providers)

        def get_modelmeta(self):
            return self._meta

        def get_session_options(self):
            return self._opts

        def end_profiling(self):
            return self._server.call("end_profiling", self._id)

        def __del__(self):  # no call from here: a collection may happen inside a call, holding the lock
            if hasattr(self, "_server"):
                self._server.closed.append(self._id)

    ort.SessionOptions = RecordingOptions
    ort.InferenceSession = EmulatedSession
    isa._cpu_flags = lambda: set(FLAGS[cpu])
    isa.host_isa.cache_clear()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
