from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from graphopt.columns import Rows, SpillFile
from graphopt.outputs import RaggedOutput
from graphopt.verify import metrics
from graphopt.verify.metrics import (
    comparable,
    error_stats,
    identical,
    looks_like_classifier,
    margin_losses,
    per_sample_cosine,
    per_sample_top1,
    shape_mismatches,
)
from graphopt.verify.tolerance import Tolerance, judge


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


def ragged(*samples: np.ndarray | list[float]) -> RaggedOutput:
    return RaggedOutput(tuple(np.asarray(s, dtype=np.float32) for s in samples))


def test_ragged_outputs_compare_sample_by_sample(rng: np.random.Generator) -> None:
    """A NonZero/TopK-style output (one array per sample, shapes varying) has the figures of its samples pooled."""
    ref = RaggedOutput(tuple(rng.standard_normal((1, k)).astype(np.float32) for k in (3, 5, 1, 4)))
    got = RaggedOutput(tuple((a + 0.01 * rng.standard_normal(a.shape)).astype(np.float32) for a in ref.samples))
    s = error_stats(ref, got, rtol=1e-3)
    pairs = [(r.astype(np.float64).ravel(), g.astype(np.float64).ravel()) for r, g in zip(ref.samples, got.samples,
                                                                                          strict=True)]
    diffs = np.concatenate([np.abs(g - r) for r, g in pairs])
    cosines = [r @ g / np.linalg.norm(r) / np.linalg.norm(g) for r, g in pairs]
    assert s.n_samples == 4 and s.shape_mismatches == 0 and not s.exact and s.top1 is None
    assert s.max_abs == pytest.approx(diffs.max()) and s.median_abs == pytest.approx(np.median(diffs))
    assert s.cosine == pytest.approx(np.mean(cosines)) and s.cosine_min == pytest.approx(np.min(cosines))
    assert np.allclose(per_sample_cosine(ref, got), cosines)
    same = error_stats(ref, ref)
    assert same.max_abs == 0 and same.mismatches == 0 and math.isinf(same.snr_db)
    indices = RaggedOutput((np.array([[0, 2]]), np.array([[1]])))
    assert error_stats(indices, RaggedOutput((np.array([[0, 2]]), np.array([[3]])))).mismatches == 1


def test_samples_whose_shapes_differ_are_counted_and_left_out() -> None:
    ref = ragged([1.0, 2.0], [3.0], [1.0, 0.0, 1.0])
    got = ragged([1.0, 2.0], [3.0, 0.0], [1.0, 0.0, 1.5])
    assert comparable(ref, got) and shape_mismatches(ref, got) == [1]
    s = error_stats(ref, got)
    assert s.shape_mismatches == 1 and s.n_samples == 3
    assert s.max_abs == pytest.approx(0.5)  # sample 1 is left out of the figures, not read as zeros
    cosine = per_sample_cosine(ref, got)
    assert cosine[0] == pytest.approx(1.0) and math.isnan(cosine[1]) and s.cosine == pytest.approx(np.nanmean(cosine))
    assert s.to_dict()["shape_mismatches"] == 1 and error_stats(ref, ref).to_dict()["shape_mismatches"] == 0
    nothing_agrees = error_stats(ragged([1.0]), ragged([1.0, 2.0]))
    assert nothing_agrees.shape_mismatches == 1 and nothing_agrees.max_abs == 0 and nothing_agrees.cosine == 1.0
    assert not comparable(ref, ragged([1.0])) and not comparable(ref, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="3 samples"):
        error_stats(ref, ragged([1.0]))


def test_a_fixed_shape_reference_against_a_ragged_candidate() -> None:
    """The candidate changed one sample's shape: the reference is an array, compared per sample (``ref[i]``)."""
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    got = RaggedOutput((ref[0], np.array([0.8, 0.2, 0.0], np.float32), np.array([0.9, 0.1], np.float32)))
    assert comparable(ref, got) and comparable(got, ref) and shape_mismatches(ref, got) == [1]
    s = error_stats(ref, got)
    assert s.shape_mismatches == 1 and s.top1 == 0.5  # over the two samples whose shapes agree
    top1 = per_sample_top1(ref, got)
    assert top1 is not None and top1[0] == 1.0 and math.isnan(top1[1]) and top1[2] == 0.0
    assert per_sample_top1(got, ref) is None  # a ragged reference is never classifier-like
    assert error_stats(got, ref).shape_mismatches == 1
    np.testing.assert_array_equal(per_sample_top1(ref, ref.copy()), [1.0, 1.0, 1.0])


