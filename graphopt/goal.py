"""``--goal latency|size|latency,size``: graphopt chooses the passes, each plan verified like any pipeline, the
winner measured.

A *plan* is the lossless passes of the default pipeline followed by one setting of one lossy pass that serves the
goal (``PassBase.goal_variants``: qdq-int8 static and dynamic, neuron-pruning, low-rank, … for latency; clustering,
int4, pruning with sparse storage, … for size; both sets for the trade-off). Each plan runs as a pipeline under the
whole budget, narrowed where it breaks it (``api.run_pipeline``). The search goes stage by stage: first the plans
that change the numbers (``goal_stage`` 1: int8, float16, codebooks), as they pay most often, then those that change
the structure (stage 0: pruning, low-rank). After each stage's plans, and after the plans it combines, the verified
results are compared once with the best so far and the original: latency timed in one interleaved call (single
thread, batch 1, ``perf.measure_latency``), never from timings taken during the search; size by the serialised
model, exactly. ``latency,size`` scores a plan by the product of the two ratios (halving either counts the same).

A lossless pass's speed gate times it on the float model, where it may time level or a little slower and still pay
after int8 (the PRelu rewrite). When the gate declines one for ``latency``, the lossless passes run again with it
kept (``PassBase.ungated``), and the plans that change the numbers run after both forms; the plans that change the
structure continue the form the best plan so far starts with.

The *combined* plans (``_combinations``) give each layer the treatment that suits it:

- numbers: the best plan of the stage followed by each of the next best, which treat what it left: int8 where
  static ranges hold, then dynamic int8 for what static int8 cannot run (LSTMs) or had to leave float;
- structure: each of the two best structural plans followed by the best plan that changes the numbers.

Each combination runs first in sequence, every pass judged against the original by the whole budget: the damage
two passes do together is often not the sum of what each did alone (static int8 and an int8 LSTM in a text
recogniser miss mostly the same positions). When that leaves the passes after the first too little (one narrowed or
rolled back), it runs again with the leading pass held to a share of the budget in proportion to the damage each
part did alone (``Tolerance.share``), so that the rest finds some left. The search never returns a plan that
measured slower than the best so far in the same call by more than the timing can tell.

The winner is the plan with the best figure that beats the original by ``MIN_GAIN`` at least, and of plans timed
within ``MIN_GAIN`` of the fastest (a tie: the timing cannot tell them apart) the one whose outputs stay closest to
the original's (its worst cosine), which is usually the one with fewer lossy passes. When none beats the original,
the verdict says "float is best" and the model is the lossless passes' (the prelude alone, verified like the rest).
The verdict marks the plans on the latency–size frontier (no other plan, nor the original, is as good in both).

The time budget: a plan starts only when the time left covers what it is expected to take (its passes' own runs as
single plans, or for a pass not run yet the quickest plan so far); the running plan's narrowing stops at the
deadline with the units it verified so far.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from graphopt import perf
from graphopt._proto import model_size
from graphopt.pass_base import Goal, PassBase
from graphopt.perf import Latency
from graphopt.pipeline import describe_pipeline
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.verify.tolerance import Tolerance

if TYPE_CHECKING:
    from graphopt.outcome import PipelineResult
    from graphopt.report.model import Report

__all__ = ["DEFAULT_TIME_BUDGET", "GOALS", "MIN_GAIN", "TIMING_SECONDS", "GoalCandidate", "GoalName", "GoalVerdict",
           "Run", "choose", "figure", "frontier", "goal_plans", "search"]

log = logging.getLogger(__name__)

GOALS = ("latency", "size", "latency,size")
MIN_GAIN = 0.03
"""A plan wins only by beating the original by this share: identical sub-millisecond models measure up to 1.6%
apart in one interleaved run (``benchmarks/bench_timing.py``) and 2–3% in the benchmark tables, so a smaller gain is
not one."""
GoalName = Literal["latency", "size", "latency,size"]
Timer = Callable[..., list[Latency]]


@dataclass(frozen=True)
class Resume:
    """An earlier run (its report and result) of the first ``ran`` passes of a plan, which a run of the plan
    continues instead of running them again."""

    record: Report
    result: PipelineResult
    ran: int


Run = Callable[[Sequence[PassBase], bool, "Mapping[PassBase, Tolerance] | None", "float | None", "Resume | None"],
               "tuple[Report, PipelineResult]"]
"""Runs a plan as a verified pipeline: (plan, speed gate on, per-pass budgets, deadline, resume) → its report and
result; after the deadline (a ``time.monotonic()``) narrowing makes no further trial."""
DEFAULT_TIME_BUDGET = 240.0
"""Seconds of search by default: then the running plan's narrowing stops with the units verified so far, no plan
starts, and the verified results are timed once (measured in ``README.md``: a 90 MB MiniLM in under 5 minutes on
2 cores)."""


@dataclass(frozen=True)
class GoalCandidate:
    """One plan's outcome: ``status`` ``verified`` (its passes changed the model within the budget), ``unchanged``
    or ``not run`` (the time budget was spent), with ``reason``; ``latency_ratio``/``size_ratio`` against the
    original from its latest comparison; ``cosine`` the worst output's mean cosine against the original after the
    plan's last pass that changed the model, and ``budget_used`` the largest share of the budget its outputs use
    there (``_budget_used``); ``frontier`` whether no other measured plan, nor the original, is at least as fast and
    as small and better in one."""

    plan: str
    status: str
    reason: str = ""
    latency_ratio: float | None = None
    size_ratio: float | None = None
    cosine: float | None = None
    seconds: float = 0.0
    frontier: bool = False
    budget_used: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "status": self.status, "reason": self.reason, "latency_ratio": self.latency_ratio,
                "size_ratio": self.size_ratio, "cosine": self.cosine, "seconds": round(self.seconds, 3),
                "frontier": self.frontier, "budget_used": self.budget_used}


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


TIMING_SECONDS = 1.0
"""Seconds of timed runs per model when plans are compared (at most ``choose``'s ``runs`` each): a 0.5 ms model
gets about a thousand runs in each of its two sessions, a 15 ms one about thirty."""


def choose(goal: GoalName, original: onnx.ModelProto, finals: Sequence[tuple[GoalCandidate, onnx.ModelProto]],
           feed: Mapping[str, np.ndarray], timer: Timer | None = None, runs: int = 2000
           ) -> tuple[GoalVerdict, int | None]:
    """Compare the verified ``finals`` (candidate, model) with ``original`` once and pick the winner: the index
    into ``finals``, or ``None`` when the original is best. Latency is timed for all of them in one call of
    ``timer`` (``perf.measure_latency`` by default), ``TIMING_SECONDS`` per model; size is each model's serialised
    size."""
    base_size = model_size(original)  # with the weights kept in place in their files (``graphopt.weights``)
    sizes = [round(model_size(model) / base_size, 4) for _, model in finals]
    ratios: list[float | None] = [None] * len(finals)
    measured: dict[str, Any] = {}
    if "latency" in _parts(goal) and finals:
        timer = timer or perf.measure_latency  # looked up per call: tests replace it
        original_time, *timed = timer([original, *(model for _, model in finals)], feed, runs=runs,
                                      budget_s=TIMING_SECONDS * (1 + len(finals)))
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
    budgets: Mapping[PassBase, Tolerance] = field(default_factory=dict)

    def own(self, prelude: int) -> list[PassBase]:
        """The plan's passes after the prelude."""
        return self.plan[prelude:]


def search(goal: GoalName, run: Run, prelude: list[PassBase], passes: Mapping[str, type[PassBase]],
           original: onnx.ModelProto, feed: Mapping[str, np.ndarray], tolerance: Tolerance,
           time_budget: float | None, progress: Progress = NULL_PROGRESS
           ) -> tuple[Report, PipelineResult, list[PassBase]]:
    """Run the lossless ``prelude`` alone, then stage by stage (numbers, then structure) every plan for ``goal`` of
    that stage and the combined plans it makes possible, while the time budget lasts; compare the verified results
    after each step with the best so far and return the winner's report (with the goal verdict in it), result and
    plan, or the prelude's when the original is best. ``progress`` shows the plan being tried."""
    deadline = None if time_budget is None else time.monotonic() + time_budget
    count = 0
    seconds: dict[str, float] = {}  # how long each single plan's own pass took, by the pass's setting

    def expected(own: Sequence[PassBase]) -> float:
        """What running ``own`` is expected to take: each pass's single run, or for an untried pass the quickest
        so far."""
        quickest = min(seconds.values(), default=0.0)
        return sum(seconds.get(repr(p), quickest) for p in own)

    def attempt(plan: list[PassBase], own: Sequence[PassBase], budgets: Mapping[PassBase, Tolerance] | None = None,
                note: str = "", every: bool = True, suffix: str = "", after: _Tried | None = None) -> _Tried:
        """Run ``plan`` (whose passes after the prelude are ``own``; ``every`` off: a form of the prelude itself)
        as a verified pipeline, continuing ``after`` (a run of its first passes) when given."""
        nonlocal count
        name = (describe_pipeline(plan) or "(no pass)") + suffix
        resume = Resume(after.record, after.result, len(after.plan)) if after and after.record and after.result else None
        if plan is not prelude and deadline is not None and (
                time.monotonic() + expected(plan[resume.ran if resume else len(prelude):]) > deadline):
            why = (f"the time budget ({time_budget:g} s) was spent" if time.monotonic() >= deadline else
                   f"too little of the time budget ({time_budget:g} s) was left for it")
            return _Tried(GoalCandidate(name, "not run", why), plan, budgets=budgets or {})
        began, count = time.monotonic(), count + 1
        log.info("goal %s: %s", goal, name)
        with progress.task(f"--goal {goal}, plan {count}: {name}", 1) as advance:
            # for size, int8 that is not faster still counts, and the trade-off weighs speed itself
            record, result = run(plan, goal == "latency", budgets, None if plan is prelude else deadline, resume)
            advance(1)
        took = time.monotonic() - began
        if len(own) == 1 and every:
            seconds[repr(own[0])] = took
        return _Tried(_judged(name, record, [p.name for p in own], took, note, every), plan, record, result,
                      budgets or {})

    tried = [attempt(prelude, prelude, every=False)]
    ungated = _ungated(prelude, tried[0].record) if goal == "latency" else None
    if ungated is not None:  # a lossless rewrite slower alone may pay after int8: the stage of numbers tries both
        kept = [p.name for p, q in zip(prelude, ungated, strict=True) if p is not q]
        tried.append(attempt(ungated, ungated, every=False, note=f"{', '.join(kept)} kept though slower alone"))
    bases = [t for t in tried if t.result is not None]  # the forms of the prelude that plans continue
    winner: _Tried | None = None
    verdict: GoalVerdict | None = None

    def compare(new: Sequence[_Tried], again: str = "") -> None:
        """Time the verified plans of ``new`` once with the best so far and the original; keep the winner."""
        nonlocal winner, verdict
        finals = [t for t in (winner, *new) if t is not None and t.candidate.status == "verified"]
        if not [t for t in new if t.candidate.status == "verified"] and verdict is not None:
            return
        verdict, best = choose(goal, original, [(t.candidate, _model(t)) for t in finals], feed)
        verdict = replace(verdict, why=f"{verdict.why} ({again})") if again and best is not None else verdict
        at = [next(i for i, t in enumerate(tried) if t is final) for final in finals]
        for i, scored in zip(at, verdict.candidates, strict=True):
            tried[i] = replace(tried[i], candidate=scored)
        winner = tried[at[best]] if best is not None else None

    def base_of(t: _Tried) -> _Tried:
        """The run of the prelude's form that ``t``'s plan starts with."""
        return next(b for b in bases if t.plan[:len(prelude)] == b.plan)

    def combine(lead: _Tried, rest: _Tried) -> list[_Tried]:
        """``lead``'s pass then ``rest``'s passes, after ``lead``'s form of the prelude: in sequence, each judged by
        the whole budget (what the lead damages may overlap what the rest does); when that leaves the rest too
        little (one of them narrowed or rolled back), also with the lead held to the share ``_lead_share`` gives
        it, if any."""
        first, base = lead.plan[-1], base_of(lead)
        own = [first, *rest.own(len(prelude))]
        chain = attempt([*base.plan, *own], own, rest.budgets, "in sequence, each judged by the whole budget",
                        after=lead)  # the lead's own run is the sequence's first part
        share = _lead_share(goal, lead.candidate, rest.candidate)
        if chain.record is None or not _starved(chain.record, own) or share is None:
            return [chain]
        split = attempt([*base.plan, *own], own, {**rest.budgets, first: tolerance.share(share)},
                        f"{first.name} held to {share:.0%} of the budget: what follows gains more per share of the "
                        f"budget it uses", suffix=f" (budget split {share:.0%}/{1 - share:.0%})", after=base)
        return [chain, split]

    plans = goal_plans(goal, prelude, passes)
    for stage in sorted({plan[-1].goal_stage for plan in plans}, reverse=True):
        # the stage of numbers runs after every form of the prelude; structure after the form the best plan so far
        # starts with (``bases[0]`` when none beats the original)
        starts = bases if verdict is None else [base_of(winner) if winner is not None else bases[0]]
        singles = [attempt([*base.plan, *plan[len(prelude):]], plan[len(prelude):], after=base)
                   for base in starts for plan in plans if plan[-1].goal_stage == stage]
        tried += singles
        if verdict is None:
            compare([*bases, *singles])  # the lossless passes alone are a plan too
        else:
            compare(singles, "compared again with the next stage's plans")
        combined = [t for lead, rest in _combinations(goal, tried, len(prelude), stage) for t in combine(lead, rest)]
        tried += combined
        compare(combined, "compared again with the combined plans")
    assert verdict is not None
    verdict = replace(verdict, candidates=frontier([t.candidate for t in tried]),
                      winner=winner.candidate.plan if winner is not None else "")
    chosen = winner if winner is not None else tried[0]
    assert chosen.record is not None and chosen.result is not None
    chosen.record.goal = verdict.to_dict()
    return chosen.record, chosen.result, chosen.plan


def _ungated(prelude: Sequence[PassBase], record: Report | None) -> list[PassBase] | None:
    """``prelude`` with each pass whose speed gate declined it in ``record`` (the prelude's run) kept anyway
    (``PassBase.ungated``), or ``None`` when the gate declined none that can be kept."""
    declined = {p.name for p in record.passes if p.status == "declined"} if record is not None else set()
    kept = [(p.ungated() if p.name in declined else None) or p for p in prelude]
    return kept if any(p is not q for p, q in zip(prelude, kept, strict=True)) else None


def _judged(name: str, record: Report, own: Sequence[str], seconds: float, note: str, every: bool
            ) -> GoalCandidate:
    """A plan's candidate from its report: ``verified`` when every pass it adds (``own``, by name; with ``every``
    off, any of them) changed the model within the budget, else ``unchanged`` with each one's status."""
    records = [p for p in record.passes if p.name in own]
    changed = [p for p in records if p.status in ("applied", "narrowed")]
    worst = [p.worst for p in record.passes if p.worst and p.worst.get("cosine") is not None]
    judged = [v for p in record.passes for v in p.verifications if v.get("against") == "original"]
    said = "; ".join(f"{p.name} {p.status}: {p.reason}" if p.reason and p.status not in ("applied", "narrowed")
                     else f"{p.name} {p.status}" for p in records) or "nothing to change"
    said = f"{note}; {said}" if note else said
    if changed and (len(changed) == len(own) or not every):
        return GoalCandidate(name, "verified", said, cosine=worst[-1]["cosine"] if worst else None, seconds=seconds,
                             budget_used=_budget_used(judged[-1], record.tolerance) if judged else None)
    return GoalCandidate(name, "unchanged", said, seconds=seconds)


def _budget_used(verification: Mapping[str, Any], tolerance: Mapping[str, Any]) -> float | None:
    """The largest share of the budget (``tolerance``, as the report writes it, each output's own where it has one)
    that an output of ``verification`` (a report's verification against the original) uses: (1 − lower bound) /
    (1 − bound) for cosine, top-1 and IoU (the mean where no bound was computed), whichever the budget sets;
    ``None`` when it sets none of them."""
    shares = []
    for output, stats in verification.get("outputs", {}).items():
        bounds = {**tolerance, **tolerance.get("per_output", {}).get(output, {})}
        for key in ("cosine", "top1", "iou"):
            bound, value = bounds.get(key), stats.get(f"{key}_low")
            value = stats.get(key) if value is None else value
            if bound is not None and value is not None and bound < 1.0:
                shares.append((1.0 - value) / (1.0 - bound))
    return max(shares, default=None)


def _model(tried: _Tried) -> onnx.ModelProto:
    assert tried.result is not None
    return tried.result.model


def _starved(record: Report, own: Sequence[PassBase]) -> bool:
    """Whether a pass after the first of ``own`` (the plan's passes after the prelude) was narrowed or rolled back
    in ``record``: the budget, not the pass, bound it."""
    records = [p for p in record.passes if p.name in {q.name for q in own}]
    return any(p.status in ("narrowed", "rolled back") for p in records[1:])


COMBINED = 2
"""How many plans are each combined with the best one."""


def _combinations(goal: GoalName, tried: Sequence[_Tried], prelude: int, stage: int
                  ) -> list[tuple[_Tried, _Tried]]:
    """The combinations of what ``stage`` verified, each as (the single plan whose pass leads, the plan whose passes
    follow it), among the verified plans that beat the original by ``MIN_GAIN`` at least:

    - numbers (stage 1): the best single plan of the stage, followed by each of the ``COMBINED`` next best, which
      treat what it left (int8 where static ranges hold, then dynamic int8 for the LSTMs static int8 cannot run);
    - structure (stage 0): each of the ``COMBINED`` best single plans of the stage, followed by the best plan
      whose passes all change the numbers (a single plan or a combination)."""
    scored: list[tuple[float, _Tried]] = []
    for t in tried:
        value = figure(goal, t.candidate.latency_ratio, t.candidate.size_ratio)
        if t.candidate.status == "verified" and value is not None and value <= 1.0 - MIN_GAIN and t.own(prelude):
            scored.append((value, t))
    ranked = [t for _, t in sorted(scored, key=lambda st: st[0])]
    settings: dict[str, _Tried] = {}  # each pass setting once, after the form of the prelude it did best after
    for t in ranked:
        if len(t.own(prelude)) == 1 and t.plan[-1].goal_stage == stage:
            settings.setdefault(repr(t.plan[-1]), t)
    singles = list(settings.values())
    if stage == 0:
        numeric = [t for t in ranked if all(p.goal_stage > 0 for p in t.own(prelude))]
        return [(first, numeric[0]) for first in singles[:COMBINED]] if numeric else []
    return [(singles[0], second) for second in singles[1:COMBINED + 1]] if singles else []


SHARES = (0.1, 0.9)
"""The least and most of the budget a leading pass is held to when the budget is split."""


def _lead_share(goal: GoalName, lead: GoalCandidate, rest: GoalCandidate) -> float | None:
    """The share of the budget to hold the leading pass to when what follows found too little left in sequence,
    allocated by each part's measured gain per share of the budget it used alone (gain: −log of its figure): when
    the rest gains more per share, it gets the share it used alone and the lead the remainder (within ``SHARES``);
    ``None`` when the lead gains as much per share or more (then the lead alone is the better use of the budget)
    or a part's use is unknown."""
    lead_figure, rest_figure = (figure(goal, c.latency_ratio, c.size_ratio) for c in (lead, rest))
    lead_used, rest_used = lead.budget_used, rest.budget_used
    if lead_figure is None or rest_figure is None or lead_used is None or rest_used is None:
        return None
    lead_gain, rest_gain = -math.log(lead_figure), -math.log(rest_figure)
    if lead_gain * rest_used >= rest_gain * lead_used:  # the lead gains as much per share of budget, or more
        return None
    return min(SHARES[1], max(SHARES[0], 1.0 - rest_used))
