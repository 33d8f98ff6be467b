"""Int8 quantization maths against independent references: grids, rounding, per-channel axes, biases, observers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from graphopt_passes._math.quant import (
    HistogramObserver,
    MinMaxObserver,
    QuantParams,
    activation_params,
    bias_int32,
    dequantize,
    estimate_range,
    fake_quantize,
    quantize,
    sqnr_db,
    weight_params,
)


def observe(batches: list[np.ndarray], bins: int = 2048) -> tuple[MinMaxObserver, HistogramObserver]:
    minmax, histogram = MinMaxObserver(), HistogramObserver(bins)
    for batch in batches:
        minmax.update(batch)
        histogram.update(batch)
    return minmax, histogram


def fake_mse(x: np.ndarray, low: float, high: float, signed: bool = False) -> float:
    return float(np.mean((fake_quantize(x, activation_params(low, high, signed=signed)) - x) ** 2))


@pytest.mark.parametrize(
    ("signed", "bits", "qmin", "qmax"),
    [(False, 8, 0, 255), (False, 7, 0, 127), (True, 8, -127, 127), (True, 7, -63, 63), (True, 4, -7, 7)],
)
def test_bits_narrow_the_grid(signed: bool, bits: int, qmin: int, qmax: int) -> None:
    params = activation_params(-2.0, 3.0, signed=signed, bits=bits)
    assert (params.qmin, params.qmax, params.dtype) == (qmin, qmax, np.int8 if signed else np.uint8)
    q = quantize(np.linspace(-10, 10, 1001), params).astype(np.int32)
    assert (q.min(), q.max()) == (qmin, qmax)  # far outside the range saturates to the narrowed ends
    w = weight_params(np.array([[-1.0, 0.5], [0.25, 0.75]]), None, bits=bits)
    assert np.abs(quantize([-1.0, 1.0], w).astype(np.int32)).tolist() == [2 ** (bits - 1) - 1] * 2
    with pytest.raises(ValueError, match="bits"):
        activation_params(-1.0, 1.0, bits=9)


@pytest.mark.parametrize(
    ("low", "high", "signed", "symmetric", "scale", "zero"),
    [
        (-1.0, 3.0, False, None, 4 / 255, 64),  # round(1 / (4/255)) = round(63.75)
        (0.0, 2.55, False, None, 0.01, 0),
        (0.5, 2.55, False, None, 0.01, 0),  # the range is widened to include 0
        (-2.0, -0.5, False, None, 2 / 255, 255),
        (-2.0, 1.0, True, None, 2 / 127, 0),
        (-2.0, 1.0, False, True, 2 / 127, 128),
        (-1.0, 4.0, True, False, 5 / 254, -76),  # round(-127 + 254/5) = round(-76.2)
    ],
)
def test_activation_params_follow_the_textbook_formulas(
    low: float, high: float, signed: bool, symmetric: bool | None, scale: float, zero: int
) -> None:
    params = activation_params(low, high, signed=signed, symmetric=symmetric)
    assert params.scale.dtype == np.float32 and params.scale.shape == () and params.axis is None
    assert float(params.scale) == pytest.approx(scale, rel=1e-6)
    assert int(params.zero_point) == zero
    assert float(fake_quantize(0.0, params)) == 0.0


@pytest.mark.parametrize(("signed", "symmetric", "bits"), [(False, None, 8), (True, None, 8), (False, True, 8),
                                                           (True, False, 8), (False, None, 7), (True, None, 5)])
def test_round_trip_is_within_half_a_step_inside_and_saturates_outside(
    rng: np.random.Generator, signed: bool, symmetric: bool | None, bits: int
) -> None:
    for _ in range(20):
        low, high = sorted(rng.uniform(-5, 5, 2))
        params = activation_params(low, high, signed=signed, symmetric=symmetric, bits=bits)
        scale, zero = float(params.scale), int(params.zero_point)
        x = rng.uniform(min(low, 0), max(high, 0), 1000).astype(np.float32)
        assert np.abs(fake_quantize(x, params) - x).max() <= scale / 2 * (1 + 1e-4)
        assert float(fake_quantize(0.0, params)) == 0.0
        ends = np.array([params.qmin - zero, params.qmax - zero], np.float32) * np.float32(scale)
        beyond = np.array([ends[0] - 100 * scale, ends[1] + 100 * scale, -np.inf, np.inf])
        np.testing.assert_array_equal(fake_quantize(beyond, params), ends[[0, 1, 0, 1]])
        assert quantize(np.nan, params) == zero


def test_quantize_rounds_half_to_even_and_dequantizes_like_onnx() -> None:
    params = QuantParams(np.array(0.5, np.float32), np.array(3, np.uint8))
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, -1.75, 200.0], np.float32)
    # x / 0.5 = .5, 1.5, 2.5, -.5, -1.5, -2.5, -3.5 round half to even to 0, 2, 2, 0, -2, -2, -4; + 3, clip to [0, 255]
    np.testing.assert_array_equal(quantize(x, params), np.array([3, 5, 5, 3, 1, 1, 0, 255], np.uint8))
    got = dequantize(np.array([0, 3, 255], np.uint8), params)
    assert got.dtype == np.float32 and got.tolist() == [-1.5, 0.0, 126.0]


@pytest.mark.parametrize("axis", [0, 1, -1, 3, -4])
def test_per_channel_params_match_a_loop_over_channels(rng: np.random.Generator, axis: int) -> None:
    w = rng.standard_normal((4, 3, 5, 2)) * rng.uniform(0.01, 10, (4, 1, 1, 1))
    params = weight_params(w, axis)
    positive = axis % w.ndim
    assert params.axis == positive and params.scale.shape == params.zero_point.shape == (w.shape[positive],)
    assert params.dtype == np.int8 and not params.zero_point.any()
    q, back = quantize(w, params), dequantize(quantize(w, params), params)
    for c in range(w.shape[positive]):
        channel = np.take(w, c, axis=positive)
        alone = weight_params(channel, None)
        assert params.scale[c] == np.float32(np.abs(channel).max() / 127) == alone.scale
        np.testing.assert_array_equal(np.take(q, c, axis=positive), quantize(channel, alone))
        np.testing.assert_array_equal(np.take(back, c, axis=positive), dequantize(quantize(channel, alone), alone))
        assert np.abs(np.take(q, c, axis=positive)).max() == 127  # the largest |w| of each channel uses the full grid
    with pytest.raises(ValueError, match="channels"):
        quantize(np.moveaxis(w, positive, (positive + 1) % w.ndim), params)
    with pytest.raises(ValueError, match="out of range"):
        weight_params(w, 4)


def test_all_zero_and_constant_inputs_give_valid_params() -> None:
    w = np.ones((3, 4))
    w[1] = 0.0
    params = weight_params(w, 0)
    assert params.scale.tolist() == [np.float32(1 / 127), 1.0, np.float32(1 / 127)]
    np.testing.assert_allclose(fake_quantize(w, params), w, atol=1e-6)
    assert float(weight_params(np.zeros((2, 2)), None).scale) == 1.0
    assert float(weight_params(np.zeros((0, 3)), None).scale) == 1.0
    for low, high in [(0.0, 0.0), (math.inf, -math.inf), (math.nan, math.nan), (1e-45, 1e-45), (-1e-40, 0.0)]:
        for signed in (False, True):
            params = activation_params(low, high, signed=signed)
            assert float(params.scale) == 1.0 and float(fake_quantize(0.0, params)) == 0.0
    for value in (5.0, -3.0, 1e-30, 3e38):  # a single value: the range is [0, v] or [v, 0] and v comes back
        for signed in (False, True):
            params = activation_params(value, value, signed=signed)
            assert np.isfinite(params.scale) and params.scale > 0
            assert abs(float(fake_quantize(value, params)) - value) <= float(params.scale) / 2 * (1 + 1e-4)
    with pytest.raises(ValueError, match="empty range"):
        activation_params(2.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        weight_params([1.0, np.nan], None)


def test_quant_params_reject_inconsistent_fields() -> None:
    scale, zero = np.array(0.1, np.float32), np.array(0, np.uint8)
    for bad in [
        {"scale": scale.astype(np.float64), "zero_point": zero},
        {"scale": scale, "zero_point": zero.astype(np.int32)},
        {"scale": np.array(0.0, np.float32), "zero_point": zero},
        {"scale": np.array(np.nan, np.float32), "zero_point": zero},
        {"scale": scale, "zero_point": zero, "axis": 0},
        {"scale": np.full(3, 0.1, np.float32), "zero_point": np.zeros(2, np.int8), "axis": 0},
        {"scale": scale, "zero_point": np.array(200, np.uint8), "bits": 7},
        {"scale": scale, "zero_point": np.array(-128, np.int8)},
    ]:
        with pytest.raises(ValueError):
            QuantParams(**bad)  # type: ignore[arg-type]


def test_bias_int32_is_the_rounded_bias_over_the_product_of_scales(rng: np.random.Generator) -> None:
    bias = rng.standard_normal(16) * 3
    weights = rng.standard_normal((16, 8, 3, 3)) * rng.uniform(0.01, 1, (16, 1, 1, 1))
    weight_scale = weight_params(weights, 0).scale
    q, scale = bias_int32(bias, 0.02, weight_scale)
    expected_scale = np.float32(0.02) * weight_scale
    assert q.dtype == np.int32 and scale.dtype == np.float32 and scale.shape == (16,)
    np.testing.assert_array_equal(scale, expected_scale)
    np.testing.assert_array_equal(q, [round(b / float(s)) for b, s in zip(bias, expected_scale)])
    assert np.all(np.abs(q * scale.astype(np.float64) - bias) <= scale / 2 * (1 + 1e-6))
    q0, scale0 = bias_int32(bias, 0.02, np.float32(0.004))
    assert scale0.shape == () and np.array_equal(q0, np.rint(bias / float(np.float32(0.02) * np.float32(0.004))))
    limit = (2**31 - 1) * 1e-6
    assert bias_int32([limit * 0.999], 1e-3, np.array([1e-3], np.float32))[0].dtype == np.int32
    with pytest.raises(ValueError, match="overflows int32"):
        bias_int32([0.0, -limit * 1.01], 1e-3, np.array([1e-3, 1e-3], np.float32))
    with pytest.raises(ValueError, match="match"):
        bias_int32(bias[:4], 0.02, weight_scale)
    with pytest.raises(ValueError, match="positive"):
        bias_int32(bias, 0.0, weight_scale)


def test_sqnr_db() -> None:
    assert sqnr_db([3.0, 4.0], [3.0, 4.5]) == pytest.approx(20.0)  # 25 / 0.25 = 100
    assert sqnr_db([1.0, -2.0], [1.0, -2.0]) == math.inf
    assert sqnr_db([0.0, 0.0], [0.0, 1.0]) == -math.inf
    x = np.random.default_rng(3).uniform(-1, 1, 100_000)
    # a uniform signal on a full 8-bit uniform grid: 6.02 dB per bit, 10·log10(255²) ≈ 48.1 dB
    assert sqnr_db(x, fake_quantize(x, activation_params(-1, 1))) == pytest.approx(48.1, abs=0.2)
    with pytest.raises(ValueError, match="shapes"):
        sqnr_db([1.0], [1.0, 2.0])


def growing_batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Batches whose range grows on both sides, by a lot at once, with NaN and Inf mixed in."""
    batches = [rng.standard_normal(20_000) * s + o for s, o in [(0.01, 0.05), (1, 0.5), (5, -3), (0.1, 0), (40, 10)]]
    batches[1][:7] = [np.nan, np.inf, -np.inf, np.nan, np.nan, np.inf, np.nan]
    return [b.astype(np.float32) if i % 2 else b for i, b in enumerate(batches)]


