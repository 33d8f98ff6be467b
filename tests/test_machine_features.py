"""Every code path that depends on the CPU, on both kinds of CI machine whichever one runs the suite: an AVX2-only
AMD EPYC (Zen 3) and an AVX-512 one with VNNI and bf16 (Zen 4). The detected flags are forced by replacing
``graphopt.machine.cpu_flags``, which every feature question reads at call time.

- ``qdq-int8{weight_bits=auto}``: 7-bit weights for ``ort-cpu`` without VNNI, 8-bit with it and for other targets.
- ``graphopt validate``'s OpenVINO checks: OpenVINO picks bf16 by default on CPUs with AVX-512 BF16, which an AVX2
  machine cannot run, so a stand-in for OpenVINO's compile (``environments.compile_cpu``) follows the CPU plugin's
  precision rules on the forced flags and reports its precision as a compiled model does; the checks must state
  that precision, judge the default by the tolerance and report f32 beside it. The real plugin's behaviour on this
  machine is tested in ``tests/test_openvino.py``.

graphopt has no other branch on CPU features (``grep -rn "cpu_flags\\|has_vnni\\|avx512\\|bf16"``): the benchmarks
only record the flags, and onnxruntime's AVX-512 kernels are its own choice, verified like any run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import calibration, digits, figure, text_model
from onnx import numpy_helper

from graphopt import machine
from graphopt.data import Dataset
from graphopt.openvino import F32_CONFIG, inference_precision
from graphopt.validation import environments
from graphopt.validation.context import ValidationContext
from graphopt.validation.environments import OPENVINO, OPENVINO_F32, check_environments, openvino_run
from graphopt.verify.tolerance import Tolerance
from graphopt_passes.qdq_int8 import QdqInt8Pass

ZEN3 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall "
        "nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
        "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes "
        "xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
        "topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
        "clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip pku ospke vaes "
        "vpclmulqdq rdpid fsrm")
"""The AVX2-only CI machine's ``flags`` line (AMD EPYC, Zen 3: no AVX-512, no VNNI, no bf16)."""
ZEN4 = (f"{ZEN3} avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 gfni "
        "avx512_vnni avx512_bitalg avx512_vpopcntdq la57")
"""The other CI machine's (AMD EPYC, Zen 4: AVX-512 with VNNI and BF16, no AVX-VNNI, no AMX)."""


@dataclass(frozen=True)
class CpuKind:
    """A kind of CPU and what graphopt and OpenVINO do on it."""

    name: str
    flags: frozenset[str]
    ort_weight_bits: int  # qdq-int8{target=ort-cpu,weight_bits=auto}
    openvino_default: str  # OpenVINO's floating-point precision without a hint


KINDS = (
    CpuKind("avx2", machine.parse_cpu_flags(f"flags\t\t: {ZEN3}\n"), 7, "f32"),
    CpuKind("avx512-vnni-bf16", machine.parse_cpu_flags(f"flags\t\t: {ZEN4}\n"), 8, "bf16"),
)


@pytest.fixture(name="cpu", params=KINDS, ids=[k.name for k in KINDS])
def cpu_fixture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuKind:
    """Each test that takes ``cpu`` runs once per kind of CPU, with that kind's flags detected."""
    kind: CpuKind = request.param
    monkeypatch.setattr(machine, "cpu_flags", lambda: kind.flags)
    return kind


@pytest.fixture(name="fresh_cache")
def fresh_cache_fixture() -> Iterator[None]:
    """``cpu_flags``'s cache emptied before and after, so a test that reads another file leaves no trace."""
    machine.cpu_flags.cache_clear()
    yield
    machine.cpu_flags.cache_clear()


# --- the flags ------------------------------------------------------------------------------------------------------


