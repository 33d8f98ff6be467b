"""Pruning maths against direct references: norms, scores, channel choice, streamed Gram, refits and masks."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math.pruning import (
    accumulate,
    channel_norms,
    channels_to_remove,
    energy_scores,
    magnitude_mask,
    masked_refit,
    nm_mask,
    output_error,
    reconstruct,
    wanda_scores,
)


def correlated_inputs(rng: np.random.Generator, rows: int = 1000, k: int = 16, latent: int = 4) -> np.ndarray:
    """Inputs driven by a few latent factors plus small noise, with a non-zero mean per channel."""
    mixed = rng.standard_normal((rows, latent)) @ rng.standard_normal((latent, k))
    return mixed + 0.01 * rng.standard_normal((rows, k)) + rng.standard_normal(k)


def direct_error(x: np.ndarray, w: np.ndarray, b: np.ndarray, keep: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> float:
    reference = x @ w + b
    return float(np.sum((x[:, keep] @ w2 + b2 - reference) ** 2) / np.sum(reference**2))


def test_channel_norms_match_loops(rng: np.random.Generator) -> None:
    conv = rng.standard_normal((6, 3, 2, 2))
    matrix = rng.standard_normal((5, 7))
    for order in (1, 2):
        expected = [np.linalg.norm(conv[i].ravel(), order) for i in range(6)]
        np.testing.assert_allclose(channel_norms(conv, 0, order), expected, rtol=1e-12)
        expected = [np.linalg.norm(matrix[:, j], order) for j in range(7)]
        np.testing.assert_allclose(channel_norms(matrix, 1, order), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="order"):
        channel_norms(matrix, 0, 3)


def test_energy_score_is_the_rms_output_change_of_removing_the_channel(rng: np.random.Generator) -> None:
    x = rng.standard_normal((400, 5)) * np.array([0.1, 1.0, 3.0, 0.5, 2.0]) + 1.0
    w = rng.standard_normal((5, 4))
    scores = energy_scores(np.mean(x**2, axis=0), w)
    for i in range(5):
        dropped = w.copy()
        dropped[i] = 0
        rms = np.sqrt(np.mean(np.sum((x @ w - x @ dropped) ** 2, axis=1)))
        assert scores[i] == pytest.approx(rms, rel=1e-10)
    with pytest.raises(ValueError, match="K×N"):
        energy_scores(np.ones(4), w)


@pytest.mark.parametrize(
    ("count", "ratio", "align", "minimum", "removed"),
    [
        (10, 0.0, 1, 1, 0),
        (10, 0.3, 1, 1, 3),  # 0.3·10 is 3.0000000000000004 in floats
        (10, 0.29, 1, 1, 2),
        (10, 0.999, 1, 1, 9),
        (10, 1.0, 1, 1, 9),  # at least one channel is kept
        (10, 1.0, 1, 0, 10),
        (10, 0.5, 1, 8, 2),
        (20, 0.5, 8, 1, 4),  # keep 10 → 16
        (20, 0.9, 8, 1, 12),  # keep 2 → 8
        (20, 0.1, 8, 1, 0),  # keep 18 → 24 > 20: nothing removed
        (20, 1.0, 8, 1, 12),
        (20, 0.5, 8, 17, 0),  # at least 17 → 24 > 20
    ],
)
def test_channels_to_remove_counts(count: int, ratio: float, align: int, minimum: int, removed: int) -> None:
    scores = np.arange(count, 0, -1, dtype=float)  # the last channels score lowest
    result = channels_to_remove(scores, ratio, align=align, minimum=minimum)
    np.testing.assert_array_equal(result, np.arange(count - removed, count))
    kept = count - removed
    assert removed <= np.floor(ratio * count + 1e-9) and (kept % align == 0 or kept == count) and kept >= minimum


def test_channels_to_remove_picks_the_lowest_and_breaks_ties_by_index() -> None:
    scores = np.array([5.0, 1.0, 3.0, 1.0, 0.5, 1.0, 9.0])
    np.testing.assert_array_equal(channels_to_remove(scores, 3 / 7), [1, 3, 4])
    np.testing.assert_array_equal(channels_to_remove(scores, 2 / 7), [1, 4])
    np.testing.assert_array_equal(channels_to_remove(np.ones(6), 0.5), [0, 1, 2])
    with pytest.raises(ValueError, match="align"):
        channels_to_remove(scores, 0.5, align=0)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_streamed_augmented_gram_equals_the_concatenation(rng: np.random.Generator, dtype: type,
                                                          rtol: float) -> None:
    """float64 batches sum exactly; float32 ones (onnxruntime's activations) multiply in float32, within 10⁻⁶."""
    batches = [rng.standard_normal((n, 5, 3, 2)).astype(dtype) for n in (4, 1, 7)]  # NCHW: channels on axis 1
    state = None
    for batch in batches:
        state = accumulate(state, batch, axis=1)
    rows = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, 5) for b in batches]).astype(np.float64)
    augmented = np.hstack([rows, np.ones((len(rows), 1))])
    assert state is not None and state.count == 72 and state.features == 5 and state.matrix.dtype == np.float64
    np.testing.assert_allclose(state.matrix, augmented.T @ augmented, rtol=rtol)
    np.testing.assert_allclose(state.mean_square, np.mean(rows**2, axis=0), rtol=rtol)
    np.testing.assert_allclose(state.plain, rows.T @ rows, rtol=rtol)
    last = accumulate(None, rows, axis=-1)
    np.testing.assert_allclose(last.matrix, state.matrix, rtol=rtol)
    with pytest.raises(ValueError, match="channels"):
        accumulate(state, rng.standard_normal((2, 4)))