def test_minmax_observer_equals_the_concatenation(rng: np.random.Generator) -> None:
    batches = growing_batches(rng) + [np.array([np.nan, np.inf]), np.empty((0, 3))]
    minmax, _ = observe(batches)
    finite = [b[np.isfinite(b)].astype(np.float64) for b in batches]
    everything = np.concatenate(finite)
    assert (minmax.low, minmax.high) == (everything.min(), everything.max())
    assert (minmax.count, minmax.ignored, minmax.batches) == (everything.size, 9, 5)
    assert minmax.batch_low_mean == pytest.approx(np.mean([b.min() for b in finite if b.size]))
    assert minmax.batch_high_mean == pytest.approx(np.mean([b.max() for b in finite if b.size]))
    empty = MinMaxObserver()
    empty.update([np.nan])
    assert (empty.low, empty.high, empty.batch_low_mean, empty.count) == (math.inf, -math.inf, math.inf, 0)
    assert estimate_range(empty, None, "minmax") == (0.0, 0.0)
    assert float(activation_params(empty.low, empty.high).scale) == 1.0


def test_histogram_merges_exactly_and_reads_percentiles_within_a_bin(rng: np.random.Generator) -> None:
    batches = growing_batches(rng)
    _, histogram = observe(batches)
    everything = np.concatenate([b[np.isfinite(b)].astype(np.float64) for b in batches])
    assert histogram.counts.sum() == histogram.count == everything.size and histogram.ignored == 7
    assert (histogram.low, histogram.high) == (everything.min(), everything.max())
    edges = histogram.edges
    assert edges[0] <= everything.min() and everything.max() <= edges[-1] and edges[histogram.zero_bin] == 0.0
    assert edges[-1] - edges[0] < 4 * (everything.max() - everything.min())  # doubling keeps the resolution useful
    # old bins nest in the new ones, so the merged counts are the histogram of everything on the final bins
    np.testing.assert_array_equal(histogram.counts, np.histogram(everything, bins=edges)[0])
    for q in (0.0, 0.01, 1, 25, 50, 90, 99.9, 99.99, 100):
        assert abs(histogram.percentile(q) - np.percentile(everything, q)) <= histogram.width, q
    with pytest.raises(ValueError):
        histogram.percentile(101)
    with pytest.raises(ValueError):
        HistogramObserver().percentile(50)


