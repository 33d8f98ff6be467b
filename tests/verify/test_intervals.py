"""Bootstrap intervals: they bracket the mean, narrow with more samples, and repeat with the seed."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from graphopt.verify.intervals import bootstrap_mean, lower_bound, paired_difference


def test_interval_brackets_the_mean_and_narrows_with_samples() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (25, 400):
        values = rng.normal(0.9, 0.05, n)
        interval = bootstrap_mean(values, seed=1)
        assert interval.low < interval.mean < interval.high and interval.mean == pytest.approx(values.mean())
        widths.append(interval.high - interval.low)
        # the normal approximation's 95% half-width is 1.96·σ/√n
        assert interval.high - interval.low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(n), rel=0.2)
    assert widths[1] < widths[0] / 3
    assert bootstrap_mean(np.arange(10.0), seed=3) == bootstrap_mean(np.arange(10.0), seed=3)


def test_paired_difference_of_equal_results_is_exactly_zero() -> None:
    right = (np.random.default_rng(2).random(200) < 0.9).astype(float)
    same = paired_difference(right, right)
    assert same.mean == same.low == same.high == 0.0
    worse = right.copy()
    worse[np.flatnonzero(right)[:10]] = 0.0  # the optimised model loses 10 of 200
    drop = paired_difference(right, worse)
    assert drop.mean == pytest.approx(0.05) and 0 < drop.low < 0.05 < drop.high


def test_empty_and_bad_confidence() -> None:
    assert np.isnan(bootstrap_mean(np.array([])).mean)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(np.ones(3), confidence=1.0)


def test_lower_bound_is_one_sided_deterministic_and_chunked(rng: np.random.Generator) -> None:
    values = rng.normal(0.99, 0.01, 200)
    low = lower_bound(values, confidence=0.95, fresh=math.inf)
    two_sided = bootstrap_mean(values, confidence=0.90)  # a one-sided 95% bound is the low end of a 90% interval
    assert low == pytest.approx(two_sided.low, abs=1e-12) and low < values.mean()
    assert lower_bound(values, confidence=0.95, fresh=math.inf) == low
    assert lower_bound(values, confidence=0.99, fresh=math.inf) < low
    assert lower_bound(np.full(50, 0.995)) == 0.995  # no spread: the bound is the value
    big = rng.normal(0.99, 0.01, 20_000)  # 2000 resamples of 20k values are drawn in ten chunks
    assert abs(lower_bound(big, fresh=math.inf) - (big.mean() - 1.645 * big.std() / np.sqrt(big.size))) < 2.5e-5  # a third of the standard error


def test_the_default_bound_holds_for_a_fresh_set_of_equal_size() -> None:
    """The mean of as many fresh samples falls below the bound about 1 - confidence of the time; the bound of the
    population mean alone lets it fall below about twice as often (skewed cosines, as near 1 they are)."""
    rng = np.random.default_rng(0)
    below = {"fresh set": 0, "population": 0}
    for _ in range(300):
        measured, fresh = (1 - rng.gamma(0.7, 0.01, 80) for _ in range(2))
        below["fresh set"] += fresh.mean() < lower_bound(measured, resamples=1000)
        below["population"] += fresh.mean() < lower_bound(measured, fresh=math.inf, resamples=1000)
    assert below["fresh set"] / 300 < 0.1 < below["population"] / 300
    values = rng.normal(0.99, 0.01, 100)
    population = lower_bound(values, fresh=math.inf)
    assert values.mean() - lower_bound(values) == pytest.approx((values.mean() - population) * math.sqrt(2))
    assert lower_bound(values, fresh=400) == pytest.approx(values.mean() - (values.mean() - population) * 1.25 ** 0.5)
    with pytest.raises(ValueError, match="fresh"):
        lower_bound(values, fresh=0)


def test_bootstrap_memory_does_not_grow_with_the_samples() -> None:
    """The resamples are drawn in chunks of bounded size: bounding 20,000 values allocates a few MiB (whole chunks of
    2**22 indices and values took 64 MiB)."""
    values = np.random.default_rng(0).random(20_000)
    tracemalloc.start()
    try:
        lower_bound(values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, f"{peak / 2**20:.1f} MiB"