def test_reconstruct_recovers_a_channel_that_is_a_combination_of_kept_ones(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 6))
    x[:, 2] = 0.7 * x[:, 0] - 1.3 * x[:, 4] + 0.5  # exact affine combination: the bias row absorbs the constant
    w, b = rng.standard_normal((6, 3)), rng.standard_normal(3)
    gram, keep = accumulate(None, x), np.array([0, 1, 3, 4, 5])
    w2, b2 = reconstruct(gram, w, b, keep, ridge=1e-12)
    np.testing.assert_allclose(x[:, keep] @ w2 + b2, x @ w + b, atol=1e-6)
    assert output_error(gram, w, b, keep, w2, b2) < 1e-12 < output_error(gram, w, b, keep, w[keep], b)


def test_reconstruct_beats_plain_dropping_on_correlated_inputs(rng: np.random.Generator) -> None:
    x = correlated_inputs(rng)
    w, b = rng.standard_normal((16, 8)), rng.standard_normal(8)
    gram = accumulate(None, x)
    keep = np.setdiff1d(np.arange(16), [3, 7, 11])
    w2, b2 = reconstruct(gram, w, b, keep)
    dropped, refitted = output_error(gram, w, b, keep, w[keep], b), output_error(gram, w, b, keep, w2, b2)
    assert refitted < 1e-3 * dropped, (refitted, dropped)
    assert dropped == pytest.approx(direct_error(x, w, b, keep, w[keep], b), rel=1e-9)
    assert refitted == pytest.approx(direct_error(x, w, b, keep, w2, b2), rel=1e-6)
    ridge_free = reconstruct(gram, w, b, keep, ridge=0.0)  # the least-squares optimum: no refit beats it
    assert output_error(gram, w, b, keep, *ridge_free) <= refitted + 1e-12


def test_reconstruct_keeping_everything_returns_the_original(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 5)) + 2.0
    w, b = rng.standard_normal((5, 4)), rng.standard_normal(4)
    gram = accumulate(None, x)
    w2, b2 = reconstruct(gram, w, b, np.arange(5), ridge=1e-10)
    np.testing.assert_allclose(w2, w, atol=1e-7)
    np.testing.assert_allclose(b2, b, atol=1e-7)
    w3, b3 = reconstruct(gram, w, None, [4, 0, 2])  # no bias: b' still fits the removed channels' mean
    assert w3.shape == (3, 4) and b3.shape == (4,) and np.abs(b3).max() > 0.1


