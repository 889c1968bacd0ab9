"""Shared fixtures: zoo models exported once per session, and an in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="session", autouse=True)
def hermetic_plan_cache(tmp_path_factory):
    """Timed int8 plans cached by one test run are not reused by the next (or by the user's runs)."""
    import os

    folder = tmp_path_factory.mktemp("plans")
    # outputs are not reused either: tests that quantize a model twice measure the second run
    # (tests/test_output_cache.py turns that cache on)
    settings = {"GENCOMPRESS_PLAN_CACHE": str(folder), "GENCOMPRESS_OUTPUT_CACHE": "off"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield folder
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def zoo_onnx(tmp_path_factory):
    """``zoo_onnx(name) -> Path`` of the zoo model exported with its trained checkpoint (cached)."""
    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("zoo")

    def get(name: str) -> Path:
        if name not in cache:
            from gencompress.exporter.export import export

            out = folder / f"{name}.onnx"
            export(name, out)
            cache[name] = out
        return cache[name]

    return get


class CliResult:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def __repr__(self):
        return f"<exit {self.exit_code}\nstdout: {self.stdout}\nstderr: {self.stderr}>"


@pytest.fixture
def run_cli():
    """Run `gencompress ARGS...` in-process; returns exit_code, stdout, stderr."""
    from gencompress.cli import main

    def run(*args) -> CliResult:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is a bug: let the test show it
        return CliResult(result)

    return run


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """One line on stderr naming the problem, exit code 2, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), result


@pytest.fixture
def user_error():
    """``user_error(result, *fragments)``: asserts a one-line user error (see assert_user_error)."""
    return assert_user_error


def pytest_configure(config):
    """``GENCOMPRESS_TEST_CPU=Haswell``: onnxruntime runs on that CPU, emulated (tests/emulated_cpu.py)."""
    import os

    cpu = os.environ.get("GENCOMPRESS_TEST_CPU")
    if cpu:
        import importlib.util

        spec = importlib.util.spec_from_file_location("emulated_cpu", Path(__file__).with_name("emulated_cpu.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.install(cpu)
