"""Environments: the digits CNN against itself passes under every thread count, graph optimisation level and
provider, and repeats bit for bit; an environment onnxruntime refuses, or a model it cannot load at all, becomes a
failed check with a one-line reason instead of a crash.

OpenVINO, when installed, runs at its default precision for the CPU: bf16 on CPUs with AVX-512 BF16, so its outputs
are judged by the budget and never expected to equal onnxruntime's; only its f32 run and ``repeat`` are held to
float rounding and bit equality. A stand-in for the package reports bf16, so that case runs on any machine."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import digits, figure

from graphopt.data import Dataset
from graphopt.openvino import openvino_reason, unavailable
from graphopt.runtime import RuntimeConfig
from graphopt.validation.context import ValidationContext
from graphopt.validation.environments import (
    CPU,
    OPENVINO,
    OPENVINO_F32,
    Environment,
    baseline_runtime,
    check_environments,
    default_environments,
)
from graphopt.validation.model import Check
from graphopt.verify.tolerance import Tolerance

METRICS = {"cosine", "top1", "drift_max_abs", "drift_cosine"}


@pytest.fixture(scope="module", name="digits")
def digits_fixture() -> tuple[onnx.ModelProto, Dataset]:
    return digits(100)

def test_default_environments_cover_threads_levels_and_providers() -> None:
    runtime = RuntimeConfig(intra_op_threads=4, graph_optimization="basic", batch_size=8)
    envs = default_environments(runtime, providers=["FancyExecutionProvider", CPU])
    names = [e.name for e in envs]
    threads = list(dict.fromkeys((1, 2, os.cpu_count() or 1)))
    assert names == [*(f"threads={t}" for t in threads), "optimization=disable", "optimization=basic",
                     "optimization=all", "provider=FancyExecutionProvider"]
    assert baseline_runtime(runtime) == RuntimeConfig((CPU,), 1, "basic", 8)
    assert envs[-1].runtime.providers == ("FancyExecutionProvider", CPU)  # the CPU takes what the provider does not
    assert [e.level for e in envs if e.group == "threads"] == [float(t) for t in threads]


def _precision(check: Check) -> str | None:
    """The inference precision an OpenVINO check states it compiled with (``None`` for other checks)."""
    found = re.match(r"inference precision (\w+)", check.detail) if check.group == "openvino" else None
    return found.group(1) if found else None


def _assert_identical_model_passes(section_checks: list[Check]) -> None:
    """Every check passes; f32 runs match to float rounding; a bf16/f16 OpenVINO run is held to the budget only."""
    budget = Tolerance.budget()
    for check in section_checks:
        assert check.passed is True and set(check.metrics) == METRICS, check
        if check.group == "openvino":
            assert _precision(check) is not None, check  # the precision it compiled with is stated
        if _precision(check) not in (None, "f32"):  # bf16 rounds every layer: the budget, not bit equality
            assert figure(check, "cosine") >= (budget.cosine or 0) and figure(check, "top1") >= (budget.top1 or 0)
            continue
        assert check.metrics["cosine"] == pytest.approx(1.0) and check.metrics["top1"] == 1.0, check
        assert figure(check, "drift_max_abs") < 1e-4, check
    repeat = section_checks[-1]
    assert repeat.name == "repeat" and repeat.metrics["drift_max_abs"] == 0.0 and repeat.metrics["drift_cosine"] == 1.0


def test_identical_model_passes_everywhere_and_repeats_bit_for_bit(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    """On either CI machine: OpenVINO (when installed) at whatever precision it picks here."""
    model, held_out = digits
    section = check_environments(ValidationContext(model, model, held_out, held_out))
    assert (section.name, section.title, section.passed) == ("environments", "Stability across environments", True)
    names = [c.name for c in section.checks]
    expected = [f"provider={p}" for p in ort.get_available_providers() if p != CPU]
    assert names[:2] == ["threads=1", "threads=2"] and names[-1] == "repeat"
    assert {"optimization=disable", "optimization=basic", "optimization=all", *expected} <= set(names)
    assert ({OPENVINO, OPENVINO_F32} <= set(names)) is (unavailable() is None)
    _assert_identical_model_passes(section.checks)
    assert all(_precision(c) == "f32" for c in section.checks if c.name == OPENVINO_F32)
    assert section.notes[0].startswith(f"execution providers found: {', '.join(ort.get_available_providers())}")


def test_identical_model_under_a_bf16_openvino_passes_by_the_budget(digits: tuple[onnx.ModelProto, Dataset],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What the AVX-512 BF16 machine sees, on any machine: OpenVINO's default run differs from onnxruntime's in
    the last bits and passes by the budget; the f32 run and ``repeat`` stay exact."""
    model, held_out = digits
    fake = _FakeOpenVino(default="bf16")
    monkeypatch.setitem(sys.modules, "openvino", fake)
    section = check_environments(ValidationContext(model, model, held_out, held_out), [])
    assert [(c.name, c.passed) for c in section.checks] == [(OPENVINO, True), (OPENVINO_F32, True), ("repeat", True)]
    _assert_identical_model_passes(section.checks)
    default, pinned, _ = section.checks
    assert (_precision(default), _precision(pinned)) == ("bf16", "f32")
    assert figure(default, "drift_max_abs") > 0 and figure(default, "cosine") < 1.0  # not bit-identical, and fine
    assert fake.configs == [None, {"INFERENCE_PRECISION_HINT": "f32"}]
    assert "OpenVINO: installed, default inference precision bf16 on this CPU" in section.notes[0]


