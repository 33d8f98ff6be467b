"""Low-rank factorisation of a layer's weight, plain or weighted by the layer's real inputs.

A layer ``y = x·W`` with W (K×N) becomes ``y = (x·A)·B`` with A (K×r) and B (r×N): r(K+N) weights instead of K·N.
Plain SVD keeps the r directions of largest weight energy, but what matters is the layer's output on real inputs,
``‖X·W − X·A·B‖``. With ``SᵀS = XᵀX + λI`` that error is ``‖S·(W − A·B)‖``, so the best factors come from the SVD of
``S·W = U·Σ·Vᵀ`` (ASVD, SVD-LLM): ``A = S⁻¹·U_r·Σ_r``, ``B = V_rᵀ``. S comes from an eigen-decomposition of the Gram
matrix rather than a Cholesky factor, so S⁻¹ stays finite when inputs are correlated or fewer than K; the ridge λ,
relative to the mean input energy, also stops directions the calibration data never visits from being dropped
blindly. The Gram matrix is accumulated batch by batch, so activations are never kept. Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GRAM_BUDGET",
    "Choice",
    "Factors",
    "Gram",
    "LayerFit",
    "NoRank",
    "accumulate_gram",
    "budget_groups",
    "choose",
    "factorize",
    "fit_layer",
    "gram_budget",
    "rank_errors",
    "rank_for_energy",
    "rank_for_ratio",
    "refit",
    "regularized",
    "relative_error",
    "smallest_rank",
    "truncated_svd",
    "whitening",
]

Array = NDArray[np.float64]


class NoRank(ValueError):
    """No rank of the layer meets the options (``choose``); the message says why."""


@dataclass(frozen=True)
class Gram:
    """``XᵀX`` (K×K, float64) of every row seen so far, and how many rows that was."""

    matrix: Array
    count: int


def accumulate_gram(state: Gram | None, batch: ArrayLike, axis: int = -1) -> Gram:
    """Add a batch of activations to ``state``: ``axis`` holds the K features, every other axis is a row index."""
    x = np.moveaxis(np.asarray(batch), axis, -1)
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64, copy=False)
    update = rows.T @ rows
    if state is None:
        return Gram(update, rows.shape[0])
    if state.matrix.shape != update.shape:
        raise ValueError(f"batch has {update.shape[0]} features, the Gram matrix {state.matrix.shape[0]}")
    return Gram(state.matrix + update, state.count + rows.shape[0])


GRAM_BUDGET, GRAM_FLOOR = 2**30, 2**26
"""Bytes of float64 Gram matrices a pass holds at once (``gram_budget``): GPT-2 large's 144 layer inputs would take
9 GB, nearly three times its weights; a square layer's Gram alone takes twice its float32 weight."""