def test_histogram_memory_does_not_grow_with_updates(rng: np.random.Generator) -> None:
    histogram = HistogramObserver(256)

    def sizes() -> dict[str, int]:
        return {k: v.nbytes for k, v in vars(histogram).items() if isinstance(v, np.ndarray)}

    histogram.update(rng.standard_normal(100))
    before = sizes()
    for i in range(200):
        histogram.update(rng.standard_normal(500) * 1.05**i)
    assert sizes() == before == {"counts": 256 * 8} and histogram.counts.sum() == 100 + 200 * 500
    assert MinMaxObserver().__dict__.keys() == {"low", "high", "count", "batches", "ignored", "_low_sum", "_high_sum"}


def test_histogram_that_starts_with_zeros_keeps_them_at_zero(rng: np.random.Generator) -> None:
    histogram = HistogramObserver(64)
    histogram.update(np.zeros(10))
    assert histogram.width == 0.0 and histogram.percentile(50) == 0.0
    minmax = MinMaxObserver()
    minmax.update(np.zeros(10))
    assert estimate_range(minmax, histogram, "mse") == estimate_range(minmax, histogram, "percentile") == (0.0, 0.0)
    x = np.maximum(rng.standard_normal(1000), 0) + 1.0
    histogram.update(x)
    assert histogram.counts.sum() == 1010 and histogram.zeros == 10 and histogram.counts[histogram.zero_bin] >= 10
    assert histogram.edges[histogram.zero_bin] == 0.0 and histogram.zero_bin == 0
    assert histogram.percentile(0.5) == 0.0 and histogram.percentile(100) == x.max()
    relu = np.maximum(rng.standard_normal(10_000), 0)  # half exact zeros: they sit at 0, not spread over a bin
    _, histogram = observe([relu])
    for q in (10, 45, 49.9, 60, 99):
        assert histogram.percentile(q) == pytest.approx(np.percentile(relu, q), abs=histogram.width)
    assert histogram.percentile(45) == 0.0 < histogram.percentile(55)