def test_nan_rule_holds_per_sample() -> None:
    ref = ragged([1.0, np.nan], [np.inf])
    assert error_stats(ref, ragged([1.0, np.nan], [np.inf])).nonfinite_mismatch == 0
    assert error_stats(ref, ragged([1.0, 2.0], [-np.inf])).nonfinite_mismatch == 2


def test_identical_is_bitwise_and_layout_aware() -> None:
    a = ragged([1.0], [2.0, 3.0])
    assert identical(a, ragged([1.0], [2.0, 3.0])) and not identical(a, ragged([1.0], [2.0, 3.5]))
    assert not identical(a, np.array([[1.0], [2.0]], np.float32)) and not identical(ragged([1.0]), a)
    x = np.arange(4.0)
    assert identical(x, x.copy()) and not identical(x, x.astype(np.float32)) and not identical(x, x.reshape(2, 2))


def _probability_maps(rng: np.random.Generator, n: int = 40, empty: int = 10) -> np.ndarray:
    """Text-detector-like maps [n, 1, 32, 32]: blobs near 1 on most images, ~1e-7 everywhere on ``empty`` images."""
    maps = 1e-7 * rng.random((n, 1, 32, 32))
    for i in range(empty, n):
        y, x = rng.integers(4, 24, 2)
        maps[i, 0, y:y + 6, x:x + 8] = 0.9 + 0.1 * rng.random((6, 8))
    return maps


def test_an_empty_map_that_the_candidate_matches_does_not_fail(rng: np.random.Generator) -> None:
    """On images without text a detector's map is ~1e-7: a candidate matching it to 1e-6 has a per-sample cosine near
    0 (noise against noise), which used to fail every quantised detector. Judged against the output's range, it agrees."""
    reference = _probability_maps(rng)
    candidate = reference + 1e-6 * rng.standard_normal(reference.shape)
    plain = np.array([np.dot(r.ravel(), c.ravel()) / np.linalg.norm(r) / np.linalg.norm(c)
                      for r, c in zip(reference[:10], candidate[:10], strict=True)])
    assert plain.mean() < 0.5  # what the cosine alone says of the empty maps
    stats = error_stats(reference, candidate, confidence=0.95)
    assert stats.near_zero_samples == 10 and stats.cosine > 0.999
    assert judge({"map": stats}, Tolerance.budget()).passed
    assert np.all(per_sample_cosine(reference, candidate)[:10] == 1.0)


def test_a_candidate_that_lights_up_an_empty_map_fails(rng: np.random.Generator) -> None:
    reference = _probability_maps(rng)
    candidate = reference.copy()
    candidate[3, 0, 10:16, 10:18] = 0.6  # text "found" on an image without any
    stats = error_stats(reference, candidate, confidence=0.95)
    assert stats.near_zero_samples == 10 and stats.cosine == pytest.approx(39 / 40)
    assert not judge({"map": stats}, Tolerance.budget()).passed


def test_a_faint_map_that_stays_below_the_threshold_agrees_and_one_that_crosses_it_does_not(
        rng: np.random.Generator) -> None:
    """An image without text can give a faint map (peaks of 0.1, far above 1e-7 yet far below a detector's 0.3):
    a candidate whose faint response moves elsewhere has a cosine near 0 there, though the detector finds nothing
    on either side. Of a probability map such a sample is judged by its mask; of any other output, by cosine."""
    reference = _probability_maps(rng)
    reference[:10] += 0.1 * (rng.random((10, 1, 32, 32)) > 0.99)  # faint specks on the images without text
    candidate = reference.copy()
    candidate[:10] = 0.1 * (rng.random((10, 1, 32, 32)) > 0.99)  # other specks, as faint
    as_map = error_stats(reference, candidate, confidence=0.95, mask_threshold=0.3)
    assert as_map.near_zero_samples == 10 and as_map.cosine == 1.0 and as_map.iou == 1.0
    assert judge({"map": as_map}, Tolerance.budget()).passed
    assert np.all(per_sample_cosine(reference, candidate, mask_threshold=0.3)[:10] == 1.0)
    as_values = error_stats(reference, candidate, confidence=0.95)
    assert as_values.near_zero_samples == 0 and as_values.cosine < 0.8
    candidate[4, 0, 5, 5] = 0.31  # one pixel of "text" found on an image without any
    crossed = error_stats(reference, candidate, confidence=0.95, mask_threshold=0.3)
    assert crossed.cosine == pytest.approx(39 / 40) and not judge({"map": crossed}, Tolerance.budget()).passed


@pytest.mark.parametrize("options", [{}, {"rtol": 1e-2, "confidence": 0.95}, {"class_axis": -1},
                                     {"mask_threshold": 0.3, "confidence": 0.9}])
