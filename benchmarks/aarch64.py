"""A bundle's ``sample.py`` on an emulated aarch64 (``qemu-aarch64`` user mode), against this host.

Run by hand (not part of the tests; root, Debian: it enables the arm64 architecture for apt):

    .venv/bin/python benchmarks/aarch64.py                      # the zoo, int8 objective size, vnni and portable
    .venv/bin/python benchmarks/aarch64.py --models rvae --folder /tmp/arm64

Per model and weight variant: ``quantize`` (objective size) then ``ship --target python``, then
the bundle's own ``sample.py`` runs natively and under ``qemu-aarch64``: ``--verify`` (the
manifest's test vectors, bound 40 dB against the build host) and ``--n 16 --seed 0 --out
samples.npz``; the table gives PSNR vs the float model on those latents (peak as ``check``) on
each machine, and the aarch64 output against the host's.

The aarch64 side is Debian's arm64 CPython (``apt-get download``, unpacked into a sysroot, no
install) with the aarch64 wheels of this host's onnxruntime and numpy (``pip download
--platform``). onnxruntime's aarch64 wheel segfaults at import under qemu-user as it comes: its
CPU probe (the cpuinfo library) parses /proc/cpuinfo, which qemu 7.2 passes through from the
x86 host, and dereferences NULL when it finds no ARM core there (``qemu-aarch64 -strace``: the
last calls read /sys/devices/system/cpu, then SIGSEGV at address 0; ``-cpu max``, ``cortex-a76``,
``neoverse-n1`` and ``cortex-a57`` all crash the same). qemu's ``-L`` sysroot also redirects
absolute paths the guest opens when the file exists under it, so a ``proc/cpuinfo`` in the
sysroot that describes two Cortex-A76 cores (with ``asimddp``) lets it import and run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "zlib1g", "libexpat1", "libffi8",
    "libgcc-s1", "libstdc++6", "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libcrypt1",
)
CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for i in range(2)
)


def prepare(folder: Path) -> tuple[Path, Path]:
    """(sysroot, site-packages) for aarch64 CPython 3.11 with onnxruntime and numpy; reused when present."""
    root, site = folder / "root", folder / "site"
    python = root / "usr/bin/python3.11"
    if not python.exists():
        if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout.split():
            subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        debs = folder / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", *[f"{p}:arm64" for p in PACKAGES]], cwd=debs, check=True, capture_output=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(CPUINFO)
    if not (site / "onnxruntime").exists():
        import numpy
        import onnxruntime

        wheels = folder / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64", "-d", str(wheels),
                        f"onnxruntime=={onnxruntime.__version__}", f"numpy=={numpy.__version__}"], check=True, capture_output=True)
        for wheel in wheels.glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
    return root, site


def sample(bundle: Path, out: Path, aarch64: tuple[Path, Path] | None) -> tuple[str, float]:
    """Run the bundle's sample.py (``--verify``, then 16 samples into ``out``); its verify line and seconds."""
    if aarch64 is None:
        cmd, env = [sys.executable], None
    else:
        root, site = aarch64
        cmd, env = ["qemu-aarch64", "-L", str(root), str(root / "usr/bin/python3.11")], {"PYTHONPATH": str(site), "PATH": os.environ["PATH"]}
    started = time.perf_counter()
    verify = subprocess.run([*cmd, str(bundle / "sample.py"), "--verify"], capture_output=True, text=True, env=env)
    subprocess.run([*cmd, str(bundle / "sample.py"), "--n", "16", "--seed", "0", "--out", str(out)], check=True, capture_output=True, env=env)
    line = (verify.stdout.strip().splitlines() or verify.stderr.strip().splitlines() or [""])[-1]
    return f"{'pass' if verify.returncode == 0 else 'FAIL'}: {line.partition(' (')[0]}", time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["dcgan", "vae", "rvae", "cgan"])
    parser.add_argument("--variants", nargs="*", default=["vnni", "portable"], choices=["vnni", "portable"])
    parser.add_argument("--folder", default=None, help="where the aarch64 sysroot and wheels are kept (default: ~/.cache/gencompress/aarch64)")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort

    from gencompress import quantize
    from gencompress.cache import cache_root
    from gencompress.edge.bundle import ship
    from gencompress.exporter.export import export
    from gencompress.isa import host_isa
    from gencompress.runtime_check.fidelity import mse, output_peak, psnr

    aarch64 = prepare(Path(args.folder) if args.folder else cache_root() / "aarch64")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            src = tmp / f"{name}.onnx"
            export(name, src)
            for variant in args.variants:
                q = tmp / f"{name}_{variant}.onnx"
                quantize(src, q, objective="size", int8_kernels=variant, check=False)
                bundle = tmp / f"{name}_{variant}"
                ship(q, bundle, targets=("python",))
                host_check, _ = sample(bundle, tmp / "host.npz", None)
                arm_check, seconds = sample(bundle, tmp / "arm.npz", aarch64)
                host, arm = np.load(tmp / "host.npz"), np.load(tmp / "arm.npz")
                out = next(k for k in host.files if k.startswith("output."))
                session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
                floats = session.run([out.partition(".")[2]], {k.partition(".")[2]: host[k] for k in host.files if k.startswith("input.")})[0]
                peak = output_peak(onnx.load(str(src)), floats)[0]
                rows.append((name, variant, psnr(mse(floats, host[out]), peak), psnr(mse(floats, arm[out]), peak),
                             psnr(mse(host[out], arm[out]), peak), host_check, arm_check, seconds))
                print(rows[-1], file=sys.stderr, flush=True)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"host ISA: {host_isa()}; emulated: aarch64 (qemu-aarch64 user mode, Cortex-A76 cpuinfo, -cpu max); load average {load}")
    print("PSNR vs float on sample.py's 16 latents (seed 0), dB; sample.py --verify (40 dB bound vs the build host)")
    print("| model | weights | host | aarch64 | aarch64 vs host | verify on host | verify on aarch64 | aarch64 seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, variant, h, a, ah, hc, ac, s in rows:
        print(f"| {name} | {variant} | {h:.2f} | {a:.2f} | {ah:.1f} | {hc} | {ac} | {s:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