def test_cpuinfo_flags_of_both_kinds_of_epyc() -> None:
    avx2, avx512 = (kind.flags for kind in KINDS)
    assert {"avx2", "fma", "vaes"} <= avx2 and not {f for f in avx2 if f.startswith("avx512")}
    assert {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"} <= avx512
    assert not avx2 & machine.VNNI_FLAGS and avx512 & machine.VNNI_FLAGS == {"avx512_vnni"}
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"
    assert machine.parse_cpu_flags(arm) == {"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32",
                                            "asimddp"}
    assert machine.parse_cpu_flags("") == frozenset() == machine.parse_cpu_flags("model name\t: AMD EPYC\n")
    two = f"processor\t: 0\nflags\t\t: {ZEN3}\n\nprocessor\t: 1\nflags\t\t: {ZEN4}\n"
    assert machine.parse_cpu_flags(two) == avx2, "the first CPU's line"


@pytest.mark.parametrize(("flags", "vnni"), [
    ({"avx2"}, False), (set(), False), ({"avx512f", "avx512bw"}, False),
    ({"avx512_vnni"}, True), ({"avx2", "avx_vnni"}, True), ({"amx_int8"}, True),
])
def test_has_vnni_follows_the_forced_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str], vnni: bool) -> None:
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    assert machine.has_vnni() is vnni


def test_cpu_flags_reads_cpuinfo_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {ZEN4}\n")
    monkeypatch.setattr(machine, "_CPUINFO", cpuinfo)
    assert machine.cpu_flags() == KINDS[1].flags and machine.has_vnni()
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {ZEN3}\n")
    assert machine.cpu_flags() == KINDS[1].flags, "cached: read once per process"
    machine.cpu_flags.cache_clear()
    assert machine.cpu_flags() == KINDS[0].flags and not machine.has_vnni()
    monkeypatch.setattr(machine, "_CPUINFO", tmp_path / "missing")
    machine.cpu_flags.cache_clear()
    assert machine.cpu_flags() == frozenset() and not machine.has_vnni(), "unreadable: assume the least"


# --- qdq-int8's weight bits ------------------------------------------------------------------------------------------


def _matmul(rng: np.random.Generator) -> onnx.ModelProto:
    weight = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    return text_model('<ir_version: 8, opset_import: ["" : 17]>\n'
                      "g (float[N,64] x) => (float[N,32] y) { y = MatMul(x, w) }", w=weight)


def _int8_weights(model: onnx.ModelProto) -> np.ndarray:
    """The int8 weight tensor behind the model's one weight DequantizeLinear."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (weights,) = [constants[n.input[0]] for n in model.graph.node
                  if n.op_type == "DequantizeLinear" and constants.get(n.input[0], np.zeros(0)).dtype == np.int8]
    return weights


@pytest.mark.parametrize("target", ["ort-cpu", "openvino", "tensorrt"])
def test_qdq_int8_weight_bits_follow_vnni(cpu: CpuKind, target: str, rng: np.random.Generator) -> None:
    """7-bit weights only where onnxruntime's u8·s8 kernels would saturate: ``ort-cpu`` on a CPU without VNNI."""
    model = _matmul(rng)
    result = QdqInt8Pass(QdqInt8Pass.Options(target=target, speed_check="off"))(model, calibration(model, rng))
    bits = cpu.ort_weight_bits if target == "ort-cpu" else 8
    assert result.modified and result.stats["weight_bits"] == bits, (result.stats, result.skipped)
    assert int(np.abs(_int8_weights(result.model)).max()) == 2 ** (bits - 1) - 1  # symmetric, per channel
    why = " (no VNNI on this CPU: full-range int8 saturates in AVX2 kernels)" if bits == 7 else ""
    assert f"weights {bits}-bit{why}" in result.notes, result.notes


@pytest.mark.parametrize("bits", [7, 8])
def test_explicit_weight_bits_ignore_the_cpu(cpu: CpuKind, bits: int, rng: np.random.Generator) -> None:
    model = _matmul(rng)
    options = QdqInt8Pass.Options(weight_bits="7" if bits == 7 else "8", speed_check="off")
    result = QdqInt8Pass(options)(model, calibration(model, rng))
    assert result.stats["weight_bits"] == bits and int(np.abs(_int8_weights(result.model)).max()) == 2 ** (bits - 1) - 1
    assert f"weights {bits}-bit" in result.notes, result.notes


# --- OpenVINO's precision in validate --------------------------------------------------------------------------------