def test_block_by_block_equals_one_block(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                         options: dict) -> None:
    """Outputs are compared a few samples at a time (``BLOCK_ELEMENTS``); the figures are those of one pass over the
    whole output, non-finite values, near-zero samples and masks included."""
    from graphopt.verify import metrics

    ref = rng.random((9, 4, 5)).astype(np.float32)
    ref[2] *= 1e-6  # a near-zero sample: judged by absolute error, not by cosine
    got = (ref + 0.05 * rng.standard_normal(ref.shape)).astype(np.float32)
    ref[4, 1, 1], got[4, 1, 1] = np.inf, np.inf  # matched: an exact match
    got[6, 0, 3] = np.nan  # unmatched: a non-finite mismatch
    whole = error_stats(ref, got, **options)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7)  # fewer than one sample: one sample a block
    blocks = error_stats(ref, got, **options)
    for name, value in whole.to_dict().items():
        assert blocks.to_dict()[name] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), name
    assert whole.nonfinite_mismatch == 1 and whole.n_samples == 9


def _on_disk(array: np.ndarray) -> Rows:
    """``array`` as a verifier holds a large output: ``Rows`` of a ``SpillFile``, written in two parts."""
    spill = SpillFile(array.dtype, array.shape[1:])
    spill.append(array[:3])
    spill.append(array[3:])
    return Rows(spill)


@pytest.mark.parametrize("options", [{"rtol": 1e-2, "confidence": 0.95}, {"class_axis": -1},
                                     {"mask_threshold": 0.3, "confidence": 0.9}])
def test_outputs_on_disk_compare_as_arrays_do(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                              options: dict) -> None:
    """A large output is kept in a temporary file and compared a block at a time: the figures are the in-memory
    arrays', whichever side is on disk, with probabilities' margins in log-scores (the reference's minimum is read
    from the file) and non-finite values and masks included; per-sample figures and ``identical`` read it too."""
    ref = rng.random((9, 4, 5)).astype(np.float32)
    got = (ref + 0.05 * rng.standard_normal(ref.shape)).astype(np.float32)
    got[6, 0, 3] = np.nan
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 45)  # a block of two samples and a quarter: several reads
    expected = error_stats(ref, got, **options).to_dict()
    for pair in ((_on_disk(ref), got), (ref, _on_disk(got)), (_on_disk(ref), _on_disk(got))):
        assert comparable(*pair) and shape_mismatches(*pair) == []
        assert error_stats(*pair, **options).to_dict() == expected
        np.testing.assert_array_equal(per_sample_top1(*pair, -1), per_sample_top1(ref, got, -1))
    assert identical(_on_disk(ref), ref) and not identical(_on_disk(ref), got)
    assert not identical(_on_disk(ref), ref.astype(np.float64))


