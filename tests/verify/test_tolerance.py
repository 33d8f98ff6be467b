from __future__ import annotations

import numpy as np

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