def test_wanda_scores_match_the_formula(rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((50, 6)), rng.standard_normal((6, 3))
    norms = np.linalg.norm(x, axis=0)
    scores = wanda_scores(w, norms)
    for i in range(6):
        for j in range(3):
            assert scores[i, j] == pytest.approx(abs(w[i, j]) * norms[i])
    with pytest.raises(ValueError, match="input norms"):
        wanda_scores(w, norms[:5])


@pytest.mark.parametrize(("sparsity", "kept"), [(0.0, 10), (0.5, 5), (0.55, 5), (0.7, 3), (1.0, 0)])
def test_magnitude_mask_keeps_the_top_entries_of_each_column(rng: np.random.Generator, sparsity: float, kept: int) -> None:
    scores = rng.standard_normal((10, 7))
    mask = magnitude_mask(scores, sparsity)
    np.testing.assert_array_equal(mask.sum(axis=0), np.full(7, kept))
    for j in range(7):
        np.testing.assert_array_equal(np.sort(np.flatnonzero(mask[:, j])), np.sort(np.argsort(-scores[:, j])[:kept]))
    np.testing.assert_array_equal(magnitude_mask(np.ones((4, 1)), 0.5)[:, 0], [False, False, True, True])


def test_nm_mask_keeps_n_of_every_m(rng: np.random.Generator) -> None:
    scores = rng.standard_normal((16, 5))
    mask = nm_mask(scores, 2, 4)
    groups = mask.reshape(4, 4, 5)
    np.testing.assert_array_equal(groups.sum(axis=1), np.full((4, 5), 2))
    kept, dropped = np.where(mask, scores, np.inf).reshape(4, 4, 5), np.where(mask, -np.inf, scores).reshape(4, 4, 5)
    assert (kept.min(axis=1) >= dropped.max(axis=1)).all()
    np.testing.assert_array_equal(nm_mask(scores, 1, 8).reshape(2, 8, 5).sum(axis=1), np.ones((2, 5)))
    with pytest.raises(ValueError, match="multiple"):
        nm_mask(rng.standard_normal((10, 3)), 2, 4)
    with pytest.raises(ValueError, match="n ≤ m"):
        nm_mask(scores, 5, 4)


def test_masked_refit_lowers_the_error_of_masking(rng: np.random.Generator) -> None:
    x = correlated_inputs(rng, k=16, latent=6)
    w = rng.standard_normal((16, 8))
    gram = x.T @ x
    for mask in (magnitude_mask(wanda_scores(w, np.linalg.norm(x, axis=0)), 0.5), nm_mask(np.abs(w), 2, 4)):
        masked, refitted = np.where(mask, w, 0.0), masked_refit(gram, w, mask)
        assert (refitted[~mask] == 0).all()
        before = np.linalg.norm(x @ w - x @ masked) / np.linalg.norm(x @ w)
        after = np.linalg.norm(x @ w - x @ refitted) / np.linalg.norm(x @ w)
        assert after < 0.1 * before, (after, before)
        exact = masked_refit(gram, w, mask, ridge=0.0)
        for j in range(8):  # without ridge, each column is the least-squares optimum on its support
            s = mask[:, j]
            best = np.linalg.lstsq(x[:, s], x @ w[:, j], rcond=None)[0]
            np.testing.assert_allclose(x[:, s] @ exact[s, j], x[:, s] @ best, atol=1e-6 * np.abs(x @ w[:, j]).max())


def test_masked_refit_leaves_unpruned_columns_alone(rng: np.random.Generator) -> None:
    x, w = rng.standard_normal((100, 6)), rng.standard_normal((6, 4))
    mask = np.ones((6, 4), dtype=bool)
    mask[[1, 4], 2] = False
    refitted = masked_refit(x.T @ x, w, mask)
    np.testing.assert_array_equal(refitted[:, [0, 1, 3]], w[:, [0, 1, 3]])
    assert refitted[1, 2] == 0 and refitted[4, 2] == 0 and not np.allclose(refitted[:, 2], w[:, 2] * mask[:, 2])
    np.testing.assert_array_equal(masked_refit(x.T @ x, w, np.zeros((6, 4), dtype=bool)), np.zeros((6, 4)))


def test_block_energy_scores_are_the_rms_change_of_removing_each_block(rng: np.random.Generator) -> None:
    from graphopt_passes._math.pruning import block_energy_scores

    x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12)) + 2.0
    w = rng.standard_normal((12, 5))
    gram = accumulate(None, x)
    for centered in (False, True):
        xs = x - x.mean(axis=0) if centered else x
        expected = [np.sqrt(np.mean(np.sum((xs[:, 3 * k:3 * k + 3] @ w[3 * k:3 * k + 3]) ** 2, axis=1)))
                    for k in range(4)]
        np.testing.assert_allclose(block_energy_scores(gram, w, 3, centered=centered), expected, rtol=1e-9)
    assert (block_energy_scores(accumulate(None, np.full((50, 12), 3.0)), w, 3) < 1e-6).all(), "constants: mean only"
    with pytest.raises(ValueError, match="blocks of 5"):
        block_energy_scores(gram, w, 5)


