"""Confidence intervals for per-sample agreement figures: a percentile bootstrap of the mean.

A cosine of 0.992 on 64 held-out samples says little about the next 64; its interval says how much. Resampling
is seeded, so a report is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "lower_bound", "paired_difference", "upper_bound"]


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided bootstrap interval at ``confidence``."""

    mean: float
    low: float
    high: float
    confidence: float


def bootstrap_mean(values: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (one per sample; NaNs are an error upstream)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), confidence)
    means = _resampled_means(values, resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), confidence)


def lower_bound(values: np.ndarray, *, confidence: float = 0.95, fresh: float | None = None, resamples: int = 2000,
                seed: int = 0) -> float:
    """One-sided lower bound of the mean over ``fresh`` new samples of the kind of ``values`` (one per sample;
    ``None``: as many as ``values``, ``math.inf``: the population mean): that mean is at least this with
    probability about ``confidence``. NaN for no values.

    This is what a verdict must clear to hold on data it was not measured on: a candidate whose mean cosine sits
    exactly at the budget on its verification samples falls below it on fresh samples about half the time. The
    percentile bootstrap bounds the population mean; a fresh set's own mean scatters about it as much again (for
    as many samples), so the bootstrap's distance below the mean is widened by sqrt(1 + n / fresh), the spread of
    the difference of two independent means. Bounding the population mean alone leaves a fresh set of equal size
    below the bound about 12% of the time at 95%.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if fresh is not None and not fresh > 0:
        raise ValueError(f"fresh must be a positive count of samples, not {fresh}")
    if values.size == 0:
        return float("nan")
    mean = float(values.mean())
    if np.all(values == values[0]):  # every resample has this mean: no spread to bound
        return float(values[0])
    population = min(mean, float(np.percentile(_resampled_means(values, resamples, seed), (1 - confidence) * 100)))
    widening = math.sqrt(1 + values.size / (values.size if fresh is None else fresh))
    return mean - (mean - population) * widening


def upper_bound(values: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> float:
    """One-sided upper bound of the population mean of ``values`` (one per sample): the mean is at most this with
    probability about ``confidence`` (percentile bootstrap). NaN for no values.

    What a search needs to reject a candidate early: when even this bound on its first samples is below the budget,
    the mean over every verification sample, and so its lower bound, is below it too (but for a chance of about
    ``1 - confidence``)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if values.size == 0:
        return float("nan")
    if np.all(values == values[0]):
        return float(values[0])
    return max(float(values.mean()), float(np.percentile(_resampled_means(values, resamples, seed), confidence * 100)))


def _resampled_means(values: np.ndarray, resamples: int, seed: int, chunk_elements: int = 2**19) -> np.ndarray:
    """The means of ``resamples`` bootstrap resamples of ``values``, drawn in chunks of bounded memory."""
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elements // values.size)
    return np.concatenate([values[rng.integers(0, values.size, (min(rows, resamples - start), values.size))]
                           .mean(axis=1) for start in range(0, resamples, rows)])


def paired_difference(a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Interval:
    """Interval of ``mean(a - b)`` for paired per-sample values (e.g. correct-by-original minus correct-by-optimised):
    resampling the pairs keeps the samples both models got right from inflating the spread."""
    return bootstrap_mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), confidence=confidence,
                          resamples=resamples, seed=seed)