def test_estimate_range_methods_always_include_zero(rng: np.random.Generator) -> None:
    batches = [rng.uniform(1, 2 + i, 1000) for i in range(4)]  # all positive: low is 0, not 1
    minmax, histogram = observe(batches)
    everything = np.concatenate(batches)
    assert estimate_range(minmax, histogram, "minmax") == (0.0, everything.max())
    assert estimate_range(minmax, histogram, "mean-minmax") == (0.0, pytest.approx(3.5, abs=0.01))
    assert estimate_range(minmax, histogram, "percentile", percentile=99) == (0.0, histogram.percentile(99))
    assert histogram.percentile(99) == pytest.approx(np.percentile(everything, 99), abs=histogram.width)
    negative = observe([-b for b in batches])
    assert estimate_range(*negative, "percentile", percentile=99) == (histogram_low := negative[1].percentile(1), 0.0)
    assert histogram_low == pytest.approx(-np.percentile(everything, 99), abs=negative[1].width)
    for method in ("minmax", "mean-minmax", "percentile", "mse"):
        for signed in (False, True):
            low, high = estimate_range(*negative, method, signed=signed)
            assert low < 0 and high == (-low if signed and method == "mse" else 0.0)
    with pytest.raises(ValueError, match="unknown"):
        estimate_range(minmax, histogram, "entropy")
    with pytest.raises(ValueError, match="needs a histogram"):
        estimate_range(minmax, None, "mse")
    with pytest.raises(ValueError, match="percentile"):
        estimate_range(minmax, histogram, "percentile", percentile=20)


