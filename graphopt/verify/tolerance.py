"""Tolerances and verdicts: which error is acceptable, decided from ``ErrorStats`` alone.

Two budgets matter. Lossless passes are held to ``Tolerance.lossless()`` against the model before them (element-wise
``|got - ref| <= atol + rtol * |ref|``); every pass, lossless or not, is held to the lossy budget against the
original model, so errors cannot compound across passes unseen. Integer and boolean outputs must match exactly, and
a non-finite value where the reference has none fails every tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from graphopt.errors import ToleranceError
from graphopt.verify.metrics import ErrorStats

__all__ = ["DEFAULT_CONFIDENCE", "MIN_BOUNDED_SAMPLES", "Tolerance", "Verdict", "check_number", "judge",
           "selection_confidence"]


DEFAULT_CONFIDENCE = 0.95
"""The one-sided confidence at which cosine and top-1 are judged by their lower bounds, not their means."""

MAX_CONFIDENCE = 0.9999
"""The highest confidence a bound is taken at: beyond it 2,000 bootstrap resamples cannot place the percentile."""

MIN_BOUNDED_SAMPLES = 30
"""Fewest verification samples a lossy pass is judged on when judged by confidence bounds: a bootstrap of fewer
resamples too few distinct values to say how the mean varies, and would accept on noise."""


@dataclass(frozen=True)
class Tolerance:
    """Acceptance thresholds; ``None`` disables a criterion. ``per_output`` overrides them for named outputs.

    ``cosine`` bounds the mean per-sample cosine similarity, ``top1`` the argmax agreement of class scores (along
    each output's class axis, ``output_kinds``), ``iou`` the mean mask IoU of probability maps, ``snr_db`` the
    signal-to-noise ratio in dB.

    ``confidence`` (default 0.95; ``None``: judge the means) makes ``cosine``, ``top1`` and ``iou`` bound the
    one-sided lower bounds of the per-sample means over a fresh set as large as the verification set
    (``ErrorStats.cosine_low``/``top1_low``/``iou_low``, ``intervals.lower_bound``), so that a verdict holds on
    samples it was not measured on. ``snr_db`` and ``atol`` are judged as
    measured.

    Every threshold is checked when the tolerance is built: NaN compares false with everything, so a NaN (or a
    cosine of -1) would silently accept any model. ``ToleranceError`` names the field and its range.
    """

    atol: float | None = None
    rtol: float = 0.0
    cosine: float | None = None
    snr_db: float | None = None
    top1: float | None = None
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)
    confidence: float | None = DEFAULT_CONFIDENCE
    iou: float | None = None

    def __post_init__(self) -> None:
        check_number("atol", self.atol, low=0.0)
        check_number("rtol", self.rtol, low=0.0, optional=False)
        check_number("cosine", self.cosine, low=0.0, high=1.0)
        check_number("snr_db", self.snr_db)
        check_number("top1", self.top1, low=0.0, high=1.0)
        check_number("iou", self.iou, low=0.0, high=1.0)
        check_number("confidence", self.confidence, low=0.5, high=MAX_CONFIDENCE)
        for name, value in self.per_output.items():
            if not isinstance(value, Tolerance):
                raise ToleranceError(f"per_output['{name}'] must be a Tolerance, not {type(value).__name__}")

    @classmethod
    def lossless(cls) -> Tolerance:
        """The tight default for rewrites that must not change outputs beyond float rounding."""
        return cls(atol=1e-5, rtol=1e-4)

    @classmethod
    def budget(cls) -> Tolerance:
        """The default accuracy budget for lossy passes, measured against the original model."""
        return cls(cosine=0.99, top1=0.99, iou=0.99)

    def for_output(self, name: str) -> Tolerance:
        return self.per_output.get(name, self)

    def at_confidence(self, confidence: float | None) -> Tolerance:
        """The same budget with every bound (its own and each output's) taken at ``confidence``, or switched off
        (``None``: the means are judged); bounds switched off stay off."""
        def one(t: Tolerance) -> Tolerance:
            return t if t.confidence is None else replace(t, confidence=confidence)
        return replace(one(self), per_output={k: one(v) for k, v in self.per_output.items()})

    def share(self, fraction: float) -> Tolerance:
        """A ``fraction`` (in (0, 1]) of this budget, for one pass of several that must fit in it together: every
        bound's allowed error scaled by ``fraction`` (1 − cosine, 1 − top-1, 1 − IoU, ``atol``; the SNR's noise
        power, so ``snr_db`` rises by 10·log10(1/fraction)), each output's too; the confidence stays."""
        check_number("fraction", fraction, low=0.0, high=1.0, optional=False)
        if fraction == 0.0:
            raise ToleranceError("a budget share must be above 0")

        def tighter(bound: float | None) -> float | None:
            return None if bound is None else 1.0 - fraction * (1.0 - bound)

        def one(t: Tolerance) -> Tolerance:
            return replace(t, atol=None if t.atol is None else t.atol * fraction, cosine=tighter(t.cosine),
                           top1=tighter(t.top1), iou=tighter(t.iou),
                           snr_db=None if t.snr_db is None else t.snr_db + 10.0 * math.log10(1.0 / fraction),
                           per_output={k: one(v) for k, v in t.per_output.items()})
        return one(self)

    def to_dict(self) -> dict[str, Any]:
        fields = {k: getattr(self, k) for k in ("atol", "rtol", "cosine", "snr_db", "top1", "iou", "confidence")}
        if self.per_output:
            fields["per_output"] = {k: v.to_dict() for k, v in self.per_output.items()}
        return fields


def selection_confidence(confidence: float, candidates: int) -> float:
    """The confidence a candidate chosen among ``candidates`` judged on the same samples is held to: the chance
    that any of them clears its bound by luck stays at ``1 - confidence`` (Bonferroni), capped at
    ``MAX_CONFIDENCE``. Narrowing stops at the first set of units that passes, so its winner sits where the
    verification samples happened to favour it; one bound at 95% does not cover a search among many."""
    return min(MAX_CONFIDENCE, 1 - (1 - confidence) / max(candidates, 1))


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 optional: bool = True) -> None:
    """Raise ``ToleranceError`` unless ``value`` is a finite number in [low, high] (or ``None`` when optional)."""
    if value is None and optional:
        return
    span = f" in [{low:g}, {high:g}]" if low is not None and high is not None else (
        f" >= {low:g}" if low is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            low is not None and value < low) or (high is not None and value > high):
        raise ToleranceError(f"{name} must be a finite number{span}, got {value!r}")


