"""Screening a candidate on the first verification samples: the bound that rejects early, and what it rejects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.verify.intervals import upper_bound
from graphopt.verify.output_kinds import OutputKind
from graphopt.verify.ranking import badness
from graphopt.verify.screening import screen, screen_stages
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

BUDGET = Tolerance(cosine=0.99, top1=0.99, iou=0.99)


def _noisy(reference: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (reference + scale * np.abs(reference).mean() * rng.standard_normal(reference.shape)).astype(np.float32)


def test_the_upper_bound_covers_the_population_mean() -> None:
    """Drawn 300 times from a skewed population, 32 samples' 99.9% upper bound falls below its mean rarely."""
    rng = np.random.default_rng(0)
    population_mean = 1 - 0.01  # cosines 1 - Exponential(0.01)
    misses = sum(upper_bound(1 - rng.exponential(0.01, 32), confidence=0.999) < population_mean for _ in range(300))
    assert misses <= 3
    assert upper_bound(np.full(5, 0.5)) == 0.5 and math.isnan(upper_bound(np.array([])))
    values = rng.random(40)
    assert upper_bound(values, confidence=0.999) >= upper_bound(values, confidence=0.9) >= values.mean()


def test_a_candidate_far_outside_the_budget_clearly_fails() -> None:
    reference = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    broken = screen({"embedding": reference}, {"embedding": _noisy(reference, 1.0)}, BUDGET, {})
    assert broken.samples == 32
    assert broken.failure.startswith("embedding: cosine ") and "on the first 32 samples" in broken.failure
    assert "99.9% confidence < 0.99" in broken.failure


def test_a_candidate_near_the_budget_goes_on_to_every_sample() -> None:
    """Mean cosine below the budget on 32 samples, half of them exact and half off: the full set may still pass,
    so no early verdict."""
    reference = np.random.default_rng(2).standard_normal((32, 64)).astype(np.float32)
    near = np.concatenate([reference[:16], _noisy(reference[16:], 0.3)])
    found = screen({"y": reference}, {"y": near}, BUDGET, {})
    stats = Verifier.compare({"y": reference}, {"y": near}, BUDGET.at_confidence(None), "original")
    assert stats.stats["y"].cosine < 0.99  # it fails on these samples' mean …
    assert found.failure == ""  # … but not clearly
    assert found.badness == pytest.approx(badness([stats]))


def test_rules_that_admit_no_error_fail_at_once_whatever_the_output_is_called() -> None:
    reference = np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32)
    with_nan = reference.copy()
    with_nan[5, 2] = np.nan
    found = screen({"prob:0": reference}, {"prob:0": with_nan}, BUDGET, {})
    assert found.failure == "prob:0: 1 NaN/Inf values the reference does not have" and math.isinf(found.badness)
    ids = np.arange(32 * 4).reshape(32, 4)
    moved = ids.copy()
    moved[0, 0] += 1
    assert "compared exactly" in screen({"ids": ids}, {"ids": moved}, BUDGET, {}).failure
    assert screen({"y": reference}, {}, BUDGET, {}).failure == "y: output missing"
    atol = screen({"y": reference}, {"y": reference + 0.5}, Tolerance(atol=0.1), {})
    assert atol.failure.startswith("y: max |error| 0.5 exceeds atol 0.1")


def test_class_scores_and_maps_are_screened_by_what_they_are() -> None:
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((32, 10, 30)).astype(np.float32)  # [samples, positions, classes]
    shuffled = logits[:, :, rng.permutation(30)]
    kinds = {"logits": OutputKind(-1, "named")}
    assert "top-1 agreement" in screen({"logits": logits}, {"logits": logits * 1.0 + 0.3 * shuffled}, Tolerance(
        top1=0.99), kinds).failure
    maps = rng.random((32, 1, 16, 16)).astype(np.float32)
    eroded = np.where(maps > 0.5, maps - 0.3, maps)  # most text pixels fall under the threshold
    found = screen({"map": maps}, {"map": eroded}, Tolerance(iou=0.99), {"map": OutputKind(None, "named", 0.5)})
    assert found.failure.startswith("map: mask IoU ")


def test_screening_stages_grow_fourfold_and_stop_short_of_the_whole_set() -> None:
    assert screen_stages(1000) == (32, 128, 512)
    assert screen_stages(128) == (32,) and screen_stages(33) == (32,)
    assert screen_stages(32) == () and screen_stages(5) == ()


def test_units_are_ranked_by_the_margins_they_give_up_not_by_how_far_scores_move() -> None:
    """Two candidates of class scores that flip no top-1: one adds a constant to every score of a position (the
    argmax and every margin kept, as softmax keeps them), the other adds a little noise, which eats into margins.
    By cosine the first is further from the reference; for top-1 it is harmless, and so it ranks first. A flip
    counts as a whole position."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((32, 22, 40)).astype(np.float32)
    np.put_along_axis(logits, logits.argmax(axis=-1)[..., None], logits.max(axis=-1, keepdims=True) + 0.3, axis=-1)
    shifted = (logits + rng.uniform(0.05, 0.1, (32, 22, 1))).astype(np.float32)
    noisy = (logits + 0.02 * rng.standard_normal(logits.shape)).astype(np.float32)
    kinds = {"logits": OutputKind(-1, "named")}
    kept, eaten = (screen({"logits": logits}, {"logits": c}, BUDGET, kinds) for c in (shifted, noisy))
    stats = [Verifier.compare({"logits": logits}, {"logits": c}, BUDGET, "original", kinds).stats["logits"]
             for c in (shifted, noisy)]
    assert stats[0].top1 == stats[1].top1 == 1.0 and stats[0].cosine < stats[1].cosine
    assert kept.badness < eaten.badness
    assert kept.badness == pytest.approx(1 - stats[0].cosine, rel=1e-3)  # no margin given up but float32 rounding

    flipped = logits.copy()
    flipped[0, 0] = logits[0, 0]
    top, second = np.argsort(logits[0, 0])[-1], np.argsort(logits[0, 0])[-2]
    flipped[0, 0, second] = logits[0, 0, top] + 1e-3  # one position of 32 × 22 flips, nothing else moves
    flip = screen({"logits": logits}, {"logits": flipped}, BUDGET, kinds)
    assert flip.badness >= 1 / (32 * 22)
