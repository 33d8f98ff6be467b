"""``--goal latency|size``: graphopt chooses the passes, each plan verified like any pipeline, the winner measured.

A *plan* is the lossless passes of the default pipeline followed by one setting of one lossy pass that serves the
goal (``PassBase.goal_variants``: qdq-int8 static and dynamic, neuron-pruning, low-rank, … for latency; clustering,
int4, pruning with sparse storage, … for size). Each plan runs as a pipeline under the whole budget, narrowed where
it breaks it (``api.run_pipeline``), until the time budget is spent; a plan is not started once it is. Then the
verified results are compared once, together with the original: for ``latency`` timed in one interleaved call
(single thread, batch 1, ``perf.measure_latency``), never from timings taken during the search; for ``size`` by
their serialised size, exactly. The winner is the fastest (smallest) one that beats the original by ``MIN_GAIN``
at least; when none does, the verdict says "float is best" and the model is the lossless passes' (the prelude alone,
verified like the rest).

Not yet: plans that combine passes under a split budget, and per-layer choices across passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import onnx

from graphopt import perf
from graphopt.pass_base import PassBase
from graphopt.perf import Latency

__all__ = ["GOALS", "MIN_GAIN", "GoalCandidate", "GoalName", "GoalVerdict", "choose", "goal_plans"]

GOALS = ("latency", "size")
MIN_GAIN = 0.03
"""A plan wins only by beating the original by this share: identical models measure up to 2–3% apart in one
interleaved run of sub-millisecond models (``perf.measure_latency``), so a smaller gain is not one."""
GoalName = Literal["latency", "size"]
Timer = Callable[..., list[Latency]]


@dataclass(frozen=True)
class GoalCandidate:
    """One plan's outcome: ``status`` ``verified`` (it changed the model within the budget), ``unchanged``,
    ``failed`` or ``not run`` (the time budget was spent), with ``reason``; ``latency_ratio``/``size_ratio`` against
    the original from the final comparison; ``cosine`` the lowest mean cosine of any output against the original."""

    plan: str
    status: str
    reason: str = ""
    latency_ratio: float | None = None
    size_ratio: float | None = None
    cosine: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "status": self.status, "reason": self.reason, "latency_ratio": self.latency_ratio,
                "size_ratio": self.size_ratio, "cosine": self.cosine, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class GoalVerdict:
    """Every plan tried and the one kept: ``winner`` is a plan, or ``""`` when the original is best."""

    goal: str
    candidates: tuple[GoalCandidate, ...]
    winner: str
    why: str
    measured: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "winner": self.winner or None, "why": self.why,
                "candidates": [c.to_dict() for c in self.candidates], "measured": dict(self.measured)}


def goal_plans(goal: GoalName, prelude: Sequence[PassBase], passes: Mapping[str, type[PassBase]]
               ) -> list[list[PassBase]]:
    """The plans for ``goal``: ``prelude`` (the lossless passes) then one goal variant of each registered pass
    (``passes``, by name) that offers one, in registry order."""
    return [[*prelude, variant] for cls in passes.values() for variant in cls.goal_variants(goal)]


def choose(goal: GoalName, original: onnx.ModelProto, finals: Sequence[tuple[GoalCandidate, onnx.ModelProto]],
           feed: Mapping[str, np.ndarray], timer: Timer | None = None, runs: int = 300
           ) -> tuple[GoalVerdict, int | None]:
    """Compare the verified ``finals`` (candidate, model) with ``original`` once and pick the winner: the index
    into ``finals``, or ``None`` when the original is best. Latency is timed for all of them in one call of
    ``timer`` (``perf.measure_latency`` by default); size is each model's serialised size."""
    base_size = original.ByteSize()
    sizes = [model.ByteSize() / base_size for _, model in finals]
    ratios: list[float | None] = [None] * len(finals)
    measured: dict[str, Any] = {}
    if goal == "latency" and finals:
        timer = timer or perf.measure_latency  # looked up per call: tests replace it
        original_time, *timed = timer([original, *(model for _, model in finals)], feed, runs=runs)
        ratios = [round(t.median_ms / original_time.median_ms, 3) for t in timed]
        measured = {"original_ms": original_time.median_ms, "runs": original_time.runs}
    scored = [replace(c, latency_ratio=r, size_ratio=round(s, 4)) for (c, _), r, s in zip(finals, ratios, sizes,
                                                                                            strict=True)]
    key = [r if goal == "latency" else s for r, s in zip(ratios, sizes, strict=True)]
    better = [i for i, k in enumerate(key) if k is not None and k <= 1.0 - MIN_GAIN]
    if not better:
        word = "faster" if goal == "latency" else "smaller"
        why = (f"float is best: no verified plan was {MIN_GAIN:.0%} or more {word} than the original" if finals else
               "float is best: no plan changed the model within the budget")
        return GoalVerdict(goal, tuple(scored), "", why, measured), None
    best = min(better, key=lambda i: key[i])  # type: ignore[arg-type, return-value]
    figure = f"{key[best]:.3f}× the original's {'latency' if goal == 'latency' else 'size'}"
    others = [f"{scored[i].plan} {key[i]:.3f}×" for i in better if i != best]
    why = f"{scored[best].plan}: {figure}" + (f", ahead of {', '.join(others)}" if others else "")
    return GoalVerdict(goal, tuple(scored), scored[best].plan, why, measured), best

