"""Low-rank maths against numpy references: SVD truncation, whitening, data-aware factors, refit, rank choice."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt_passes._math.low_rank import (
    GRAM_BUDGET,
    GRAM_FLOOR,
    accumulate_gram,
    budget_groups,
    factorize,
    gram_budget,
    rank_errors,
    rank_for_energy,
    rank_for_ratio,
    refit,
    relative_error,
    smallest_rank,
    truncated_svd,
    whitening,
)


def correlated_inputs(rng: np.random.Generator, rows: int = 2000, k: int = 64, latent: int = 8) -> np.ndarray:
    """Strongly correlated, anisotropic inputs: a few latent factors of very different scale, plus small noise."""
    scales = np.geomspace(10.0, 0.5, latent)
    return (rng.standard_normal((rows, latent)) * scales) @ rng.standard_normal((latent, k)) + 0.01 * rng.standard_normal((rows, k))


def output_error(x: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w - x @ a @ b) / np.linalg.norm(x @ w))


def test_truncated_svd_is_numpys_best_rank_r_approximation(rng: np.random.Generator) -> None:
    m = rng.standard_normal((30, 20))
    u, s, vt = np.linalg.svd(m)
    for rank in (1, 5, 20):
        ur, sr, vtr = truncated_svd(m, rank)
        approx = (ur * sr) @ vtr
        np.testing.assert_allclose(approx, u[:, :rank] @ np.diag(s[:rank]) @ vt[:rank], atol=1e-10)
        assert np.linalg.norm(m - approx) ** 2 == pytest.approx(np.sum(s[rank:] ** 2), abs=1e-9)
        a, b = factorize(m).take(rank)
        np.testing.assert_allclose(a @ b, approx, atol=1e-10)
        q = np.linalg.qr(rng.standard_normal((30, rank)))[0]  # any other rank-r approximation is worse
        assert np.linalg.norm(m - q @ q.T @ m) >= np.linalg.norm(m - approx) - 1e-12


def test_streamed_gram_equals_gram_of_the_concatenation(rng: np.random.Generator) -> None:
    batches = [rng.standard_normal((n, 5, 3, 2)).astype(np.float32) for n in (4, 1, 7)]  # channels on axis 1
    state = None
    for batch in batches:
        state = accumulate_gram(state, batch, axis=1)
    rows = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, 5) for b in batches]).astype(np.float64)
    assert state is not None and state.count == 12 * 6
    np.testing.assert_allclose(state.matrix, rows.T @ rows, rtol=1e-12)
    with pytest.raises(ValueError, match="features"):
        accumulate_gram(state, rng.standard_normal((2, 4)))


def test_whitening_factor_is_finite_on_a_singular_gram(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 6))  # fewer rows than features: XᵀX has rank 3
    gram = x.T @ x
    root, inverse = whitening(gram, ridge=1e-3)
    np.testing.assert_allclose(root.T @ root, gram + 1e-3 * np.trace(gram) / 6 * np.eye(6), atol=1e-10)
    np.testing.assert_allclose(root @ inverse, np.eye(6), atol=1e-8)
    assert np.isfinite(whitening(np.zeros((4, 4)), ridge=0.0)[1]).all()


def test_data_aware_factors_beat_plain_svd_on_correlated_inputs(rng: np.random.Generator) -> None:
    x = correlated_inputs(rng)
    w = rng.standard_normal((64, 48))
    gram = x.T @ x
    plain, aware = factorize(w), factorize(w, gram, ridge=1e-8)
    np.testing.assert_allclose(aware.left @ aware.right, w, atol=1e-6)
    for rank in (2, 4, 6):
        e_plain, e_aware = output_error(x, w, *plain.take(rank)), output_error(x, w, *aware.take(rank))
        assert e_aware < 0.5 * e_plain, (rank, e_aware, e_plain)
        assert relative_error(w, *aware.take(rank), gram) == pytest.approx(e_aware, rel=1e-6)
        a = plain.take(rank)[0]  # the data-aware factors are the optimum: no refit of plain SVD beats them
        assert e_aware <= output_error(x, w, a, refit(w, a, gram, ridge=0.0)) + 1e-9
    # rank 8 covers the 8 latent directions: the output error drops to the noise floor
    assert output_error(x, w, *aware.take(8)) < 0.01 < output_error(x, w, *plain.take(8))


def test_refit_never_increases_the_error(rng: np.random.Generator) -> None:
    x = correlated_inputs(rng, k=32)
    w = rng.standard_normal((32, 24))
    gram = x.T @ x
    for rank in (1, 3, 8):
        a, b = factorize(w).take(rank)
        before, after = relative_error(w, a, b, gram), relative_error(w, a, refit(w, a, gram, ridge=0.0), gram)
        assert after <= before + 1e-12
        assert rank == 1 or after < 0.6 * before  # on anisotropic inputs it helps a lot (0.86 → 0.50 at rank 3)
    a, b = factorize(w, gram, ridge=1e-4).take(4)
    np.testing.assert_allclose(refit(w, a, gram, ridge=1e-4), b, atol=1e-6)  # data-aware B is already the optimum


def test_rank_errors_match_the_error_at_each_rank(rng: np.random.Generator) -> None:
    x = correlated_inputs(rng, rows=500, k=20, latent=5)
    w = rng.standard_normal((20, 12))
    gram = x.T @ x
    for factors in (factorize(w), factorize(w, gram)):
        errors = rank_errors(factors, gram)
        assert errors.shape == (13,) and errors[0] == pytest.approx(1.0) and errors[-1] == pytest.approx(0.0, abs=1e-6)
        for rank in (1, 4, 9):
            assert errors[rank] == pytest.approx(relative_error(w, *factors.take(rank), gram), rel=1e-6, abs=1e-9)
    np.testing.assert_array_equal(rank_errors(factorize(np.zeros((3, 2))), np.eye(3)), np.zeros(3))


@pytest.mark.parametrize(
    ("spectrum", "energy", "rank"),
    [
        ([4.0, 3.0], 0.64, 1),
        ([4.0, 3.0], 0.65, 2),
        ([4.0, 3.0, 0.0, 0.0], 1.0, 2),  # energy 1 stops at the numerical rank
        ([4.0, 3.0], 0.0, 1),
        ([0.0, 0.0], 0.9, 1),
        ([], 0.9, 0),
        ([1.0] * 10, 0.99, 10),
        ([1.0] * 10, 0.5, 5),
    ],
)
def test_rank_for_energy(spectrum: list[float], energy: float, rank: int) -> None:
    assert rank_for_energy(spectrum, energy) == rank


@pytest.mark.parametrize(
    ("k", "n", "ratio", "rank"),
    [(384, 384, 0.5, 96), (384, 384, 1.0, 192), (384, 384, 0.0, 0), (1000, 1, 0.9, 0), (8, 4, 100.0, 4), (64, 32, 0.9, 19)],
)
def test_rank_for_ratio(k: int, n: int, ratio: float, rank: int) -> None:
    assert rank_for_ratio(k, n, ratio) == rank
    assert rank * (k + n) <= max(ratio, 0) * k * n or rank == min(k, n)


def test_smallest_rank_bisects_and_always_meets_the_bound() -> None:
    errors = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
    calls: list[int] = []

    def error_at(rank: int) -> float:
        calls.append(rank)
        return errors[rank]

    assert smallest_rank(error_at, 1, 5, 0.2) == 3
    assert len(calls) <= 4
    assert smallest_rank(error_at, 1, 5, 0.01) is None
    assert smallest_rank(error_at, 1, 5, 1.0) == 1
    assert smallest_rank(error_at, 3, 2, 1.0) is None


def test_budget_groups_cut_in_order_and_count_a_shared_key_once() -> None:
    needs = {"q": {"x": 4}, "k": {"x": 4}, "v": {"x": 4}, "o": {"c": 4}, "up": {"y": 6}, "down": {"z": 9}, "e": {}}
    items = list(needs)
    assert budget_groups(items, needs.__getitem__, 100) == [items]
    assert budget_groups(items, needs.__getitem__, 8) == [["q", "k", "v", "o"], ["up"], ["down", "e"]]
    assert budget_groups(items, needs.__getitem__, 1) == [["q", "k", "v"], ["o"], ["up"], ["down", "e"]]
    assert budget_groups([], needs.__getitem__, 1) == []


def test_gram_budget_is_half_the_weights_within_its_floor_and_cap() -> None:
    assert gram_budget(10**6) == GRAM_FLOOR == 64 * 2**20
    assert gram_budget(400 * 2**20) == 200 * 2**20
    assert gram_budget(3 * 2**30) == GRAM_BUDGET == 2**30
