"""The instruction set onnxruntime's int8 kernels use on this machine, named for reports.

Which kernel runs decides what an int8 model computes: onnxruntime's x86 kernels without VNNI
(AVX2, AVX-512BW) add each pair of u8×s8 products into a saturating int16 (VPMADDUBSW), while
VNNI, ARM dot-product and wasm kernels accumulate in int32. Every fidelity or latency figure
names the ISA it was measured on.
"""

from __future__ import annotations

import functools
import platform

# x86 paths in the order onnxruntime's MLAS prefers them
X86_PATHS = (
    ("avx512_vnni", "x86-64 AVX-512 VNNI"),
    ("avx_vnni", "x86-64 AVX-VNNI"),
    ("avx512bw", "x86-64 AVX-512BW"),
    ("avx2", "x86-64 AVX2"),
)
# the paths whose u8×s8 pairs saturate in int16
SATURATING = ("x86-64 AVX-512BW", "x86-64 AVX2", "x86-64 SSE4.1")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def host_isa() -> str:
    """This machine's int8 kernel path, e.g. ``"x86-64 AVX2"`` or ``"aarch64"``.

    Under ``qemu-x86_64 -cpu Haswell`` /proc/cpuinfo still describes the host, so an emulated run
    is named by the caller (the CPUID onnxruntime sees is the emulated one)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine not in ("x86_64", "amd64"):
        return machine or "unknown"
    flags = _cpu_flags()
    for flag, name in X86_PATHS:
        if flag in flags:
            return name
    return "x86-64 SSE4.1"


def saturates(isa: str) -> bool:
    """Whether int8 u8×s8 kernels on ``isa`` add product pairs in a saturating int16."""
    return isa in SATURATING
