from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.verify.metrics import error_stats, looks_like_classifier


def test_identical_outputs_are_exact(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((10, 5)).astype(np.float32)
    s = error_stats(ref, ref.copy())
    assert s.max_abs == 0 and s.min_atol == 0 and s.mismatches == 0
    assert s.cosine == pytest.approx(1.0) and math.isinf(s.snr_db) and s.top1 == 1.0


def test_metrics_match_numpy_references(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((20, 6))
    got = ref + rng.standard_normal((20, 6)) * 0.01
    s = error_stats(ref, got, rtol=1e-3)
    diff = np.abs(got - ref)
    assert s.max_abs == pytest.approx(diff.max())
    assert s.median_abs == pytest.approx(np.median(diff))
    assert s.p99_abs == pytest.approx(np.percentile(diff, 99))
    assert s.min_atol == pytest.approx(max(0.0, (diff - 1e-3 * np.abs(ref)).max()))
    assert np.allclose(got, ref, atol=s.min_atol + 1e-12, rtol=1e-3)
    cos = [r @ g / np.linalg.norm(r) / np.linalg.norm(g) for r, g in zip(ref, got, strict=False)]
    assert s.cosine == pytest.approx(np.mean(cos)) and s.cosine_min == pytest.approx(np.min(cos))
    assert s.snr_db == pytest.approx(10 * np.log10((ref**2).sum() / ((got - ref) ** 2).sum()))


def test_top1_only_for_classifier_like_outputs(rng: np.random.Generator) -> None:
    assert looks_like_classifier((8, 10)) and not looks_like_classifier((8, 384)) and not looks_like_classifier((8,))
    ref = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    got = ref.copy()
    got[2] = [0.1, 0.2]
    assert error_stats(ref, got).top1 == 0.75
    assert error_stats(rng.standard_normal((4, 384)), rng.standard_normal((4, 384))).top1 is None


def test_nan_rule() -> None:
    ref = np.array([[1.0, np.nan, np.inf]])
    assert error_stats(ref, ref.copy()).nonfinite_mismatch == 0
    got = np.array([[1.0, 2.0, np.inf]])
    assert error_stats(ref, got).nonfinite_mismatch == 1
    got = np.array([[1.0, np.nan, -np.inf]])
    assert error_stats(ref, got).nonfinite_mismatch == 1
    assert error_stats(np.array([[1.0, 2.0]]), np.array([[np.nan, 2.0]])).nonfinite_mismatch == 1


def test_integer_outputs_are_exact() -> None:
    s = error_stats(np.array([1, 2, 3]), np.array([1, 2, 4]))
    assert s.exact and s.mismatches == 1


def test_zero_vectors_and_shape_mismatch() -> None:
    zeros = np.zeros((2, 3))
    assert error_stats(zeros, zeros).cosine == 1.0
    assert error_stats(zeros, np.ones((2, 3))).cosine == 0.0
    with pytest.raises(ValueError):
        error_stats(zeros, np.zeros((3, 2)))