def _bf16(array: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even) and back, as a bf16 layer's output is."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return rounded.view(np.float32)


class _Type:
    """Stands in for ``openvino.Type``, which the real property returns."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get_type_name(self) -> str:
        return self.name


class _Compiled:
    """A compiled model run by onnxruntime, in ``precision`` (bf16 rounds the outputs), reporting it as OpenVINO's
    compiled models do."""

    def __init__(self, model: onnx.ModelProto, precision: str) -> None:
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.precision = precision

    def get_property(self, name: str) -> _Type:
        assert name == "INFERENCE_PRECISION_HINT"
        return _Type(self.precision)

    def output(self, name: str) -> str:
        return name

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.names, dict(feed))
        return {n: _bf16(o) if self.precision == "bf16" else o for n, o in zip(self.names, outputs, strict=True)}


class _Plugin:
    """``compile_cpu`` on the forced CPU, with the CPU plugin's precision rules (its ``config.cpp``): bf16 by default
    where the CPU has AVX-512 BF16, else f32; a bf16 hint honoured on AVX-512 CPUs (emulated without AVX-512 BF16)
    and silently f32 elsewhere, as measured on the AVX2 machine; f32 when pinned. Records every config."""

    def __init__(self, fail_pinned: str = "") -> None:
        self.configs: list[dict[str, Any] | None] = []
        self.fail_pinned = fail_pinned

    def __call__(self, model: onnx.ModelProto, config: Mapping[str, Any] | None = None, shapes: object = None
                 ) -> _Compiled:
        self.configs.append(dict(config) if config else None)
        if config and self.fail_pinned:
            raise RuntimeError(self.fail_pinned)
        flags = machine.cpu_flags()
        hint = (config or {}).get("INFERENCE_PRECISION_HINT")
        if hint is None:
            precision = "bf16" if "avx512_bf16" in flags else "f32"
        elif hint == "bf16":
            precision = "bf16" if "avx512bw" in flags else "f32"
        else:
            precision = str(hint)
        return _Compiled(model, precision)


@pytest.fixture(name="plugin")
def plugin_fixture(monkeypatch: pytest.MonkeyPatch) -> _Plugin:
    plugin = _Plugin()
    monkeypatch.setattr(environments, "unavailable", lambda: None)  # "installed", whether or not it is
    monkeypatch.setattr(environments, "compile_cpu", plugin)
    return plugin


@pytest.fixture(scope="module", name="digits_data")
def digits_fixture() -> tuple[onnx.ModelProto, Dataset]:
    return digits(60)


def _precision(detail: str) -> str:
    found = re.match(r"inference precision (\w+)", detail)
    assert found, detail
    return found.group(1)


def test_validate_states_openvinos_precision_and_judges_it_by_the_budget(
        cpu: CpuKind, plugin: _Plugin, digits_data: tuple[onnx.ModelProto, Dataset]) -> None:
    """The identical model: OpenVINO's default (bf16 on the AVX-512 machine) passes by the tolerance without
    matching onnxruntime bit for bit; f32 pinned is reported beside it; ``repeat`` stays bit-identical."""
    model, held_out = digits_data
    section = check_environments(ValidationContext(model, model, held_out, held_out), [])
    assert [(c.name, c.passed) for c in section.checks] == [(OPENVINO, True), (OPENVINO_F32, True), ("repeat", True)]
    default, pinned, repeat = section.checks
    assert default.detail == f"inference precision {cpu.openvino_default}: OpenVINO's default on this CPU"
    assert _precision(pinned.detail) == "f32" and {default.group, pinned.group} == {"openvino"}
    assert f"OpenVINO: installed, default inference precision {cpu.openvino_default} on this CPU" in section.notes[0]
    assert figure(pinned, "drift_max_abs") == 0.0 and figure(pinned, "cosine") == pytest.approx(1.0)
    assert repeat.metrics["drift_max_abs"] == 0.0 and repeat.detail == ""
    if cpu.openvino_default == "f32":
        assert plugin.configs == [None], "f32 is the default: one compile serves both checks"
        assert pinned.detail == "inference precision f32: the default here, same run as 'openvino'"
        assert figure(default, "drift_max_abs") == 0.0
    else:
        assert plugin.configs == [None, dict(F32_CONFIG)], "compiled again with f32 pinned"
        assert pinned.detail == "inference precision f32, pinned: OpenVINO's default without bf16"
        assert 0 < figure(default, "drift_max_abs") < 0.1 and 0.99 <= figure(default, "cosine") < 1.0


def test_a_default_precision_outside_the_budget_fails_and_names_the_way_out(
        cpu: CpuKind, plugin: _Plugin, digits_data: tuple[onnx.ModelProto, Dataset]) -> None:
    """A budget the bf16 rounding breaks (cosine ≥ 0.9999999): on the bf16 machine the deployed default fails and
    says f32 keeps it; on the AVX2 machine the default is f32, and passes."""
    model, held_out = digits_data
    ctx = ValidationContext(model, model, held_out, held_out, tolerance=Tolerance(cosine=0.9999999, top1=0.99))
    section = check_environments(ctx, [])
    default, pinned, _ = section.checks
    assert pinned.passed is True
    if cpu.openvino_default == "f32":
        assert default.passed is True and section.passed is True
    else:
        assert default.passed is False and section.passed is False
        assert default.detail.startswith("inference precision bf16: OpenVINO's default on this CPU; ")
        assert default.detail.endswith("; passes with f32 pinned (INFERENCE_PRECISION_HINT: f32)")


def test_validate_reports_a_failed_f32_compile_in_one_line(cpu: CpuKind, monkeypatch: pytest.MonkeyPatch,
                                                           digits_data: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits_data
    plugin = _Plugin(fail_pinned="Exception from src/inference/src/cpp/core.cpp:132:\nSummary:\n-- pinned failed")
    monkeypatch.setattr(environments, "unavailable", lambda: None)
    monkeypatch.setattr(environments, "compile_cpu", plugin)
    checks = check_environments(ValidationContext(model, model, held_out, held_out), []).checks
    assert [c.name for c in checks] == [OPENVINO, OPENVINO_F32, "repeat"] and checks[0].passed is True
    if cpu.openvino_default == "f32":  # never compiled again
        assert checks[1].passed is True and plugin.configs == [None]
    else:
        assert (checks[1].passed, checks[1].metrics, checks[1].detail) == (
            False, {}, "OpenVINO cannot run the model with f32 pinned: pinned failed")


@pytest.mark.parametrize("hint", ["bf16", "f32"])
def test_the_precision_reported_is_the_one_applied_not_the_hint(cpu: CpuKind, plugin: _Plugin, hint: str,
                                                                digits_data: tuple[onnx.ModelProto, Dataset]) -> None:
    """A bf16 hint on the AVX2 machine runs in f32 (OpenVINO falls back without an error): the run says f32."""
    model, held_out = digits_data
    run = openvino_run(model, held_out, config={"INFERENCE_PRECISION_HINT": hint})
    assert run.precision == ("bf16" if hint == "bf16" and "avx512bw" in cpu.flags else "f32")
    f32 = openvino_run(model, held_out, config=F32_CONFIG)
    assert f32.precision == "f32"
    got, pinned = run.outputs["logits"], f32.outputs["logits"]
    assert isinstance(got, np.ndarray) and isinstance(pinned, np.ndarray)
    assert np.array_equal(got, pinned) is (run.precision == "f32")


def test_inference_precision_reads_openvinos_short_names() -> None:
    for value, name in ((_Type("bf16"), "bf16"), (_Type("f32"), "f32"), ("f16", "f16")):
        compiled = type("Compiled", (), {"get_property": lambda self, key, v=value: v})()
        assert inference_precision(compiled) == name
    openvino = pytest.importorskip("openvino")
    for ov_type, name in ((openvino.Type.f32, "f32"), (openvino.Type.bf16, "bf16"), (openvino.Type.f16, "f16")):
        compiled = type("Compiled", (), {"get_property": lambda self, key, v=ov_type: v})()
        assert inference_precision(compiled) == name