def test_a_comparison_gathered_in_parts_equals_one_of_the_whole(rng: np.random.Generator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A search screens a candidate on its first samples and goes on from there: the statistics of the first part
    are those of the first samples alone, and after the rest those of the whole, NaNs, top-1 margins and masks
    included; a part that does not follow the reference is refused."""
    ref = rng.random((11, 3, 7)).astype(np.float32)
    got = (ref + 0.1 * rng.standard_normal(ref.shape)).astype(np.float32)
    got[8, 1, 2] = np.nan
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 30)  # blocks of one sample, and parts across them
    options = {"rtol": 1e-2, "class_axis": 1, "mask_threshold": 0.5}
    comparison = metrics.Comparison(ref, **options)
    comparison.add(got[:4])
    head = comparison.stats(0.95)
    assert head.n_samples == 4 and head.nonfinite_mismatch == 0
    assert head.to_dict() == pytest.approx(error_stats(ref[:4], got[:4], confidence=0.95, **options).to_dict())
    comparison.add(_on_disk(got[4:]))
    whole = comparison.stats(0.95)
    assert whole.n_samples == 11 and whole.nonfinite_mismatch == 1
    assert whole.to_dict() == pytest.approx(error_stats(ref, got, confidence=0.95, **options).to_dict())
    assert comparison.stats(None).cosine_low is None and comparison.stats(None).cosine == whole.cosine
    with pytest.raises(ValueError, match="do not follow a reference"):
        comparison.add(got[:1])


def test_per_sample_values_are_what_the_stats_average(rng: np.random.Generator) -> None:
    """A search screens on ``ErrorStats.per_sample``: each sample's cosine, top-1 share and mask IoU, whose means
    are the reported figures and which equal the per-sample functions'."""
    from graphopt.verify.metrics import per_sample_iou

    ref = rng.random((12, 3, 6)).astype(np.float32)
    got = (ref + 0.2 * rng.standard_normal(ref.shape)).astype(np.float32)
    s = error_stats(ref, got, class_axis=1, mask_threshold=0.5)
    assert s.per_sample is not None and s.per_sample.top1 is not None and s.per_sample.iou is not None
    np.testing.assert_allclose(s.per_sample.cosine, per_sample_cosine(ref, got, 0.5))
    np.testing.assert_allclose(s.per_sample.top1, per_sample_top1(ref, got, 1))
    np.testing.assert_allclose(s.per_sample.iou, per_sample_iou(ref, got, 0.5))
    assert (s.cosine, s.top1, s.iou) == pytest.approx(
        (s.per_sample.cosine.mean(), s.per_sample.top1.mean(), s.per_sample.iou.mean()))
    assert "per_sample" not in s.to_dict()


def test_error_percentiles_keep_bounded_memory_beyond_a_cap(rng: np.random.Generator,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``KEPT_ERRORS`` positions the median and 99th percentile come from evenly spaced errors (the block
    boundaries do not shift the spacing); every other figure still covers every position."""
    ref = rng.standard_normal((300, 70))
    got = ref + rng.standard_normal((300, 70)) * 0.01
    diff = np.abs(got - ref)
    monkeypatch.setattr(metrics, "KEPT_ERRORS", 1000)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7 * 70)  # 7 samples per block: 490 positions, not a multiple of 21
    s = error_stats(ref, got)
    spaced = diff.ravel()[::21]  # ceil(21,000 / 1,000)
    assert s.median_abs == pytest.approx(np.median(spaced)) and s.p99_abs == pytest.approx(np.percentile(spaced, 99))
    assert s.median_abs == pytest.approx(np.median(diff), rel=0.05)
    assert s.mean_abs == pytest.approx(diff.mean()) and s.max_abs == pytest.approx(diff.max())
    monkeypatch.setattr(metrics, "KEPT_ERRORS", 1 << 20)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 1 << 18)
    zeros, ones = np.zeros((400, 50_000), np.float32), np.ones((400, 50_000), np.float32)
    tracemalloc.start()
    try:
        error_stats(zeros, ones)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**26, f"{peak / 2**20:.0f} MiB to compare 20M positions (their errors alone took 80 MiB)"


def test_margin_losses_are_the_share_of_the_reference_margin_given_up() -> None:
    """Top class 0 over runner-up 1 by 2: a candidate at 2 − 1.5 gave up 3/4 of it, a flip counts 1, a tie kept 0;
    for probabilities, margins of the logarithms (log 0.7/0.2 given up to log 0.6/0.3)."""
    reference = np.array([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    candidate = np.array([[2.0, 1.5, 0.0], [1.0, 2.0, 0.0], [1.0, 1.0, 0.5]])
    agree, loss = margin_losses(reference, candidate, 1)
    assert agree.tolist() == [1.0, 0.0, 1.0]
    assert loss == pytest.approx([0.75, 1.0, 0.0])
    _, in_logs = margin_losses(np.array([[0.7, 0.2, 0.1]]), np.array([[0.6, 0.3, 0.1]]), 1, logs=True)
    assert in_logs == pytest.approx([1 - math.log(2) / math.log(3.5)])
    positions = np.array([[[3.0, 1.0], [1.0, 3.0]]])  # one sample of two positions, classes last
    agree, loss = margin_losses(positions, positions[:, :, ::-1].copy(), 2)
    assert agree.tolist() == [0.0] and loss.tolist() == [1.0]


def test_finite_values_whose_sum_overflows_are_not_taken_for_non_finite_ones() -> None:
    """Finiteness is first read from the sums of both sides; float64 values near the largest finite one overflow
    them, and must still compare as the finite values they are."""
    big = np.full((4, 3), 1e308)
    with_nan = big.copy()
    with_nan[1, 2] = np.nan
    with np.errstate(over="ignore", invalid="ignore"):  # the squares behind the cosine overflow, as they always did
        s = error_stats(big, big * 0.5)
        assert s.nonfinite_mismatch == 0 and s.max_abs == pytest.approx(0.5e308)
        assert error_stats(big, with_nan).nonfinite_mismatch == 1


def test_the_reference_sign_is_asked_for_only_where_top1_is_judged(rng: np.random.Generator) -> None:
    """Whether the reference holds probabilities decides how top-1 margins are read; finding out reads the whole
    reference, so a comparison that judges no class axis never asks."""
    probabilities = rng.dirichlet(np.ones(10), size=50)
    asked: list[int] = []

    def nonnegative() -> bool:
        asked.append(1)
        return True

    metrics.Comparison(probabilities, class_axis=None, nonnegative=nonnegative).add(probabilities)
    assert asked == []
    judged = metrics.Comparison(probabilities, class_axis=-1, nonnegative=nonnegative)
    judged.add(probabilities)
    assert asked == [1] and judged.stats().top1 == 1.0
