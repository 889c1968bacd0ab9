"""The wheel installs one import package, gencompress, with the design card's folders as subpackages."""

import subprocess
import sys
import zipfile


def test_wheel_contents_and_import(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gencompress-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    top = {n.split("/")[0] for n in names}
    assert top == {"gencompress", next(t for t in top if t.endswith(".dist-info"))}
    for sub in ("exporter", "passes", "runtime_check", "models"):
        assert f"gencompress/{sub}/__init__.py" in names
    assert any(n.startswith("gencompress/models/checkpoints/") and n.endswith(".safetensors") for n in names)
    assert not any(n.startswith("gencompress/tests/") for n in names)

    # Import from the unpacked wheel alone, from a folder with no source tree in sight.
    code = (
        "import gencompress, gencompress.exporter.export, gencompress.passes.registry, gencompress.models;"
        "import os; assert gencompress.__file__.startswith(os.environ['SITE']), gencompress.__file__;"
        "assert gencompress.models.ZOO['dcgan'].checkpoint.exists()"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "SITE": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
