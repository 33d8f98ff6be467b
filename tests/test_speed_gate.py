"""The speed gate (``graphopt.gates``): the manager times a latency pass's final candidate once, after narrowing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from helpers import digits
from onnx import numpy_helper
from test_manager import RowNoise, run

import graphopt
from graphopt import perf
from graphopt.gates import SpeedCheck, judge_speed, resolve
from graphopt.outcome import Status
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult
from graphopt.perf import Latency
from graphopt.provenance import read_provenance


class FasterRows(RowNoise):
    """RowNoise that says it serves latency and asks to be declined when not faster."""

    name = "test-faster-rows"

    def serves(self) -> frozenset[Goal]:
        return frozenset({"latency"})

    def speed_check(self) -> SpeedCheck:
        return SpeedCheck("decline", candidate="the noisy model", baseline="the clean")


def _fixed_timer(ratio: float, timed: list[Sequence[onnx.ModelProto]]):
    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        timed.append(models)
        assert all(array.shape[0] == 1 for array in feed.values()), "one sample, batch 1"
        return [Latency(1.0, 1.0, 20), Latency(ratio, ratio, 20)]
    return timer


@pytest.mark.parametrize(("ratio", "status"), [(0.8, Status.NARROWED), (1.2, Status.DECLINED)])
def test_the_final_narrowed_candidate_is_timed_once(mlp_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                    ratio: float, status: Status) -> None:
    timed: list[Sequence[onnx.ModelProto]] = []
    monkeypatch.setattr(perf, "measure_latency", _fixed_timer(ratio, timed))
    result = run(mlp_files, FasterRows(), tolerance=graphopt.Tolerance(cosine=0.99))
    (outcome,) = result.pipeline.outcomes
    assert outcome.trials > 1, "narrowing ran many trials"
    assert len(timed) == 1, "timed once, on the final candidate, not per trial"
    before, after = timed[0]
    assert before is outcome.model_before
    assert outcome.status is status
    record = result.report.record("test-faster-rows")
    measured = f"{ratio:.3f}× the clean latency (single thread, batch 1)"
    assert f"the noisy model timed in onnxruntime: {measured}" in record.notes
    if status is Status.NARROWED:
        assert after is outcome.model_after and record.stats["latency_ratio"] == ratio
        assert any(u.applied for u in outcome.units) and any(not u.applied for u in outcome.units)
    else:
        assert outcome.model_after is outcome.model_before and result.model.graph == outcome.model_before.graph
        assert outcome.reason == f"the noisy model {ratio:.2f}× slower here (onnxruntime: {measured}); " \
                                 "speed_check=note would keep it"


class VariedRows(FasterRows):
    """FasterRows whose noise is scaled: a milder variant that the gate may find faster, and a variant that breaks
    the budget (never timed)."""

    name = "test-varied-rows"
    contexts: ClassVar[list[tuple[float, frozenset[str] | None]]] = []

    @dataclass(frozen=True)
    class Options:
        scale: float = 1.0

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        VariedRows.contexts.append((self.options.scale, context.only_units))
        result = super().run(model, context)
        index = next(k for k, t in enumerate(result.model.graph.initializer) if t.name == "w1")
        before = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
        after = numpy_helper.to_array(result.model.graph.initializer[index])
        scaled = before + (after - before) * self.options.scale
        result.model.graph.initializer[index].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), "w1"))
        return result

    def speed_variants(self, result: PassResult) -> tuple[PassBase, ...]:
        return (VariedRows(VariedRows.Options(scale=0.5)), VariedRows(VariedRows.Options(scale=50.0)))


def test_the_fastest_verified_variant_is_kept_with_its_options(mlp_files: tuple[Path, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate rebuilds each variant on the units narrowing kept, verifies it, times the verified ones with the
    candidate in one call and keeps the fastest: the outcome carries its options and model."""
    timed: list[Sequence[onnx.ModelProto]] = []

    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        timed.append(models)
        return [Latency(m, m, 20) for m in (1.0, 0.8, 0.6)[:len(models)]]

    monkeypatch.setattr(perf, "measure_latency", timer)
    VariedRows.contexts.clear()
    result = run(mlp_files, VariedRows(), tolerance=graphopt.Tolerance(cosine=0.99))
    (outcome,) = result.pipeline.outcomes
    kept = frozenset(u.name for u in outcome.units if u.applied)
    assert outcome.status is Status.NARROWED and 0 < len(kept) < 16
    assert len(timed) == 1 and len(timed[0]) == 3, "the budget-breaking variant is not timed"
    assert (0.5, kept) in VariedRows.contexts and (50.0, kept) in VariedRows.contexts, "variants on the kept units"
    assert outcome.options == {"scale": 0.5} and outcome.model_after is timed[0][2]
    record = result.report.record("test-varied-rows")
    assert record.stats["latency_ratio"] == 0.6
    assert any(n.startswith("test-varied-rows{scale=50.0} not timed: ") for n in record.notes)
    assert ("test-varied-rows{scale=0.5} timed in onnxruntime: 0.600× the clean latency (single thread, batch 1); "
            "the fastest of 2 verified candidates (test-varied-rows 0.800×)") in record.notes
    provenance = read_provenance(result.model)
    assert provenance is not None and provenance.pipeline == "test-varied-rows{scale=0.5}", "a refit repeats the kept one"


