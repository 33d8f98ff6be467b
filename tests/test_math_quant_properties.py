"""Property tests of the calibration observers and range estimators: any signs, magnitudes 1e-30…1e30, denormals,
NaN/Inf, empty, constant, all-zero and single-element batches, several batches in a row; plus the issue's regressions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt_passes._math.quant import (
    METHODS,
    HistogramObserver,
    MinMaxObserver,
    activation_params,
    estimate_range,
    fake_quantize,
)

BOUNDED = settings(max_examples=100, deadline=None, database=None, derandomize=True)  # the same examples in every CI run
DENORMALS = (5e-324, 1e-310, 2.2250738585072014e-308 / 3)
magnitudes = st.floats(-30.0, 30.0).map(lambda e: 10.0**e)
signs = st.sampled_from((1.0, -1.0))
nonzero = st.builds(lambda s, m: s * m, signs, magnitudes)
special = st.sampled_from((0.0, -0.0, *DENORMALS, *(-d for d in DENORMALS), math.nan, math.inf, -math.inf))
values = st.one_of(nonzero, nonzero, nonzero, special)


@st.composite
def batch(draw: st.DrawFn) -> np.ndarray:
    kind = draw(st.sampled_from(("mixed", "one sign", "constant", "zeros", "single", "empty", "scaled")))
    if kind == "empty":
        return np.empty((0, 3))
    if kind == "zeros":
        return np.zeros(draw(st.integers(1, 5)))
    if kind in ("single", "constant"):
        return np.full(1 if kind == "single" else draw(st.integers(2, 6)), draw(values))
    if kind == "scaled":  # one magnitude, many values of either sign around it: the shape of real activations
        x = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=30)))
        return x * draw(magnitudes)
    x = np.array(draw(st.lists(values, min_size=1, max_size=30)))
    return np.abs(x) * draw(signs) if kind == "one sign" else x


batches = st.lists(batch(), min_size=1, max_size=6)


def fed(xs: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """The finite values fed, as float64, and how many were not finite."""
    everything = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    keep = np.isfinite(everything)
    return everything[keep], int(everything.size - keep.sum())


def observe(xs: list[np.ndarray], bins: int) -> tuple[MinMaxObserver, HistogramObserver]:
    minmax, histogram = MinMaxObserver(), HistogramObserver(bins)
    for x in xs:
        minmax.update(x)
        histogram.update(x)
    return minmax, histogram


def bin_of(v: np.ndarray, histogram: HistogramObserver) -> np.ndarray:
    """The documented rule: bin ``zero_bin + floor(v / width)``, negative values strictly left of 0."""
    steps = np.floor(v / histogram.width)
    return np.where(v < 0, np.minimum(steps, -1), steps).astype(np.int64) + histogram.zero_bin


def check_histogram(histogram: HistogramObserver, finite: np.ndarray, ignored: int) -> None:
    assert histogram.counts.shape == (histogram.bins,) and (histogram.counts >= 0).all()
    assert histogram.counts.sum() == histogram.count == finite.size and histogram.ignored == ignored
    assert histogram.zeros == int(np.count_nonzero(finite == 0))
    if finite.size:
        assert (histogram.low, histogram.high) == (finite.min(), finite.max())
    else:
        assert (histogram.low, histogram.high) == (math.inf, -math.inf)
    if histogram.width == 0.0:  # nothing but zeros so far: all in bin 0
        assert not finite.any() and histogram.zero_bin == 0 and histogram.counts[0] == finite.size
        return
    assert math.isfinite(histogram.width) and histogram.width > 0 and 0 <= histogram.zero_bin < histogram.bins
    index = bin_of(finite, histogram)
    assert ((index >= 0) & (index < histogram.bins)).all()  # every value seen is inside the grid …
    np.testing.assert_array_equal(histogram.counts, np.bincount(index, minlength=histogram.bins))  # … merged exactly
    edges = histogram.edges
    assert np.isfinite(edges).all() and edges[histogram.zero_bin] == 0.0
    slack = 1e-9 * histogram.width
    assert edges[0] - slack <= min(finite.min(), 0.0) and max(finite.max(), 0.0) <= edges[-1] + slack


@BOUNDED
@given(batches, st.sampled_from((2, 3, 16, 2048)))
def test_histogram_counts_every_finite_value_inside_its_grid(xs: list[np.ndarray], bins: int) -> None:
    _, histogram = observe(xs, bins)
    check_histogram(histogram, *fed(xs))


@BOUNDED
@given(batches)
def test_histogram_is_checked_after_every_batch_and_float32_batches_count_alike(xs: list[np.ndarray]) -> None:
    histogram = HistogramObserver(64)
    for i, x in enumerate(xs):
        histogram.update(x.astype(np.float32))
        check_histogram(histogram, *fed([x.astype(np.float32) for x in xs[: i + 1]]))


@BOUNDED
@given(st.lists(values, min_size=1, max_size=30), st.sampled_from((2, 3, 256, 2048)))
def test_the_first_grid_keeps_the_full_resolution(x: list[float], bins: int) -> None:
    histogram = HistogramObserver(bins)
    histogram.update(np.array(x))
    finite = np.array([v for v in x if math.isfinite(v)])
    if histogram.width:
        span = max(finite.max(), 0.0) - min(finite.min(), 0.0)  # no widening: bins - 1 bins cover it, rounded
        assert histogram.width <= max(span / (bins - 1), float(np.finfo(np.float64).tiny)) * (1 + 1e-12)


@BOUNDED
@given(batches)
def test_widening_keeps_the_resolution_useful(xs: list[np.ndarray]) -> None:
    _, histogram = observe(xs, 2048)
    finite, _ = fed(xs)
    if histogram.width:
        span = max(finite.max(), 0.0) - min(finite.min(), 0.0)
        assert histogram.width <= max(8 * span / 2047, 4 * float(np.finfo(np.float64).tiny))


@BOUNDED
@given(batches)
def test_minmax_observer_is_the_exact_min_and_max(xs: list[np.ndarray]) -> None:
    minmax, _ = observe(xs, 16)
    finite, ignored = fed(xs)
    lows = [x[np.isfinite(x)].min() for x in xs if np.isfinite(x).any()]
    highs = [x[np.isfinite(x)].max() for x in xs if np.isfinite(x).any()]
    assert (minmax.count, minmax.ignored, minmax.batches) == (finite.size, ignored, len(lows))
    if not finite.size:
        assert (minmax.low, minmax.high, minmax.batch_low_mean, minmax.batch_high_mean) == (
            math.inf, -math.inf, math.inf, -math.inf)
        return
    assert (minmax.low, minmax.high) == (finite.min(), finite.max())
    assert minmax.batch_low_mean == pytest.approx(np.mean(lows), rel=1e-12, abs=0)
    assert minmax.batch_high_mean == pytest.approx(np.mean(highs), rel=1e-12, abs=0)
    slack = 1e-12 * max(-minmax.low, minmax.high)
    assert minmax.low - slack <= minmax.batch_low_mean <= minmax.batch_high_mean + slack
    assert minmax.batch_high_mean <= minmax.high + slack


@BOUNDED
@given(batches, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=8), st.sampled_from((3, 16, 2048)))
def test_percentiles_are_monotone_and_within_a_bin_of_numpy(xs: list[np.ndarray], qs: list[float], bins: int) -> None:
    _, histogram = observe(xs, bins)
    finite, _ = fed(xs)
    if not finite.size:
        with pytest.raises(ValueError):
            histogram.percentile(50)
        return
    qs = sorted([*qs, 0.0, 100.0])
    got = [histogram.percentile(q) for q in qs]
    assert got == sorted(got) and got[0] == finite.min() and got[-1] == finite.max()
    ordered, slack = np.sort(finite), histogram.width * (1 + 1e-6)
    for q, p in zip(qs, got):
        rank = q / 100 * (finite.size - 1)  # the value read is one of the two numpy interpolates, within its bin
        assert ordered[math.floor(rank)] - slack <= p <= ordered[min(math.ceil(rank), finite.size - 1)] + slack


@BOUNDED
@given(batches, st.sampled_from(METHODS), st.booleans(), st.sampled_from((8, 7, 4)), st.floats(50.0, 100.0),
       st.sampled_from((16, 2048)))
def test_every_range_is_finite_contains_zero_and_quantizes_zero_exactly(
    xs: list[np.ndarray], method: str, signed: bool, bits: int, percentile: float, bins: int
) -> None:
    minmax, histogram = observe(xs, bins)
    finite, _ = fed(xs)
    low, high = estimate_range(minmax, histogram, method, percentile=percentile, signed=signed, bits=bits)
    assert math.isfinite(low) and math.isfinite(high) and low <= 0.0 <= high
    if not finite.size:
        assert (low, high) == (0.0, 0.0)
        return
    hull = (min(finite.min(), 0.0), max(finite.max(), 0.0))
    if method == "mse" and signed:  # symmetric, as the int8 grid it is chosen for
        assert low == -high and high <= max(-hull[0], hull[1])
    else:
        assert hull[0] <= low and high <= hull[1]
    params = activation_params(low, high, signed=signed, bits=bits)
    assert np.isfinite(params.scale) and params.scale > 0 and float(fake_quantize(0.0, params)) == 0.0


@BOUNDED
@given(batches)
def test_percentile_100_clips_nothing(xs: list[np.ndarray]) -> None:
    minmax, histogram = observe(xs, 2048)
    full = estimate_range(minmax, histogram, "percentile", percentile=100.0)
    assert full == estimate_range(minmax, histogram, "minmax")


def test_all_negative_first_batch_does_not_index_past_the_last_bin() -> None:
    """The issue's reproducer: ceil(-low / width) rounded up to ``bins`` and counts[2048] raised IndexError."""
    histogram = HistogramObserver()
    histogram.update(np.array([-64.59295236553494, 0.0]))
    assert histogram.counts.sum() == 2 and histogram.zeros == 1 and histogram.zero_bin <= 2047
    assert histogram.counts[histogram.zero_bin] == 1 and histogram.counts[0] == 1
    assert histogram.edges[0] <= -64.59295236553494
    assert histogram.percentile(0) == -64.59295236553494 and histogram.percentile(100) == 0.0
    check_histogram(histogram, np.array([-64.59295236553494, 0.0]), 0)