@pytest.mark.parametrize("signed", [False, True])
def test_mse_range_beats_minmax_on_heavy_tails(rng: np.random.Generator, signed: bool) -> None:
    x = rng.laplace(size=100_000)
    x[rng.choice(x.size, 5, replace=False)] = [-30, 25, 40, -45, 50]  # a few outliers stretch the min/max range
    minmax, histogram = observe(np.array_split(x, 7))
    low, high = estimate_range(minmax, histogram, "mse", signed=signed)
    assert low < 0 < high < x.max()
    assert fake_mse(x, low, high, signed) < 0.9 * fake_mse(x, minmax.low, minmax.high, signed)  # 0.80, 0.73
    t = np.maximum(rng.standard_t(3, 50_000), 0)  # one-sided, so a 1-D brute force over the clip point is exhaustive
    minmax, histogram = observe(np.array_split(t, 3))
    low, high = estimate_range(minmax, histogram, "mse", signed=signed)
    assert low == (-high if signed else 0.0)
    brute = min(fake_mse(t, -c if signed else 0.0, c, signed) for c in np.linspace(1, t.max(), 150))
    assert fake_mse(t, low, high, signed) <= 1.02 * brute  # the expected-error model finds the real optimum
    assert fake_mse(t, low, high, signed) < fake_mse(t, 0.0, t.max(), signed)


def test_mse_range_keeps_the_full_range_of_uniform_data(rng: np.random.Generator) -> None:
    x = rng.uniform(-1.0, 3.0, 200_000)
    minmax, histogram = observe(np.array_split(x, 4))
    low, high = estimate_range(minmax, histogram, "mse")
    assert low <= 0.97 * x.min() and high >= 0.97 * x.max()
    low, high = estimate_range(minmax, histogram, "mse", signed=True)
    assert low == -high and high >= 0.97 * x.max()


def test_mse_range_is_fast() -> None:
    minmax, histogram = observe([np.random.default_rng(5).standard_t(2, 50_000)])
    assert histogram.counts.size == 2048
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        estimate_range(minmax, histogram, "mse")
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05