def test_the_default_qdq_gate_with_narrowing_times_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """qdq-int8 with its default ``speed_check=auto`` (decline on ort-cpu) and a budget that makes it narrow: real
    timing, once, whichever way it goes on this CPU."""
    calls: list[int] = []
    real = perf.measure_latency

    def counted(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **options: object) -> list[Latency]:
        calls.append(len(models))
        return real(models, feed, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(perf, "measure_latency", counted)
    model, data = digits(400)
    result = graphopt.optimize(model, data, passes="qdq-int8", normalize=False,
                               tolerance=graphopt.Tolerance(cosine=0.99999, top1=0.99))
    (outcome,) = result.pipeline.outcomes
    assert outcome.trials > 0 and calls == [2], (outcome.trials, calls)
    ratio = result.report.record("qdq-int8").stats.get("latency_ratio")
    if outcome.status is Status.DECLINED:
        assert outcome.reason.startswith("int8 ") and " here (onnxruntime: " in outcome.reason, outcome.reason
    else:
        assert outcome.status is Status.NARROWED and ratio is not None and ratio < 1, (outcome.status, ratio)


def test_resolve_settles_auto_and_a_missing_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve(SpeedCheck("auto")).mode == "decline"
    assert resolve(SpeedCheck("off", "openvino")) == SpeedCheck("off", "openvino")
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    off = resolve(SpeedCheck("auto", "openvino", candidate="int8"))
    assert off.mode == "off" and "OpenVINO is not installed here, so int8 was not timed in it" in off.notes[0]
    explicit = resolve(SpeedCheck("note", "openvino", candidate="int8"))
    assert explicit.runtime == "onnxruntime" and "timed in onnxruntime instead" in explicit.notes[0]


def test_judge_speed_words_each_verdict() -> None:
    model, data = digits(2)
    feed = next(data.batches(1, per_sample=True))[0]

    def timers(ratio: float | None):
        def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
            if ratio is None:
                raise RuntimeError("Exception from src/core.cpp:1:\nSummary:\n-- cannot compile")
            return [Latency(2.0, 2.0, 20), Latency(2.0 * ratio, 2.0 * ratio, 20)]
        return {"onnxruntime": ("onnxruntime", timer)}

    faster = judge_speed(SpeedCheck("decline"), model, model, feed, timers(0.5))
    assert (faster.ratio, faster.declined) == (0.5, "")
    slower = judge_speed(SpeedCheck("decline"), model, model, feed, timers(1.0))
    assert slower.ratio == 1.0 and slower.declined.startswith("the result no faster here (onnxruntime: 1.000×")
    later = judge_speed(SpeedCheck("decline"), model, model, feed, timers(1.12))
    assert later.declined.startswith("the result 1.12× slower here (onnxruntime: 1.120×"), later
    assert judge_speed(SpeedCheck("note"), model, model, feed, timers(1.5)).declined == ""
    broken = judge_speed(SpeedCheck("decline"), model, model, feed, timers(None))
    assert broken.ratio is None and broken.declined.startswith("onnxruntime could not time the models: cannot compile")
    assert judge_speed(SpeedCheck("note"), model, model, feed, timers(None)).note.startswith("speed not checked")
