"""``--goal latency|size|latency,size``: graphopt chooses the passes, each plan verified like any pipeline, the
winner measured.

A *plan* is the lossless passes of the default pipeline followed by one setting of one lossy pass that serves the
goal (``PassBase.goal_variants``: qdq-int8 static and dynamic, neuron-pruning, low-rank, … for latency; clustering,
int4, pruning with sparse storage, … for size; both sets for the trade-off). Each plan runs as a pipeline under the
whole budget, narrowed where it breaks it (``api.run_pipeline``), until the time budget is spent: then the running
plan's narrowing keeps the units it verified so far and no further plan starts. The verified results are then
compared once, together with the original: latency timed in one interleaved call (single thread, batch 1,
``perf.measure_latency``), never from timings taken during the search; size by the serialised model, exactly.
``latency,size`` scores a plan by the product of the two ratios (halving either counts the same).

Then the *combined* plans: each of the two best plans that change the graph's structure (``goal_stage`` 0: pruning,
low-rank) followed by the best that changes its numbers (stage 1: int8, float16, codebooks), the first held to a
share of the budget in proportion to the damage each did alone (``Tolerance.share``) so that the second finds some
left; the second is judged against the original by the whole budget, as every pass is. The verified combinations
and the best single plan are compared again, with the original, in one more call, which decides: the search never
returns a plan that measured slower than the best single plan in that call by more than the timing can tell.

The winner is the plan with the best figure that beats the original by ``MIN_GAIN`` at least, and of plans timed
within ``MIN_GAIN`` of the fastest (a tie: the timing cannot tell them apart) the one whose outputs stay closest to
the original's (its worst cosine), which is usually the one with fewer lossy passes. When none beats the original,
the verdict says "float is best" and the model is the lossless passes' (the prelude alone, verified like the rest).
The verdict marks the plans on the latency–size frontier (no other plan, nor the original, is as good in both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from graphopt import perf
from graphopt.pass_base import Goal, PassBase
from graphopt.perf import Latency
from graphopt.pipeline import describe_pipeline
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.verify.tolerance import Tolerance

if TYPE_CHECKING:
    from graphopt.outcome import PipelineResult
    from graphopt.report.model import Report

__all__ = ["DEFAULT_TIME_BUDGET", "GOALS", "MIN_GAIN", "GoalCandidate", "GoalName", "GoalVerdict", "Run", "choose",
           "figure", "frontier", "goal_plans", "search"]

log = logging.getLogger(__name__)

GOALS = ("latency", "size", "latency,size")
MIN_GAIN = 0.03
"""A plan wins only by beating the original by this share: identical sub-millisecond models measure up to 1.6%
apart in one interleaved run (``benchmarks/bench_timing.py``) and 2–3% in the benchmark tables, so a smaller gain is
not one."""
GoalName = Literal["latency", "size", "latency,size"]
Timer = Callable[..., list[Latency]]
Run = Callable[[Sequence[PassBase], bool, "Mapping[PassBase, Tolerance] | None", "float | None"],
              "tuple[Report, PipelineResult]"]
"""Runs a plan as a verified pipeline: (plan, speed gate on, per-pass budgets, deadline) → its report and result;
after the deadline (a ``time.monotonic()``) narrowing makes no further trial."""
DEFAULT_TIME_BUDGET = 240.0
"""Seconds of search by default: then the running plan's narrowing stops with the units verified so far, no plan
starts, and the verified results are timed once (measured in ``README.md``: a 90 MB MiniLM in under 5 minutes on
2 cores)."""


@dataclass(frozen=True)
class GoalCandidate:
    """One plan's outcome: ``status`` ``verified`` (its passes changed the model within the budget), ``unchanged``
    or ``not run`` (the time budget was spent), with ``reason``; ``latency_ratio``/``size_ratio`` against the
    original from its latest comparison; ``cosine`` the worst output's mean cosine against the original after the
    plan's last pass that changed the model; ``frontier`` whether no other measured plan, nor the original, is at
    least as fast and as small and better in one."""

    plan: str
    status: str
    reason: str = ""
    latency_ratio: float | None = None
    size_ratio: float | None = None
    cosine: float | None = None
    seconds: float = 0.0
    frontier: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "status": self.status, "reason": self.reason, "latency_ratio": self.latency_ratio,
                "size_ratio": self.size_ratio, "cosine": self.cosine, "seconds": round(self.seconds, 3),
                "frontier": self.frontier}


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
    (``passes``, by name) that offers one; for ``latency,size`` the variants for either goal, each setting once.
    The passes that change the numbers come first (``goal_stage`` 1: int8, float16, codebooks), as they pay most
    often, so that a time budget cuts the others; registry order within a stage."""
    plans: dict[str, list[PassBase]] = {}
    for cls in sorted(passes.values(), key=lambda c: -c.goal_stage):
        for part in _parts(goal):
            for variant in cls.goal_variants(part):
                plans.setdefault(repr(variant), [*prelude, variant])
    return list(plans.values())