def test_an_unknown_provider_fails_with_one_line(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    ctx = ValidationContext(model, model, held_out, held_out)
    bogus = Environment("provider=Nope", RuntimeConfig(providers=("NopeExecutionProvider", CPU)), "provider")
    section = check_environments(ctx, [bogus])
    check = section.checks[0]
    assert (check.name, check.passed, check.metrics, check.group) == ("provider=Nope", False, {}, "provider")
    assert check.detail.startswith("execution provider NopeExecutionProvider is not in this onnxruntime (")
    assert section.checks[-1].name == "repeat" and section.checks[-1].passed is True  # the rest still runs
    assert section.passed is False


def test_a_silent_fallback_to_the_cpu_is_a_failure(digits: tuple[onnx.ModelProto, Dataset],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """onnxruntime runs on the CPU when a listed provider fails to start, printing why: that provider never ran."""
    model, held_out = digits
    listed = [*ort.get_available_providers(), "NopeExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    bogus = Environment("provider=Nope", RuntimeConfig(providers=("NopeExecutionProvider", CPU)), "provider")
    with pytest.warns(UserWarning, match="NopeExecutionProvider"):
        check = check_environments(ValidationContext(model, model, held_out, held_out), [bogus]).checks[0]
    assert check.passed is False and "\n" not in check.detail
    assert check.detail.startswith("onnxruntime fell back from NopeExecutionProvider to CPUExecutionProvider: EP Error")
    assert capsys.readouterr().out == ""  # stdout may carry the JSON report


def test_an_optimised_model_onnxruntime_cannot_load_fails_every_check(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    section = check_environments(ValidationContext(model, broken, held_out, held_out))
    assert section.checks and all(c.passed is False for c in section.checks)
    assert all(c.detail.startswith(("onnxruntime cannot load the model", "OpenVINO cannot run the model"))
               and "\n" not in c.detail for c in section.checks)  # OpenVINO, when installed, words its own failure


def _bf16(array: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 and back."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


class _FakeOpenVino:
    """Stands in for the ``openvino`` package: compiles by handing the file to onnxruntime, or fails with a
    multi-line error as OpenVINO's conversion does. Its compiled models run at ``default`` precision unless a config
    pins one, report it as ``INFERENCE_PRECISION_HINT`` (a string: the real one returns ``openvino.Type``), and round
    their outputs to bf16 when that is the precision."""

    def __init__(self, error: str = "", default: str = "f32") -> None:
        self.error = error
        self.default = default
        self.configs: list[dict[str, Any] | None] = []

    def Core(self) -> _FakeOpenVino:  # openvino.Core()
        return self

    def compile_model(self, path: str, device: str, config: Mapping[str, Any] | None = None) -> object:
        assert device == "CPU"
        self.configs.append(dict(config) if config is not None else None)
        if self.error:
            raise RuntimeError(self.error)
        session = ort.InferenceSession(path, providers=[CPU])
        names = [o.name for o in session.get_outputs()]
        precision = str((config or {}).get("INFERENCE_PRECISION_HINT", self.default))

        class Compiled:
            def output(self, name: str) -> str:
                return name

            def get_property(self, name: str) -> str:
                assert name == "INFERENCE_PRECISION_HINT"
                return precision

            def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                outputs = session.run(names, feed)
                return {n: _bf16(o) if precision == "bf16" else o for n, o in zip(names, outputs, strict=True)}

        return Compiled()


def test_openvino_runs_when_installed_and_its_failure_is_one_line(digits: tuple[onnx.ModelProto, Dataset],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, held_out = digits
    ctx = ValidationContext(model, model, held_out, held_out)
    fake = _FakeOpenVino()
    monkeypatch.setitem(sys.modules, "openvino", fake)
    section = check_environments(ctx, [])
    assert [(c.name, c.passed) for c in section.checks] == [(OPENVINO, True), (OPENVINO_F32, True), ("repeat", True)]
    assert section.checks[0].metrics["drift_max_abs"] == pytest.approx(0.0, abs=1e-5)
    assert section.checks[0].detail == "inference precision f32: OpenVINO's default on this CPU"
    assert fake.configs == [None], "f32 by default: the f32 check is the same run"
    assert "OpenVINO: installed, default inference precision f32 on this CPU" in section.notes[0]
    monkeypatch.setitem(sys.modules, "openvino", _FakeOpenVino("Exception from src/frontends/onnx\nstack trace"))
    section = check_environments(ctx, [])
    check = section.checks[0]
    assert (check.name, check.passed, check.detail) == (
        "openvino", False, "OpenVINO cannot run the model: Exception from src/frontends/onnx")
    assert [c.name for c in section.checks] == [OPENVINO, "repeat"], "nothing compiled, no precision to pin against"
    assert section.notes[0].endswith("OpenVINO: installed")


def test_a_bf16_default_outside_the_budget_fails_and_f32_is_named(digits: tuple[onnx.ModelProto, Dataset],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployed default is what is judged: a budget bf16 cannot meet fails the section, and the check says that
    f32 pinned keeps it."""
    model, held_out = digits
    monkeypatch.setitem(sys.modules, "openvino", _FakeOpenVino(default="bf16"))
    strict = Tolerance(cosine=0.9999999, top1=0.99)
    section = check_environments(ValidationContext(model, model, held_out, held_out, tolerance=strict), [])
    default, pinned, repeat = section.checks
    assert (default.passed, pinned.passed, repeat.passed, section.passed) == (False, True, True, False)
    assert figure(default, "cosine") < 0.9999999 <= figure(pinned, "cosine")
    assert re.fullmatch(r"inference precision bf16: OpenVINO's default on this CPU; logits: cosine [\d.]+ < [\d.]+; "
                        r"passes with f32 pinned \(INFERENCE_PRECISION_HINT: f32\)", default.detail), default.detail


def test_openvino_reason_is_its_summary_not_a_source_location() -> None:
    """OpenVINO's conversion errors start with source locations; what the user needs is in its summary."""
    real = ("Exception from src/inference/src/cpp/core.cpp:132:\nException from src/inference/src/dev/plugin.cpp:59:\n"
            "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
            "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\n\nSummary:\n"
            "-- No conversion rule found for operations: NoSuchOp-17\n-- Conversion is failed for: Conv-17\n\n")
    assert openvino_reason(RuntimeError(real)) == (
        "No conversion rule found for operations: NoSuchOp-17; Conversion is failed for: Conv-17")
    assert openvino_reason(RuntimeError("Exception from src/a.cpp:1:\nCannot open file x.onnx\nmore")) == (
        "Cannot open file x.onnx")
    assert openvino_reason(RuntimeError("plain")) == "plain"
