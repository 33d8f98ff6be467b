"""float16 range maths on arrays: overflow, underflow, rounding loss, streamed calibration ranges."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math import fp16


def test_limits_are_ieee_half() -> None:
    assert fp16.FP16_MAX == float(np.finfo(np.float16).max)
    assert fp16.FP16_NORMAL_MIN == float(np.finfo(np.float16).tiny)
    assert np.float16(fp16.FP16_SUBNORMAL_MIN) > 0 and np.float16(fp16.FP16_SUBNORMAL_MIN / 2) == 0


def test_overflow_with_and_without_margin() -> None:
    assert not fp16.overflows(np.array([65504.0, -1.0]))
    assert fp16.overflows(np.array([1.0, -70000.0]))
    assert fp16.overflows(np.array([20000.0]), margin=4.0)
    assert not fp16.overflows(np.array([np.inf, 1.0]))  # already infinite in float32: float16 changes nothing
    assert not fp16.overflows(np.zeros(0))


def test_underflow_share_counts_values_flushed_to_zero() -> None:
    values = np.array([0.0, 1e-9, 1e-8, 1e-3, 1.0])
    assert fp16.underflow_share(values) == pytest.approx(2 / 4)
    assert fp16.underflow_share(np.zeros(3)) == 0.0


def test_relative_loss_is_half_precision_rounding(rng: np.random.Generator) -> None:
    values = rng.standard_normal(10_000)
    loss = fp16.relative_loss(values)
    assert 1e-4 < loss < 2.0**-11  # unit roundoff bounds each element's relative error
    assert fp16.relative_loss(np.array([0.5, 0.25, 2.0])) == 0.0  # exact in float16
    assert fp16.relative_loss(np.zeros(4)) == 0.0
    assert fp16.relative_loss(np.array([1e5])) == np.inf
    assert fp16.relative_loss(np.full(8, 1e-9)) == pytest.approx(1.0)


def test_storage_reason(rng: np.random.Generator) -> None:
    assert fp16.storage_reason(rng.standard_normal(100), 1e-3) == ""
    assert "overflow" in fp16.storage_reason(np.array([1.0, 1e6]), 1e-3)
    tiny = fp16.storage_reason(rng.standard_normal(100) * 1e-8, 1e-3)
    assert "rounding loss" in tiny and "underflow" in tiny


def test_range_stats_stream_equals_whole(rng: np.random.Generator) -> None:
    data = rng.standard_normal((6, 50)).astype(np.float32) * np.logspace(-3, 3, 6, dtype=np.float32)[:, None]
    streamed = fp16.RangeStats()
    for row in data:
        streamed.update(row)
    assert streamed.max_abs == pytest.approx(float(np.abs(data).max()))
    assert streamed.loss == pytest.approx(fp16.relative_loss(data), rel=1e-3)
    assert not streamed.nonfinite


def test_range_stats_survive_huge_and_nonfinite_values() -> None:
    stats = fp16.RangeStats()
    stats.update(np.array([3e38, -3e38, np.nan], np.float32))
    assert stats.nonfinite and stats.max_abs == pytest.approx(3e38, rel=1e-6)
    assert stats.loss == np.inf and np.isfinite(stats.norm2)


def test_range_reason_margin_and_loss() -> None:
    stats = fp16.RangeStats()
    stats.update(np.array([1.0, -20000.0], np.float32))
    assert fp16.range_reason(stats, margin=1.0, max_loss=1e-3) == ""
    assert "margin 4" in fp16.range_reason(stats, margin=4.0, max_loss=1e-3)
    small = fp16.RangeStats()
    small.update(np.full(10, 1e-7, np.float32))
    assert "rounding loss" in fp16.range_reason(small, margin=4.0, max_loss=1e-3)
