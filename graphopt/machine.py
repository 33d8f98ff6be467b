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

__all__ = ["FEATURES", "VNNI_FLAGS", "cpu_features", "cpu_flags", "cpu_model", "has_vnni", "parse_cpu_flags",
           "parse_cpu_model"]

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


FEATURES: dict[str, tuple[tuple[str, str], ...]] = {
    "x86": (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"),
            ("AVX-512 BF16", "avx512_bf16"), ("AMX-INT8", "amx_int8"), ("F16C", "f16c")),
    "arm": (("NEON", "asimd"), ("dot product", "asimddp"), ("i8mm", "i8mm"), ("FP16", "asimdhp"), ("BF16", "bf16"),
            ("SVE", "sve"), ("SVE2", "sve2")),
}
"""The instruction-set features that decide int8, bf16 and fp16 speed, per CPU family: (name a reader knows, the
flag Linux lists in ``/proc/cpuinfo``). Arm's int8 dot product is ``asimddp`` and its int8 matrix multiply
``i8mm``; x86's are VNNI and AMX."""

_ARM_PARTS = {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57",
              0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76",
              0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77", 0xd40: "Neoverse-V1", 0xd41: "Cortex-A78",
              0xd44: "Cortex-X1", 0xd46: "Cortex-A510", 0xd47: "Cortex-A710", 0xd48: "Cortex-X2",
              0xd49: "Neoverse-N2", 0xd4f: "Neoverse-V2"}
"""Arm Ltd's (implementer 0x41) core part numbers, from its technical reference manuals' MIDR values."""


def parse_cpu_model(cpuinfo: str) -> str:
    """The CPU's name from ``/proc/cpuinfo`` text: x86's ``model name``; on Arm, where Linux prints none, the board's
    ``Model`` line (a Raspberry Pi's) or the core named from its implementer and part number; "" when none."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("Model"):
        return fields["Model"]
    try:
        implementer, part = int(fields["CPU implementer"], 16), int(fields["CPU part"], 16)
    except (KeyError, ValueError):
        return fields.get("Hardware", "")
    name = _ARM_PARTS.get(part) if implementer == 0x41 else None
    return f"Arm {name}" if name else f"Arm CPU (implementer {implementer:#x}, part {part:#x})"


def cpu_features(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """Each of ``FEATURES`` of this CPU's family (``flags``: this CPU's, by default) and whether it has it."""
    flags = cpu_flags() if flags is None else flags
    family = "arm" if "asimd" in flags or platform.machine().lower() in ("aarch64", "arm64") else "x86"
    return {name: flag in flags for name, flag in FEATURES[family]}


@functools.cache
def cpu_model() -> str:
    try:
        found = parse_cpu_model(_CPUINFO.read_text(errors="replace"))
    except OSError:
        found = ""
    return found or platform.processor() or platform.machine()
