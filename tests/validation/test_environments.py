"""Environments: the digits CNN against itself passes under every thread count, graph optimisation level and
provider, and repeats bit for bit; an environment onnxruntime refuses, or a model it cannot load at all, becomes a
failed check with a one-line reason instead of a crash."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import digits, figure

from graphopt.data import Dataset
from graphopt.openvino import openvino_reason
from graphopt.runtime import RuntimeConfig
from graphopt.validation.context import ValidationContext
from graphopt.validation.environments import (
    CPU,
    Environment,
    baseline_runtime,
    check_environments,
    default_environments,
)

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


def test_identical_model_passes_everywhere_and_repeats_bit_for_bit(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    section = check_environments(ValidationContext(model, model, held_out, held_out))
    assert (section.name, section.title, section.passed) == ("environments", "Stability across environments", True)
    names = [c.name for c in section.checks]
    expected = [f"provider={p}" for p in ort.get_available_providers() if p != CPU]
    assert names[:2] == ["threads=1", "threads=2"] and names[-1] == "repeat"
    assert {"optimization=disable", "optimization=basic", "optimization=all", *expected} <= set(names)
    for check in section.checks:
        assert check.passed is True and set(check.metrics) == METRICS, check
        assert check.metrics["cosine"] == pytest.approx(1.0) and check.metrics["top1"] == 1.0
        assert figure(check, "drift_max_abs") < 1e-4
    repeat = section.checks[-1]
    assert repeat.metrics["drift_max_abs"] == 0.0 and repeat.metrics["drift_cosine"] == 1.0
    assert section.notes[0].startswith(f"execution providers found: {', '.join(ort.get_available_providers())}")


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


class _FakeOpenVino:
    """Stands in for the ``openvino`` package (not installed here): compiles by handing the file to onnxruntime, or
    fails with a multi-line error as OpenVINO's conversion does."""

    def __init__(self, error: str = "") -> None:
        self.error = error

    def Core(self) -> _FakeOpenVino:  # openvino.Core()
        return self

    def compile_model(self, path: str, device: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        assert device == "CPU"
        if self.error:
            raise RuntimeError(self.error)
        session = ort.InferenceSession(path, providers=[CPU])
        names = [o.name for o in session.get_outputs()]

        class Compiled:
            def output(self, name: str) -> str:
                return name

            def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return dict(zip(names, session.run(names, feed), strict=True))

        return Compiled()


def test_openvino_runs_when_installed_and_its_failure_is_one_line(digits: tuple[onnx.ModelProto, Dataset],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, held_out = digits
    ctx = ValidationContext(model, model, held_out, held_out)
    monkeypatch.setitem(sys.modules, "openvino", _FakeOpenVino())
    section = check_environments(ctx, [])
    assert [(c.name, c.passed) for c in section.checks] == [("openvino", True), ("repeat", True)]
    assert section.checks[0].metrics["drift_max_abs"] == pytest.approx(0.0, abs=1e-5)
    assert "OpenVINO: installed" in section.notes[0]
    monkeypatch.setitem(sys.modules, "openvino", _FakeOpenVino("Exception from src/frontends/onnx\nstack trace"))
    check = check_environments(ctx, []).checks[0]
    assert (check.name, check.passed, check.detail) == (
        "openvino", False, "OpenVINO cannot run the model: Exception from src/frontends/onnx")


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