def gram_budget(weight_bytes: int) -> int:
    """The Gram bytes a pass may hold at once while it rewrites ``weight_bytes`` of weights: half of them, at least
    64 MiB (small models stay in one group) and at most ``GRAM_BUDGET``."""
    return min(GRAM_BUDGET, max(GRAM_FLOOR, weight_bytes // 2))

T = TypeVar("T")


def budget_groups(items: Sequence[T], needs: Callable[[T], Mapping[Hashable, int]], budget: int) -> list[list[T]]:
    """``items`` in order, cut into consecutive groups whose needs (bytes by key; a key shared within a group
    counts once) sum to at most ``budget``, so that a pass can gather each group's statistics in one calibration
    run and drop them before the next; an item that needs more on its own is a group alone. One group when all
    fit."""
    groups: list[list[T]] = []
    held: dict[Hashable, int] = {}
    for item in items:
        need = needs(item)
        extra = sum(size for key, size in need.items() if key not in held)
        if not groups or (extra and sum(held.values()) + extra > budget and groups[-1]):
            groups.append([])
            held = {}
        groups[-1].append(item)
        held.update(need)
    return groups


def regularized(gram: ArrayLike, ridge: float) -> Array:
    """``G + λI`` with ``λ = ridge · mean(diag G)``: the ridge is relative, so it does not depend on the data's scale."""
    g = np.asarray(gram, np.float64)
    g = (g + g.T) / 2
    scale = float(np.trace(g)) / len(g) if len(g) else 0.0
    return g + ridge * (scale if scale > 0 else 1.0) * np.eye(len(g))


def whitening(gram: ArrayLike, ridge: float = 1e-4) -> tuple[Array, Array]:
    """``(S, S⁻¹)`` with ``SᵀS = G + λI`` (see ``regularized``), from an eigen-decomposition that stays finite."""
    values, vectors = np.linalg.eigh(regularized(gram, ridge))
    floor = np.finfo(np.float64).eps * max(float(values.max(initial=0.0)), 1e-300)
    root = np.sqrt(np.maximum(values, floor))
    return root[:, None] * vectors.T, vectors / root


def truncated_svd(matrix: ArrayLike, rank: int) -> tuple[Array, Array, Array]:
    """``(U_r, σ_r, V_rᵀ)``: by Eckart-Young, ``U_r·diag(σ_r)·V_rᵀ`` is the best rank-r approximation."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    return u[:, :rank], s[:rank], vt[:rank]


@dataclass(frozen=True)
class Factors:
    """``W = left·right`` exactly; the first r columns and rows give the rank-r factors A and B.

    ``spectrum`` holds the singular values being truncated: of W for plain SVD, of S·W when data-aware.
    """

    left: Array
    right: Array
    spectrum: Array

    def take(self, rank: int) -> tuple[Array, Array]:
        return self.left[:, :rank], self.right[:rank]


def factorize(weight: ArrayLike, gram: ArrayLike | None = None, ridge: float = 1e-4) -> Factors:
    """Plain SVD of W when ``gram`` is ``None``; else the SVD of ``S·W`` mapped back, ``A = S⁻¹·U·Σ``, ``B = Vᵀ``."""
    w = np.asarray(weight, np.float64)
    if gram is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return Factors(u * s, vt, s)
    root, inverse = whitening(gram, ridge)
    u, s, vt = np.linalg.svd(root @ w, full_matrices=False)
    return Factors(inverse @ (u * s), vt, s)


def refit(weight: ArrayLike, left: ArrayLike, gram: ArrayLike, ridge: float = 1e-4) -> Array:
    """B minimising ``‖S·(W − A·B)‖`` for a fixed A: ``(Aᵀ·M·A)⁻¹·Aᵀ·M·W`` with ``M = G + λI``.

    The calibration outputs are ``X·W``, so ``XᵀY = G·W`` and the Gram matrix is all the refit needs. Data-aware
    factors are already this optimum; the refit helps plain SVD, whose B ignores the inputs.
    """
    a = np.asarray(left, np.float64)
    metric = regularized(gram, ridge) if ridge > 0 else np.asarray(gram, np.float64)
    ma = metric @ a
    lhs, rhs = a.T @ ma, ma.T @ np.asarray(weight, np.float64)
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]


def relative_error(weight: ArrayLike, left: ArrayLike, right: ArrayLike, gram: ArrayLike) -> float:
    """``‖X·W − X·A·B‖ / ‖X·W‖`` from ``G = XᵀX`` alone (a bias cancels in the difference)."""
    w, g = np.asarray(weight, np.float64), np.asarray(gram, np.float64)
    d = w - np.asarray(left, np.float64) @ np.asarray(right, np.float64)
    error, total = float(np.einsum("ij,ij->", d, g @ d)), float(np.einsum("ij,ij->", w, g @ w))
    if total <= 0:
        return 0.0 if error <= 0 else math.inf
    return math.sqrt(max(error, 0.0) / total)


def rank_errors(factors: Factors, gram: ArrayLike) -> Array:
    """``relative_error`` of ``factors.take(r)`` for every rank r = 0…m at once.

    The rows of ``right`` are orthonormal, so the error of dropping components r… is the sum of ``pᵢᵀ·G·pᵢ`` over
    the dropped columns ``pᵢ`` of ``left``: a tail sum.
    """
    p, g = factors.left, np.asarray(gram, np.float64)
    parts = np.maximum(np.einsum("ij,ij->j", p, g @ p), 0.0)
    tails = np.append(np.cumsum(parts[::-1])[::-1], 0.0)
    return np.sqrt(tails / tails[0]) if tails[0] > 0 else np.zeros_like(tails)


def rank_for_energy(spectrum: ArrayLike, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of ``Σσ²``; at least 1 (0 for an empty spectrum)."""
    squares = np.asarray(spectrum, np.float64) ** 2
    if squares.size == 0:
        return 0
    cumulative = np.cumsum(squares)
    if cumulative[-1] <= 0:
        return 1
    target = min(max(energy, 0.0), 1.0) * cumulative[-1] * (1 - 1e-12)
    return int(min(np.searchsorted(cumulative, target, side="left") + 1, squares.size))


def rank_for_ratio(k: int, n: int, ratio: float) -> int:
    """The largest rank r whose factors hold at most ``ratio`` of the K·N weights, ``r·(K+N) ≤ ratio·K·N``; may be 0."""
    if k <= 0 or n <= 0 or ratio <= 0:
        return 0
    return int(min(math.floor(ratio * k * n / (k + n) + 1e-9), k, n))


def smallest_rank(error_at: Callable[[int], float], low: int, high: int, bound: float) -> int | None:
    """The smallest r in ``[low, high]`` with ``error_at(r) ≤ bound`` by bisection (errors fall as r grows);
    ``None`` when even ``high`` misses. The answer always meets the bound, even where the error is not monotone."""
    if high < low or error_at(high) > bound:
        return None
    while low < high:
        middle = (low + high) // 2
        if error_at(middle) <= bound:
            high = middle
        else:
            low = middle + 1
    return high


@dataclass(frozen=True)
class Choice:
    """The chosen rank and factors A (K×r), B (r×N), with the output error of plain SVD, of the data-aware
    factors and of the factors chosen (after any refit), all at that rank; ``how`` names the rule that set it."""

    rank: int
    left: Array
    right: Array
    error: float
    svd_error: float
    aware_error: float
    how: str


@dataclass(frozen=True)
class LayerFit:
    """Both factorisations of one layer and their output error at every rank, computed once for many rank choices."""

    weight: Array
    gram: Array
    plain: Factors
    aware: Factors
    errors: dict[str, Array]
    ridge: float


def fit_layer(weight: ArrayLike, gram: ArrayLike, ridge: float = 1e-4) -> LayerFit:
    w, g = np.asarray(weight, np.float64), np.asarray(gram, np.float64)
    plain, aware = factorize(w), factorize(w, g, ridge)
    return LayerFit(w, g, plain, aware, {"svd": rank_errors(plain, g), "data-aware": rank_errors(aware, g)}, ridge)


def choose(
    weight: ArrayLike | LayerFit,
    gram: ArrayLike | None = None,
    *,
    method: str = "data-aware",
    energy: float = 0.99,
    ratio: float | None = None,
    max_error: float | None = None,
    refit_svd: bool = True,
    min_saving: float = 0.1,
    ridge: float = 1e-4,
) -> Choice:
    """Pick the rank (``ratio`` if set, else the smallest meeting ``max_error``, else ``energy``) and the factors;
    ``NoRank`` says why no rank that removes ``min_saving`` of the weights will do. ``refit_svd`` refits B of plain SVD.
    ``weight`` may be a ``LayerFit`` (then ``gram`` and ``ridge`` come from it) to choose several ranks cheaply."""
    layer = weight if isinstance(weight, LayerFit) else fit_layer(weight, np.asarray(gram), ridge)
    w, g, ridge = layer.weight, layer.gram, layer.ridge
    k, n = w.shape
    factors = layer.aware if method == "data-aware" else layer.plain
    errors = layer.errors
    refitting = refit_svd and method == "svd"
    budget = rank_for_ratio(k, n, 1 - min_saving)

    def fitted(rank: int) -> tuple[Array, Array]:
        a, b = factors.take(rank)
        return a, refit(w, a, g, ridge) if refitting else b

    def error_at(rank: int) -> float:
        return relative_error(w, *fitted(rank), g) if refitting else float(errors[method][rank])

    if ratio is not None:
        rank, how = max(rank_for_ratio(k, n, ratio), 1), f"ratio {ratio:g}"
    elif max_error is not None:
        found, how = smallest_rank(error_at, 1, budget, max_error), f"max_error {max_error:g}"
        if found is None:
            raise NoRank(f"even rank {budget}, the largest that saves {min_saving:.0%} of the params, has output error "
                    f"{error_at(budget):.3g} > max_error {max_error:g}")
        rank = found
    else:
        rank, how = rank_for_energy(factors.spectrum, energy), f"energy {energy:g}"
    if rank > budget:
        raise NoRank(f"rank {rank} of {min(k, n)} ({how}) would not save params: at most rank {budget} removes "
                f"{min_saving:.0%} of {k}×{n}")
    a, b = fitted(rank)
    return Choice(rank, a, b, relative_error(w, a, b, g), float(errors["svd"][rank]),
                  float(errors["data-aware"][rank]), how)