def _parts(goal: GoalName) -> tuple[Goal, ...]:
    return ("latency", "size") if goal == "latency,size" else (goal,)


def figure(goal: GoalName, latency_ratio: float | None, size_ratio: float | None) -> float | None:
    """What ``goal`` minimises: the latency ratio, the size ratio, or for ``latency,size`` their product."""
    if goal == "latency":
        return latency_ratio
    if goal == "size":
        return size_ratio
    return None if latency_ratio is None or size_ratio is None else latency_ratio * size_ratio


def choose(goal: GoalName, original: onnx.ModelProto, finals: Sequence[tuple[GoalCandidate, onnx.ModelProto]],
           feed: Mapping[str, np.ndarray], timer: Timer | None = None, runs: int = 300
           ) -> tuple[GoalVerdict, int | None]:
    """Compare the verified ``finals`` (candidate, model) with ``original`` once and pick the winner: the index
    into ``finals``, or ``None`` when the original is best. Latency is timed for all of them in one call of
    ``timer`` (``perf.measure_latency`` by default); size is each model's serialised size."""
    base_size = original.ByteSize()
    sizes = [round(model.ByteSize() / base_size, 4) for _, model in finals]
    ratios: list[float | None] = [None] * len(finals)
    measured: dict[str, Any] = {}
    if "latency" in _parts(goal) and finals:
        timer = timer or perf.measure_latency  # looked up per call: tests replace it
        original_time, *timed = timer([original, *(model for _, model in finals)], feed, runs=runs)
        ratios = [round(t.median_ms / original_time.median_ms, 3) for t in timed]
        measured = {"original_ms": original_time.median_ms, "runs": original_time.runs}
    scored = [replace(c, latency_ratio=r, size_ratio=s) for (c, _), r, s in zip(finals, ratios, sizes, strict=True)]
    key = [figure(goal, r, s) for r, s in zip(ratios, sizes, strict=True)]
    better = {i: k for i, k in enumerate(key) if k is not None and k <= 1.0 - MIN_GAIN}
    if not better:
        word = {"latency": "faster", "size": "smaller"}.get(goal, "faster × smaller")
        why = (f"float is best: no verified plan was {MIN_GAIN:.0%} or more {word} than the original" if finals else
               "float is best: no plan changed the model within the budget")
        return GoalVerdict(goal, tuple(scored), "", why, measured), None
    best = min(better, key=better.__getitem__)
    tie = ""
    if "latency" in _parts(goal):  # sizes are exact; latencies within MIN_GAIN of each other are a tie
        ties = [i for i, k in better.items() if k <= better[best] * (1 + MIN_GAIN)]
        closest = max(ties, key=lambda i: (scored[i].cosine or 0.0, -better[i]))
        if closest != best:
            best, tie = closest, (f" (within {MIN_GAIN:.0%} of the fastest, a tie the timing cannot break: the plan "
                                  "that keeps the outputs closest)")
    others = [f"{scored[i].plan} {better[i]:.3f}×" for i in better if i != best]
    why = f"{scored[best].plan}: {_figure_text(goal, scored[best])}{tie}" + (
        f", ahead of {', '.join(others)}" if others else "")
    return GoalVerdict(goal, tuple(scored), scored[best].plan, why, measured), best


