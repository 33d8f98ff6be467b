"""Screening: judge a candidate on the first verification samples, to rank it or to reject it early.

A narrowing search tries dozens of candidates, and most of them need not see every verification sample: each unit
applied alone is only ranked, and a candidate far outside the budget fails as surely on 32 samples as on 1,000.
``screen`` reads a candidate's outputs on the first ``SCREEN_SAMPLES`` samples and says how far they are from the
reference's (``ranking.badness``, what units are ranked by) and whether the candidate clearly fails: a rule that
admits no error is broken (a NaN, a changed shape, an integer mismatch, an error above ``atol``: more samples cannot
undo it), or the one-sided ``SCREEN_CONFIDENCE`` upper bound of a mean the budget bounds (cosine, top-1, mask IoU)
is already below it. A candidate that does not clearly fail goes on to every verification sample; screening never
accepts anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from graphopt.outputs import Outputs
from graphopt.verify.intervals import upper_bound
from graphopt.verify.metrics import ErrorStats
from graphopt.verify.output_kinds import OutputKind
from graphopt.verify.ranking import badness
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verification, Verifier

__all__ = ["RANK_SAMPLES", "SCREEN_CONFIDENCE", "SCREEN_SAMPLES", "Screen", "screen", "screen_stages",
           "screen_verification"]

SCREEN_SAMPLES: Final = 32
"""Verification samples a search screens a candidate on before it runs the rest."""

RANK_SAMPLES: Final = 24
"""Samples a unit applied alone is ranked on (``graphopt.sensitivity``: calibration samples where there are real
ones); the ranking's cost grows with them. On a text detector's 46 int8 layers, ranking on 32 kept 38 within the
budget, on 24 kept 37, on 16 kept 34–35, on 64 (of the verification samples, before ranking moved to calibration
samples) 36; its 53 pruning levels kept 18 on 32 and on 24, in 23 and 18 s of ranking."""

SCREEN_GROWTH: Final = 4
"""Each further screening stage covers this many times the samples of the one before."""

SCREEN_CONFIDENCE: Final = 0.999
"""Confidence of the upper bound that rejects a candidate early: a search screens dozens of candidates, and a wrong
early rejection costs a unit the budget would have kept."""


@dataclass(frozen=True)
class Screen:
    """A candidate judged on the first ``samples`` verification samples: how far it is from the reference (what a
    search ranks by) and, when it clearly fails the budget, why (``""`` otherwise)."""

    samples: int
    badness: float
    failure: str = ""


def screen_stages(samples: int, first: int = SCREEN_SAMPLES) -> tuple[int, ...]:
    """How many samples each screening stage of a set of ``samples`` covers: ``first``, then ``SCREEN_GROWTH``
    times more each time, every stage short of the whole set (which is the full verification, not a screen)."""
    stages: list[int] = []
    while first < samples:
        stages.append(first)
        first *= SCREEN_GROWTH
    return tuple(stages)


def screen(reference: Outputs, candidate: Outputs, tolerance: Tolerance, kinds: Mapping[str, OutputKind],
           confidence: float = SCREEN_CONFIDENCE) -> Screen:
    """``candidate`` against ``reference``, both over the same first samples of the verification set."""
    verification = Verifier.compare(reference, candidate, tolerance.at_confidence(None), "original", kinds)
    samples = len(next(iter(reference.values()))) if reference else 0
    return screen_verification(verification, tuple(reference), samples, tolerance, confidence)


def screen_verification(verification: Verification, names: Sequence[str], samples: int, tolerance: Tolerance,
                        confidence: float = SCREEN_CONFIDENCE) -> Screen:
    """The screen of a candidate whose outputs ``names`` were compared with the reference's on the first
    ``samples`` verification samples (``verification``, at any confidence)."""
    return Screen(samples, badness([verification]),
                  _clear_failure(verification, names, tolerance, samples, confidence))


def _clear_failure(verification: Verification, names: Sequence[str], tolerance: Tolerance, samples: int,
                   confidence: float) -> str:
    """Why the candidate cannot pass on every verification sample, seen on these; "" when it still may."""
    for name in names:  # a missing output, a changed shape, a NaN, an integer mismatch
        stats = verification.stats.get(name)
        if stats is None or _hard(stats):
            return next(f for f in verification.failures if f.startswith(f"{name}: "))
    for name, stats in verification.stats.items():
        own = tolerance.for_output(name)
        if own.atol is not None and stats.min_atol > own.atol:  # the largest error only grows with more samples
            return f"{name}: max |error| {stats.max_abs:.3g} exceeds atol {own.atol:g} + rtol {own.rtol:g}·|ref|"
        bound = _bound_failure(name, stats, own, samples, confidence)
        if bound:
            return bound
    return ""


def _bound_failure(name: str, stats: ErrorStats, tolerance: Tolerance, samples: int, confidence: float) -> str:
    """Why a mean the budget bounds (cosine, top-1, mask IoU) is clearly below it on these samples ("" if none),
    from the per-sample values ``stats`` averaged."""
    per_sample = stats.per_sample
    if per_sample is None:
        return ""
    measures = (("cosine", tolerance.cosine, per_sample.cosine), ("top-1 agreement", tolerance.top1, per_sample.top1),
                ("mask IoU", tolerance.iou, per_sample.iou))
    for label, threshold, values in measures:
        if values is None or threshold is None or not values.size:
            continue
        high = upper_bound(values.astype(np.float64), confidence=confidence)
        if high < threshold:
            return (f"{name}: {label} {values.mean():.5f} on the first {samples} samples, at most {high:.5f} at "
                    f"{confidence:.1%} confidence < {threshold:.10g}")
    return ""


def _hard(stats: ErrorStats) -> bool:
    """A rule broken that no further sample can mend: a changed shape, a NaN or Inf the reference lacks, an
    integer mismatch."""
    return bool(stats.shape_mismatches or stats.nonfinite_mismatch or (stats.exact and stats.mismatches))
