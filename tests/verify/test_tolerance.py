from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.errors import ToleranceError
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance, judge


def test_lossless_bound_is_allclose(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((8, 4))
    tol = Tolerance.lossless()
    inside = ref + 5e-6
    outside = ref + 1e-3
    assert judge({"y": error_stats(ref, inside, tol.rtol)}, tol).passed
    verdict = judge({"y": error_stats(ref, outside, tol.rtol)}, tol)
    assert not verdict.passed and "atol" in verdict.failures[0]


def test_budget_cosine_and_top1(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((100, 10))
    tol = Tolerance.budget()
    assert judge({"y": error_stats(ref, ref * 1.5)}, tol).passed
    flipped = ref.copy()
    flipped[:5] = -flipped[:5]
    failures = judge({"y": error_stats(ref, flipped)}, tol).failures
    assert any("cosine" in f for f in failures) and any("top-1" in f for f in failures)


def test_per_output_override_and_exact_outputs(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((10, 3))
    noisy = ref + 0.3 * rng.standard_normal((10, 3))
    tol = Tolerance(cosine=0.999, per_output={"loose": Tolerance(cosine=0.5)})
    assert judge({"loose": error_stats(ref, noisy)}, tol).passed
    assert not judge({"tight": error_stats(ref, noisy)}, tol).passed
    labels = judge({"label": error_stats(np.array([1, 2]), np.array([1, 3]))}, Tolerance())
    assert not labels.passed and "exactly" in labels.failures[0]


def test_nonfinite_fails_every_tolerance() -> None:
    verdict = judge({"y": error_stats(np.array([[1.0]]), np.array([[np.nan]]))}, Tolerance())
    assert not verdict.passed and "NaN" in verdict.failures[0]


def _borderline(rng: np.random.Generator, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A candidate whose mean per-sample cosine sits just above 0.99, with a spread between samples: most samples
    agree closely, a few much less."""
    ref = rng.standard_normal((n, 16))
    noise = np.where(np.arange(n)[:, None] % 10 == 0, 0.3, 0.02) * rng.standard_normal((n, 16))
    return ref, ref + noise


def test_a_borderline_candidate_is_rejected_by_its_bound_and_accepted_by_its_mean(rng: np.random.Generator) -> None:
    ref, got = _borderline(rng)
    bounded = error_stats(ref, got, confidence=0.95)
    assert 0.99 <= bounded.cosine and bounded.cosine_low is not None and bounded.cosine_low < 0.99
    verdict = judge({"y": bounded}, Tolerance(cosine=0.99))
    assert not verdict.passed and "lower confidence bound" in verdict.failures[0]
    assert judge({"y": bounded}, Tolerance(cosine=0.99, confidence=None)).passed  # the old rule: the mean only
    assert judge({"y": error_stats(ref, got)}, Tolerance(cosine=0.99)).passed  # no bound computed, none judged


def test_a_clear_candidate_passes_its_bound_and_identical_outputs_bound_at_one(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((80, 16))
    close = error_stats(ref, ref + 1e-3 * rng.standard_normal(ref.shape), confidence=0.95)
    assert close.cosine_low is not None and 0.99 < close.cosine_low <= close.cosine
    assert judge({"y": close}, Tolerance.budget()).passed
    same = error_stats(ref, ref.copy(), confidence=0.95)
    assert same.cosine_low == same.top1_low == 1.0


def test_top1_is_judged_on_its_bound(rng: np.random.Generator) -> None:
    ref = rng.standard_normal((200, 10))
    got = ref.copy()
    got[:2] = got[:2, ::-1]  # 2 of 200 argmaxes change: 0.99 agreement, right at the budget
    stats = error_stats(ref, got, confidence=0.95)
    assert stats.top1 is not None and stats.top1 >= 0.99 - 1e-12
    assert stats.top1_low is not None and stats.top1_low < 0.99
    assert any("top-1 agreement" in f and "bound" in f for f in judge({"y": stats}, Tolerance.budget()).failures)


def test_confidence_is_checked() -> None:
    for value in (0.0, 1.0, float("nan"), 0.3):
        with pytest.raises(ToleranceError, match="confidence"):
            Tolerance(confidence=value)
    assert Tolerance().confidence == Tolerance.budget().confidence == 0.95


def test_a_share_of_the_budget_scales_every_allowed_error() -> None:
    budget = Tolerance(cosine=0.99, top1=0.98, iou=0.9, snr_db=20.0, atol=1e-3, confidence=0.9,
                       per_output={"boxes": Tolerance(cosine=0.95)})
    half = budget.share(0.5)
    assert half.cosine == pytest.approx(0.995) and half.top1 == pytest.approx(0.99) and half.iou == pytest.approx(0.95)
    assert half.snr_db == pytest.approx(20.0 + 10 * math.log10(2)) and half.atol == pytest.approx(5e-4)
    assert half.per_output["boxes"].cosine == pytest.approx(0.975) and half.confidence == 0.9
    assert budget.share(1.0) == budget
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ToleranceError):
            budget.share(bad)
