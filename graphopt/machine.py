"""Facts about the CPU that decide how to compile for it: instruction-set flags and a one-line description.

int8 kernels depend on them: without VNNI, onnxruntime's AVX2 u8·s8 kernels add pairs of products in int16
(``vpmaddubsw``), which saturates on full-range int8 weights; 7-bit weights avoid it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "has_vnni"]

_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where they cannot be read (then assume the least)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_vnni() -> bool:
    """Whether int8 dot products run without int16 saturation (AVX-512 VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_model() -> str:
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
