"""Facts about the CPU that decide how to compile for it: instruction-set flags and a one-line description.

int8 kernels depend on them: without VNNI, onnxruntime's AVX2 u8·s8 kernels add pairs of products in int16
(``vpmaddubsw``), which saturates on full-range int8 weights; 7-bit weights avoid it (``qdq-int8``'s
``weight_bits=auto``). That is graphopt's only decision made from the flags. OpenVINO's floating-point precision
also depends on the CPU (bf16 or f16 by default where the CPU has them, f32 elsewhere), but OpenVINO decides it:
graphopt reads it back from the compiled model (``graphopt.openvino.inference_precision``), never predicts it.

Every feature question reads ``cpu_flags()`` through this module at call time (passes read them from
``PassContext.cpu_flags``, filled from ``cpu_flags()`` when the context is made), so a test forces a kind of CPU by
replacing that one function (``monkeypatch.setattr(graphopt.machine, "cpu_flags", lambda: frozenset({...}))``);
``parse_cpu_flags`` is the parser, pure, for tests on ``/proc/cpuinfo`` text.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["VNNI_FLAGS", "cpu_flags", "cpu_model", "has_vnni", "parse_cpu_flags"]

_CPUINFO = Path("/proc/cpuinfo")

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""Linux's names for int8 dot-product instructions that accumulate in int32 (``vpdpbusd``: AVX-512 VNNI, AVX-VNNI;
AMX tiles): with any of them onnxruntime's u8·s8 kernels do not saturate, and full-range int8 weights are safe."""


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in ``/proc/cpuinfo`` text: the first ``flags`` line (x86) or ``Features`` line (Arm);
    empty when there is none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where they cannot be read (then assume the least)."""
    try:
        return parse_cpu_flags(_CPUINFO.read_text(errors="replace"))
    except OSError:
        return frozenset()


def has_vnni() -> bool:
    """Whether int8 dot products run without int16 saturation (AVX-512 VNNI, AVX-VNNI or AMX: ``VNNI_FLAGS``)."""
    return bool(cpu_flags() & VNNI_FLAGS)


@functools.cache
def cpu_model() -> str:
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
