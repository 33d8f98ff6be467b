"""The speed gate: whether a verified candidate is worth keeping on the target runtime, measured once.

A pass that serves latency states how its result is to be timed (``PassBase.speed_check`` → ``SpeedCheck``); the
manager calls ``judge_speed`` on the final candidate only, after narrowing, so narrowing never depends on timing
noise and each pass is timed once. Timing is ``perf``'s: single thread, batch 1, the two models interleaved, median,
as a ratio from one call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import onnx

from graphopt import openvino, perf

__all__ = ["TIMERS", "SpeedCheck", "SpeedVerdict", "Timer", "judge_speed", "resolve"]

Timer = Callable[..., list[perf.Latency]]

def _onnxruntime(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **options: Any) -> list[perf.Latency]:
    return perf.measure_latency(models, feed, **options)


def _openvino(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **options: Any) -> list[perf.Latency]:
    return openvino.measure_latency(models, feed, **options)  # looked up per call: tests replace it


TIMERS: Mapping[str, tuple[str, Timer]] = {"onnxruntime": ("onnxruntime", _onnxruntime),
                                           "openvino": ("OpenVINO", _openvino)}
"""Runtimes a candidate can be timed in here: name → (display name, ``measure_latency``-like timer)."""

RUNS, WARMUP, BUDGET_S = 500, 20, 2.0
"""Up to 500 timed rounds after 20 warm-up rounds, capped at about two seconds."""


@dataclass(frozen=True)
class SpeedCheck:
    """How a pass's final candidate is to be timed.

    ``mode``: ``decline`` a candidate that is not faster, only ``note`` the ratio, ``off``, or ``auto``: decline
    when ``runtime`` can time it here, else off. ``runtime`` is a key of ``TIMERS``. ``candidate``/``baseline``
    name the two sides in the verdict ("int8 … the float latency"). ``notes`` say why the check is not what the
    user may expect (not timed in the target's own runtime).
    """

    mode: Literal["auto", "decline", "note", "off"] = "off"
    runtime: str = "onnxruntime"
    candidate: str = "the result"
    baseline: str = "the original"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.runtime not in TIMERS:
            raise ValueError(f"no timer for runtime {self.runtime!r}; known: {', '.join(TIMERS)}")


def resolve(check: SpeedCheck) -> SpeedCheck:
    """``check`` with ``auto`` settled and a runtime that is installed here: a missing OpenVINO turns ``auto`` off
    and times an explicit check in onnxruntime, each with a note saying so."""
    missing = check.runtime == "openvino" and openvino.unavailable() is not None
    if check.mode == "auto":
        if missing:
            why = (f"speed not checked: OpenVINO is not installed here, so {check.candidate} was not timed in it "
                   "(pip install openvino)")
            return replace(check, mode="off", notes=(*check.notes, why))
        return replace(check, mode="decline")
    if missing and check.mode != "off":
        why = f"OpenVINO is not installed here: {check.candidate} timed in onnxruntime instead"
        return replace(check, runtime="onnxruntime", notes=(*check.notes, why))
    return check


@dataclass(frozen=True)
class SpeedVerdict:
    """The gate's finding: ``ratio`` (candidate over baseline median latency) or ``None`` when it could not be
    timed; ``note`` one line for the report; ``declined`` why the candidate is not kept ("" to keep it); ``chosen``
    the alternative that timed fastest, by its label, or "" for the candidate itself."""

    ratio: float | None
    note: str
    declined: str = ""
    chosen: str = ""


def judge_speed(check: SpeedCheck, before: onnx.ModelProto, after: onnx.ModelProto,
                feed: Mapping[str, np.ndarray], timers: Mapping[str, tuple[str, Timer]] = TIMERS,
                alternatives: Sequence[tuple[str, onnx.ModelProto]] = ()) -> SpeedVerdict:
    """Time ``after`` and its labelled ``alternatives`` against ``before`` on one sample (``feed``) in
    ``check.runtime``, all in one interleaved call, take the fastest and judge it by ``check.mode`` (resolved:
    ``decline`` or ``note``). A runtime that cannot run the models is a reason to decline in ``decline`` mode: the
    candidate would be handed to that runtime."""
    name, timer = timers[check.runtime]
    keeps_anyway = "speed_check=note would keep it"
    try:
        first, *timed = timer([before, after, *(model for _, model in alternatives)], feed, runs=RUNS, warmup=WARMUP,
                              budget_s=BUDGET_S)
    except (RuntimeError, ImportError) as e:  # OpenVINO's failures arrive as RuntimeError; onnxruntime's too
        why = f"{name} could not time the models: {openvino.openvino_reason(e)}"
        return SpeedVerdict(None, f"speed not checked: {why}", f"{why}; {keeps_anyway}" if check.mode == "decline"
                            else "")
    ratios = [round(t.median_ms / first.median_ms, 3) for t in timed]
    fastest = min(range(len(ratios)), key=ratios.__getitem__)
    labels = [check.candidate, *(label for label, _ in alternatives)]
    ratio, chosen = ratios[fastest], labels[fastest]
    measured = f"{ratio:.3f}× {check.baseline} latency (single thread, batch 1)"
    note = f"{chosen} timed in {name}: {measured}"
    if len(ratios) > 1:
        others = ", ".join(f"{label} {r:.3f}×" for i, (label, r) in enumerate(zip(labels, ratios, strict=True))
                           if i != fastest)
        note += f"; the fastest of {len(ratios)} verified candidates ({others})"
    chosen = "" if fastest == 0 else chosen
    if ratio >= 1.0 and check.mode == "decline":
        verdict = f"{ratio:.2f}× slower" if round(ratio, 2) > 1.0 else "no faster"
        return SpeedVerdict(ratio, note, f"{labels[fastest]} {verdict} here ({name}: {measured}); {keeps_anyway}",
                            chosen)
    return SpeedVerdict(ratio, note, chosen=chosen)