def test_channel_nm_mask_groups_channels_at_each_kernel_position(rng: np.random.Generator) -> None:
    from graphopt_passes._math.pruning import channel_nm_mask

    scores = rng.standard_normal((8 * 9, 5))  # rows (channel, position) of 8 channels × 3×3 kernel
    mask = channel_nm_mask(scores, 2, 4, positions=9)
    by_position = mask.reshape(8, 9, 5)
    for p in range(9):
        per_channel = scores.reshape(8, 9, 5)[:, p]
        np.testing.assert_array_equal(by_position[:, p], nm_mask(per_channel, 2, 4))
    np.testing.assert_array_equal(channel_nm_mask(scores, 2, 4), nm_mask(scores, 2, 4))
    with pytest.raises(ValueError, match="multiple"):
        channel_nm_mask(rng.standard_normal((6 * 9, 2)), 2, 4, positions=9)
    with pytest.raises(ValueError, match="kernel positions"):
        channel_nm_mask(scores, 2, 4, positions=7)


def test_meets_sparsity_and_meets_nm_say_whether_the_masks_would_change_anything(rng: np.random.Generator) -> None:
    from graphopt_passes._math.pruning import channel_nm_mask, meets_nm, meets_sparsity

    w = rng.standard_normal((16, 6))
    assert not meets_sparsity(w, 0.5) and not meets_nm(w, 2, 4)
    pruned = np.where(magnitude_mask(np.abs(w), 0.5), w, 0.0)
    assert meets_sparsity(pruned, 0.5) and meets_sparsity(pruned, 0.4) and not meets_sparsity(pruned, 0.6)
    nm = np.where(channel_nm_mask(np.abs(w), 2, 4, positions=2), w, 0.0)
    assert meets_nm(nm, 2, 4, positions=2) and meets_nm(nm, 3, 4, positions=2)
    assert not meets_nm(nm, 1, 4, positions=2) and not meets_nm(nm, 2, 4, positions=4)  # groups by 8 → other rows
    assert not meets_nm(w[:10], 2, 4)


@pytest.mark.parametrize("ridge", [1e-4, 0.0])
def test_masked_refit_batched_equals_the_per_column_refit(rng: np.random.Generator, ridge: float) -> None:
    from graphopt_passes._math.pruning import masked_refit_batched

    x = correlated_inputs(rng, k=24, latent=8)
    w = rng.standard_normal((24, 10))
    gram = x.T @ x
    for sparsity in (0.5, 0.25):  # the kept set solved directly, and through the smaller pruned set
        mask = magnitude_mask(rng.random((24, 10)), sparsity)
        mask[:, 1] = True  # unpruned
        mask[:, 2] = False  # everything pruned
        mask[3:9, 4] = False  # a different kept count
        mask[:, 5] = True
        mask[7, 5] = False  # a single pruned weight
        expected = masked_refit(gram, w, mask, ridge)
        for budget in (1, 300, 1 << 24):  # one column per batch, a few, all
            got = masked_refit_batched(gram, w, mask, ridge, budget)
            np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
            assert (got[~mask] == 0).all()


def test_output_errors_match_the_outputs(rng: np.random.Generator) -> None:
    from graphopt_passes._math.pruning import relative_output_error, squared_output_error

    x, w = rng.standard_normal((200, 12)), rng.standard_normal((12, 5))
    new = np.where(rng.random((12, 5)) < 0.5, w, 0.0)
    error, total = squared_output_error(x.T @ x, w, new)
    assert error == pytest.approx(np.sum((x @ new - x @ w) ** 2), rel=1e-10)
    assert total == pytest.approx(np.sum((x @ w) ** 2), rel=1e-10)
    assert relative_output_error(x.T @ x, w, new) == pytest.approx(np.sqrt(error / total), rel=1e-12)
    assert relative_output_error(np.zeros((12, 12)), w, new) == 0.0
