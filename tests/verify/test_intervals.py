"""Bootstrap intervals: they bracket the mean, narrow with more samples, and repeat with the seed."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.verify.intervals import bootstrap_mean, paired_difference


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
