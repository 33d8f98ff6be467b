"""Confidence intervals for per-sample agreement figures: a percentile bootstrap of the mean.

A cosine of 0.992 on 64 held-out samples says little about the next 64; its interval says how much. Resampling
is seeded, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "paired_difference"]


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
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), confidence)


def paired_difference(a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Interval:
    """Interval of ``mean(a - b)`` for paired per-sample values (e.g. correct-by-original minus correct-by-optimised):
    resampling the pairs keeps the samples both models got right from inflating the spread."""
    return bootstrap_mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), confidence=confidence,
                          resamples=resamples, seed=seed)