@dataclass(frozen=True)
class Verdict:
    """Whether every output is within its tolerance, and each failure as a short sentence."""

    passed: bool
    failures: tuple[str, ...] = ()


def judge(stats: Mapping[str, ErrorStats], tolerance: Tolerance) -> Verdict:
    """Apply ``tolerance`` to the per-output statistics."""
    failures = [f"{name}: {reason}" for name, s in stats.items() for reason in _failures(s, tolerance.for_output(name))]
    return Verdict(not failures, tuple(failures))


def _failures(s: ErrorStats, t: Tolerance) -> list[str]:
    if s.shape_mismatches:
        return [f"{s.shape_mismatches} of {s.n_samples} samples differ in shape from the reference"]
    if s.nonfinite_mismatch:
        return [f"{s.nonfinite_mismatch} NaN/Inf values the reference does not have"]
    if s.exact:
        return [f"{s.mismatches} values differ (integer output, compared exactly)"] if s.mismatches else []
    out = []
    if t.atol is not None and s.min_atol > t.atol:
        out.append(f"max |error| {s.max_abs:.3g} exceeds atol {t.atol:g} + rtol {t.rtol:g}·|ref|")
    if t.cosine is not None:
        out.extend(_below("cosine", s.cosine, s.cosine_low, t.cosine, 5, t.confidence))
    if t.snr_db is not None and s.snr_db < t.snr_db:
        out.append(f"SNR {s.snr_db:.1f} dB < {t.snr_db:.10g} dB")
    if t.top1 is not None and s.top1 is not None:
        out.extend(_below("top-1 agreement", s.top1, s.top1_low, t.top1, 4, t.confidence))
    if t.iou is not None and s.iou is not None:
        out.extend(_below(f"mask IoU (above {s.mask_threshold:g})", s.iou, s.iou_low, t.iou, 4, t.confidence))
    return out


def _below(name: str, mean: float, low: float | None, threshold: float, digits: int,
           confidence: float | None) -> list[str]:
    """The failure of a mean (or, when judged at a ``confidence``, of its lower bound ``low``) under ``threshold``;
    none if it clears."""
    if mean < threshold:
        return [f"{name} {mean:.{digits}f} < {threshold:.10g}"]
    if confidence is not None and low is not None and low < threshold:
        return [(f"{name} {mean:.{digits}f}, but its lower confidence bound {low:.{digits}f} (at {confidence:.2%}) "
                 f"< {threshold:.10g} (too close to the budget to hold on fresh samples)")]
    return []