def _figure_text(goal: GoalName, c: GoalCandidate) -> str:
    if goal == "latency":
        return f"{c.latency_ratio:.3f}× the original's latency"
    if goal == "size":
        return f"{c.size_ratio:.3f}× the original's size"
    return (f"{c.latency_ratio:.3f}× the original's latency and {c.size_ratio:.3f}× its size (product "
            f"{figure(goal, c.latency_ratio, c.size_ratio):.3f}×)")


def frontier(candidates: Sequence[GoalCandidate]) -> tuple[GoalCandidate, ...]:
    """``candidates`` with ``frontier`` set on those measured for latency and size that no other one, nor the
    original (1×, 1×), matches in both figures and beats in one."""
    points = [(c.latency_ratio, c.size_ratio) for c in candidates
              if c.latency_ratio is not None and c.size_ratio is not None]

    def dominated(lat: float, size: float) -> bool:
        return any(a <= lat and b <= size and (a < lat or b < size) for a, b in [(1.0, 1.0), *points])

    return tuple(replace(c, frontier=c.latency_ratio is not None and c.size_ratio is not None
                         and not dominated(c.latency_ratio, c.size_ratio)) for c in candidates)


@dataclass(frozen=True)
class _Tried:
    candidate: GoalCandidate
    plan: list[PassBase]
    record: Report | None = None
    result: PipelineResult | None = None


def search(goal: GoalName, run: Run, prelude: list[PassBase], passes: Mapping[str, type[PassBase]],
           original: onnx.ModelProto, feed: Mapping[str, np.ndarray], tolerance: Tolerance,
           time_budget: float | None, progress: Progress = NULL_PROGRESS
           ) -> tuple[Report, PipelineResult, list[PassBase]]:
    """Run the lossless ``prelude`` alone, every plan for ``goal`` and the combined plans while the time budget
    lasts, compare the verified results and return the winner's report (with the goal verdict in it), result and
    plan, or the prelude's when the original is best. ``progress`` shows the plan being tried."""
    start = time.monotonic()
    deadline = None if time_budget is None else start + time_budget
    count = 0

    def spent() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def attempt(plan: list[PassBase], own: Sequence[PassBase], budgets: Mapping[PassBase, Tolerance] | None = None,
                note: str = "", every: bool = True) -> _Tried:
        nonlocal count
        name = describe_pipeline(plan) or "(no pass)"
        if plan is not prelude and spent():
            return _Tried(GoalCandidate(name, "not run", f"the time budget ({time_budget:g} s) was spent"), plan)
        began, count = time.monotonic(), count + 1
        log.info("goal %s: %s", goal, name)
        with progress.task(f"--goal {goal}, plan {count}: {name}", 1) as advance:
            # for size, int8 that is not faster still counts, and the trade-off weighs speed itself
            record, result = run(plan, goal == "latency", budgets, None if plan is prelude else deadline)
            advance(1)
        return _Tried(_judged(name, record, {p.name for p in own}, time.monotonic() - began, note, every), plan,
                      record, result)

    tried = [attempt(prelude, prelude, every=False)]
    tried += [attempt(plan, plan[len(prelude):]) for plan in goal_plans(goal, prelude, passes)]
    singles = [t for t in tried if t.candidate.status == "verified"]
    verdict, best = choose(goal, original, [(t.candidate, _model(t)) for t in singles], feed)
    tried = _rescored(tried, verdict)
    winner = _find(tried, singles[best]) if best is not None else None
    combined = [attempt([*prelude, first, second], [first, second], {first: tolerance.share(share)},
                        f"{first.name} held to {share:.0%} of the budget")
                for first, second, share in _combinations(goal, tried, len(prelude))]
    tried += combined
    verified = [t for t in combined if t.candidate.status == "verified"]
    if verified:
        finals = [t for t in (winner, *verified) if t is not None]
        final, best = choose(goal, original, [(t.candidate, _model(t)) for t in finals], feed)
        tried = _rescored(tried, final)
        winner = _find(tried, finals[best]) if best is not None else None
        verdict = replace(final, why=f"{final.why} (compared again with the combined plans)")
    verdict = replace(verdict, candidates=frontier([t.candidate for t in tried]),
                      winner=winner.candidate.plan if winner is not None else "")
    chosen = winner if winner is not None else tried[0]
    assert chosen.record is not None and chosen.result is not None
    chosen.record.goal = verdict.to_dict()
    return chosen.record, chosen.result, chosen.plan


