"""Clustering maths against brute force: the DP is the optimal 1-D k-means, Lloyd never increases the error, and
``cluster`` reproduces values drawn from k centroids exactly, with error falling as k grows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphopt_passes._math.clustering import (
    cluster,
    compensated,
    compensated_assign,
    dp_partition,
    kmeans_1d_exact,
    lloyd,
    nearest,
    output_error,
)


def brute_force(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """Least weighted squared error over every split of sorted ``x`` into k contiguous runs."""
    order = np.argsort(x)
    x, w = x[order], w[order]
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        bounds = [0, *cuts, len(x)]
        error = 0.0
        for a, b in itertools.pairwise(bounds):
            mean = np.sum(w[a:b] * x[a:b]) / np.sum(w[a:b])
            error += float(np.sum(w[a:b] * (x[a:b] - mean) ** 2))
        best = min(best, error)
    return best


def test_exact_kmeans_matches_brute_force(rng: np.random.Generator) -> None:
    for _ in range(40):
        n = int(rng.integers(2, 10))
        k = int(rng.integers(1, n + 1))
        x, w = rng.standard_normal(n), rng.uniform(0.1, 3.0, n)
        centroids, error = kmeans_1d_exact(x, k, w)
        assert error == pytest.approx(brute_force(x, w, k), rel=1e-9, abs=1e-12)
        assert len(centroids) == k and np.all(np.diff(centroids) > 0)


def test_dp_partition_runs_are_contiguous_and_cover_every_group() -> None:
    x = np.array([0.0, 0.1, 5.0, 5.1, 10.0, 10.2])
    cuts, error = dp_partition(np.ones(6), x, x * x, 3)
    assert cuts.tolist() == [0, 2, 4, 6]
    assert error == pytest.approx(0.005 + 0.005 + 0.02)


def test_lloyd_never_increases_the_error(rng: np.random.Generator) -> None:
    for weighted in (False, True):
        x = np.sort(rng.standard_t(3, 5000))
        w = rng.uniform(0.0, 2.0, 5000) if weighted else None
        start = np.sort(rng.choice(x, 8, replace=False))
        refined, errors = lloyd(x, start, w, steps=20)
        assert len(errors) >= 2 and errors[-1] < errors[0]
        assert all(b <= a for a, b in itertools.pairwise(errors)), errors
        assert np.all(np.diff(refined) >= 0)


def test_values_drawn_from_k_centroids_are_reproduced_exactly(rng: np.random.Generator) -> None:
    centroids = rng.standard_normal(11).astype(np.float32)
    values = centroids[rng.integers(0, 11, (64, 100))]
    result = cluster(values, 16)
    assert result.indices.shape == values.shape and result.indices.dtype == np.uint8
    np.testing.assert_array_equal(result.codebook[result.indices], values)
    assert result.relative_error == 0.0


def test_error_falls_with_k_and_is_near_the_gaussian_optimum(rng: np.random.Generator) -> None:
    values = rng.standard_normal((256, 512)).astype(np.float32)
    errors = [cluster(values, k).relative_error for k in (2, 4, 8, 16, 32)]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    # Lloyd–Max quantizer of a Gaussian: relative RMS error 0.0975 at 16 levels; the grouped DP + Lloyd gets there.
    assert errors[3] == pytest.approx(0.0975, abs=0.002)


def test_grouped_dp_is_within_a_hair_of_the_exact_optimum(rng: np.random.Generator) -> None:
    values = rng.standard_t(4, 1200)
    _, exact = kmeans_1d_exact(values, 8)
    norm = float(np.sum(values**2))
    got = cluster(values, 8, groups=64).relative_error ** 2 * norm
    assert exact <= got * (1 + 1e-9) and got <= exact * 1.01


def test_weights_move_precision_to_the_values_that_matter(rng: np.random.Generator) -> None:
    values = rng.standard_normal((200, 50))
    values[:, :5] = rng.uniform(2.0, 3.0, (200, 5))  # a narrow band that plain k-means gives one centroid
    importance = np.ones_like(values)
    importance[:, :5] = 100.0
    errors = []
    for result in (cluster(values, 4, importance), cluster(values, 4)):
        errors.append(float(np.sum(importance * (values - result.codebook[result.indices]) ** 2)))
    assert errors[0] < 0.5 * errors[1], errors


def test_rejects_codebooks_beyond_a_byte() -> None:
    with pytest.raises(ValueError, match="k must be"):
        cluster(np.zeros(10), 300)


def correlated_layer(rng: np.random.Generator, k: int = 96, n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs X with strongly correlated channels (as a transformer's), a weight W (K×N) and H = XᵀX/n."""
    mix = np.eye(k) + 2.0 * rng.standard_normal((k, k)) / np.sqrt(k)
    x = rng.standard_normal((2000, k)) @ mix
    return x, rng.standard_normal((k, n)), x.T @ x / len(x)