def test_all_negative_first_batches_of_any_magnitude(rng: np.random.Generator) -> None:
    for magnitude in 10.0 ** rng.uniform(-30, 30, 500):  # about 14% raised before the fix
        histogram = HistogramObserver()
        histogram.update(np.array([-magnitude, 0.0]))
        check_histogram(histogram, np.array([-magnitude, 0.0]), 0)


def test_denormals_then_large_values_and_negative_denormals_left_of_zero() -> None:
    histogram = HistogramObserver()
    histogram.update(np.array([5e-324]))  # the width is float64's smallest normal number
    histogram.update(np.array([1e30, -1e-310]))  # widened by 2^110 at once; -1e-310 / width underflows to -0.0
    check_histogram(histogram, np.array([5e-324, 1e30, -1e-310]), 0)
    assert histogram.counts[histogram.zero_bin - 1] == 1  # the negative denormal sits left of 0, not in the zero bin
    assert histogram.percentile(100) == 1e30


def test_values_too_near_float64_max_for_the_bins_raise_before_any_change() -> None:
    histogram = HistogramObserver(2)
    histogram.update(np.array([1.0]))
    with pytest.raises(OverflowError):
        histogram.update(np.array([-1.7e308, 1.7e308]))
    check_histogram(histogram, np.array([1.0]), 0)
    wide = HistogramObserver()
    wide.update(np.array([-1.7e308, 1.7e308]))  # 2048 bins span it
    check_histogram(wide, np.array([-1.7e308, 1.7e308]), 0)