def _judged(name: str, record: Report, own: set[str], seconds: float, note: str, every: bool) -> GoalCandidate:
    """A plan's candidate from its report: ``verified`` when every pass it adds (``own``; with ``every`` off, any
    of them) changed the model within the budget, else ``unchanged`` with each one's status."""
    records = [p for p in record.passes if p.name in own]
    changed = [p for p in records if p.status in ("applied", "narrowed")]
    cosines = [p.worst["cosine"] for p in record.passes if p.worst and p.worst.get("cosine") is not None]
    said = "; ".join(f"{p.name} {p.status}: {p.reason}" if p.reason and p.status not in ("applied", "narrowed")
                     else f"{p.name} {p.status}" for p in records) or "nothing to change"
    said = f"{note}; {said}" if note else said
    if changed and (len(changed) == len(own) or not every):
        return GoalCandidate(name, "verified", said, cosine=cosines[-1] if cosines else None, seconds=seconds)
    return GoalCandidate(name, "unchanged", said, seconds=seconds)


def _model(tried: _Tried) -> onnx.ModelProto:
    assert tried.result is not None
    return tried.result.model


def _rescored(tried: list[_Tried], verdict: GoalVerdict) -> list[_Tried]:
    """``tried`` with the candidates ``verdict`` measured replaced by their scored copies."""
    scored = {c.plan: c for c in verdict.candidates}
    return [replace(t, candidate=scored.get(t.candidate.plan, t.candidate)) for t in tried]


def _find(tried: list[_Tried], wanted: _Tried) -> _Tried:
    return next(t for t in tried if t.candidate.plan == wanted.candidate.plan)


COMBINED = 2
"""How many structural plans are each combined with the best numeric one."""


def _combinations(goal: GoalName, tried: Sequence[_Tried], prelude: int) -> list[tuple[PassBase, PassBase, float]]:
    """The ``COMBINED`` best verified single plans that change the structure (stage 0), each followed by the best
    that changes the numbers (stage 1), all beating the original; with each first pass's share of the budget: in
    proportion to the damage (1 − worst cosine) it and the second did alone, kept within [0.25, 0.75]. Empty when
    a stage has no such plan."""
    stages: dict[int, list[tuple[float, _Tried]]] = {0: [], 1: []}
    for t in tried:
        if len(t.plan) != prelude + 1 or t.candidate.status != "verified":
            continue
        score = figure(goal, t.candidate.latency_ratio, t.candidate.size_ratio)
        if score is not None and score < 1.0 and t.plan[-1].goal_stage in stages:
            stages[t.plan[-1].goal_stage].append((score, t))
    if not stages[0] or not stages[1]:
        return []
    second = min(stages[1], key=lambda st: st[0])[1]
    pairs = []
    for _, first in sorted(stages[0], key=lambda st: st[0])[:COMBINED]:
        damages = [1.0 - c if c is not None else 0.0 for c in (first.candidate.cosine, second.candidate.cosine)]
        share = damages[0] / sum(damages) if sum(damages) > 0 else 0.5
        pairs.append((first.plan[-1], second.plan[-1], min(0.75, max(0.25, share))))
    return pairs