def test_compensation_lowers_the_output_error_on_correlated_inputs(rng: np.random.Generator) -> None:
    x, w, h = correlated_layer(rng)
    codebook = cluster(w, 8).codebook.astype(np.float64)
    plain, gptq = codebook[nearest(w, codebook)], codebook[compensated_assign(w, codebook, h, block=16)]
    errors = [float(np.linalg.norm(x @ (w - q))) for q in (plain, gptq)]
    assert errors[1] < 0.8 * errors[0], errors
    assert output_error(w, gptq, h) == pytest.approx(errors[1] / np.linalg.norm(x @ w), rel=1e-9)
    # block size changes only the order of floating-point sums, never the method
    for block in (1, 7, 1000):
        np.testing.assert_array_equal(compensated_assign(w, codebook, h, block=block),
                                      compensated_assign(w, codebook, h, block=16))


def test_compensation_is_exact_on_codebook_weights_and_keeps_the_layout(rng: np.random.Generator) -> None:
    _, w, h = correlated_layer(rng, 40, 24)
    codebook = np.sort(rng.standard_normal(6))
    on_book = codebook[rng.integers(0, 6, w.shape)]
    indices = compensated_assign(on_book, codebook, h)
    assert indices.dtype == np.uint8 and indices.shape == on_book.shape
    np.testing.assert_array_equal(codebook[indices], on_book)
    base = cluster(w.T, 16)  # a Gemm weight stored N×K (transB): the input channels on axis 1
    result = compensated(base, w.T, h, axis=1)
    assert result.indices.shape == w.T.shape and result.codebook is base.codebook
    assert result.relative_error == pytest.approx(output_error(w, base.codebook[result.indices.T], h))
    assert result.relative_error < output_error(w, base.codebook[base.indices.T], h)


def test_compensation_tolerates_dead_channels_and_rejects_bad_shapes(rng: np.random.Generator) -> None:
    x, w, _ = correlated_layer(rng, 32, 8)
    x[:, :4] = 0.0  # channels that never fire: a singular Gram matrix
    h = x.T @ x / len(x)
    codebook = np.linspace(-2, 2, 8)
    indices = compensated_assign(w, codebook, h, damp=0.0)
    assert np.all(np.isfinite(codebook[indices])) and indices.max() < 8
    with pytest.raises(ValueError, match="K×N"):
        compensated_assign(w, codebook, h[:-1, :-1])
    with pytest.raises(ValueError, match="sorted codebook"):
        compensated_assign(w, codebook[::-1], h)
    with pytest.raises(ValueError, match="finite"):
        compensated_assign(w, codebook, np.full_like(h, np.nan))
    with pytest.raises(ValueError, match="2-D"):
        compensated(cluster(w, 4), w[None], h)


def test_streaming_a_large_weight_in_chunks_changes_nothing(rng: np.random.Generator,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``cluster`` and ``compensated`` stream a big weight ``_CHUNK`` values at a time, with prefix sums kept per
    ``_BLOCK``; tiny chunks and blocks (many of each, runs crossing them) give the same codebook and indices."""
    from graphopt_passes._math import clustering

    _, w, h = correlated_layer(rng, 48, 40)
    w = w.astype(np.float32)
    importance = np.broadcast_to(rng.uniform(0.5, 2.0, (48, 1)), w.shape)
    whole = [cluster(w, 8), cluster(w, 8, importance), cluster(w, 8, importance, groups=4096)]
    whole.append(compensated(whole[1], w, h, block=5))
    monkeypatch.setattr(clustering, "_CHUNK", 64)
    monkeypatch.setattr(clustering, "_BLOCK", 16)
    streamed = [cluster(w, 8), cluster(w, 8, importance), cluster(w, 8, importance, groups=4096)]
    streamed.append(compensated(streamed[1], w, h, block=5))
    for a, b in zip(whole, streamed, strict=True):
        np.testing.assert_allclose(a.codebook, b.codebook, rtol=1e-6)
        np.testing.assert_array_equal(a.indices, b.indices)
        assert a.relative_error == pytest.approx(b.relative_error, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_searching_narrow_floats_with_wide_queries_is_exact(rng: np.random.Generator, dtype: type) -> None:
    """Cut positions in a float32 (or float16) weight without widening it: the same as searching its float64 copy,
    also for queries that fall between two neighbouring narrow floats, on them, and out of range."""
    from graphopt_passes._math.clustering import _search

    x = np.sort(rng.standard_normal(3000).astype(dtype))
    x[100:110] = x[100]  # runs of equal values
    between = (x[:-1].astype(np.float64) + np.nextafter(x[:-1], dtype(np.inf)).astype(np.float64)) / 2
    queries = np.concatenate([between, x.astype(np.float64), [-1e300, 1e300, 0.0]])
    for side in ("left", "right"):
        np.testing.assert_array_equal(_search(x, queries, side), np.searchsorted(x.astype(np.float64), queries, side))
