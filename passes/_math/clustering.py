"""Weight clustering maths: optimal 1-D k-means by dynamic programming, Lloyd refinement, codebook assignment.

1-D k-means has an exact solution: on sorted values every optimal cluster is a contiguous run, so the best split
into k runs is a dynamic programme over cut positions (Wang & Song, Ckmeans.1d.dp). Over all n values it costs
O(k·n²), far too much for a 589,824-value weight, so the programme runs over *groups* of consecutive sorted values
(equal-count quantile groups plus equal-width groups, so sparse tails keep fine cuts); a cluster's squared error is
computed from the groups' exact sums of w, w·x and w·x², so the result is the optimum among cuts on group
boundaries. Lloyd steps on the raw sorted values then move the cuts anywhere, never increasing the error. Weights
``w`` (counts, or a data-aware importance such as the mean square of the input a weight multiplies) make the error
the one that matters for the layer's output.

``compensated_assign`` goes further for a layer ``y = x·W`` whose input Gram ``H = XᵀX/n`` is known: GPTQ's
error feedback (Frantar et al., 2022) rounds W's rows (input channels) one at a time to the nearest codebook value
and moves each row's rounding error onto the rows not yet rounded, through the Cholesky factor of ``H⁻¹``, so the
later rows absorb what correlated inputs let them absorb of the *output* error ‖X(W − Ŵ)‖.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from graphopt_passes._math.block_quant import output_error_terms, relative

__all__ = ["Clustering", "cluster", "compensated", "compensated_assign", "dp_partition", "kmeans_1d_exact", "lloyd", "nearest",
           "output_error"]

_CHUNK = 1 << 22  # values streamed at a time through a large weight
_BLOCK = 1 << 14  # values per block of the prefix sums' totals: a cut recomputes one block's partial sums


@dataclass(frozen=True)
class Clustering:
    """``codebook[indices]`` rebuilds the values; ``relative_error`` is ‖x − x̂‖_w / ‖x‖_w."""

    codebook: np.ndarray
    indices: np.ndarray
    relative_error: float


def dp_partition(w: np.ndarray, s1: np.ndarray, s2: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The split of ``n`` sorted groups (sums ``w``, ``s1`` = Σw·x, ``s2`` = Σw·x², all > 0 weight) into at most
    ``k`` contiguous non-empty runs with the least total squared error; the cut positions ``[0, …, n]`` and the error.
    """
    n = len(w)
    k = max(1, min(k, n))
    big_w, big_s1, big_s2 = (np.concatenate([[0.0], np.cumsum(a, dtype=np.float64)]) for a in (w, s1, s2))
    with np.errstate(divide="ignore", invalid="ignore"):
        dw = big_w[None, :] - big_w[:, None]
        cost = (big_s2[None, :] - big_s2[:, None]) - (big_s1[None, :] - big_s1[:, None]) ** 2 / dw
    del dw
    np.maximum(cost, 0.0, out=cost)
    cost[np.tril_indices(n + 1)] = np.inf
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choices = np.zeros((k, n + 1), dtype=np.int64)
    for m in range(k):
        total = best[:, None] + cost
        choices[m] = np.argmin(total, axis=0)
        best = total[choices[m], np.arange(n + 1)]
        best[0] = np.inf
    cuts, j = [n], n
    for m in range(k - 1, -1, -1):
        j = int(choices[m, j])
        cuts.append(j)
    return np.array(sorted(set(cuts)), dtype=np.int64), float(best[n])


def kmeans_1d_exact(points: np.ndarray, k: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Exact optimal 1-D k-means of ``points`` (any order): sorted centroids and the weighted squared error."""
    order = np.argsort(points, kind="stable")
    x = np.asarray(points, dtype=np.float64)[order]
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    cuts, error = dp_partition(w, w * x, w * x * x, k)
    return _Prefix(x, w).means(cuts), error


def lloyd(values: np.ndarray, centroids: np.ndarray, weights: np.ndarray | None = None, steps: int = 4
          ) -> tuple[np.ndarray, list[float]]:
    """Lloyd steps on sorted ``values`` from sorted ``centroids``: the refined centroids and the error after each
    assignment (the first entry is the starting error; the sequence never increases)."""
    return _lloyd(_Prefix(_sortable(values), weights), np.asarray(centroids, dtype=np.float64), steps)


def _lloyd(prefix: _Prefix, c: np.ndarray, steps: int) -> tuple[np.ndarray, list[float]]:
    errors = [prefix.error(c)]
    for _ in range(steps):
        moved = prefix.means(_cuts(prefix.x, c), fallback=c)
        error = prefix.error(moved)
        if error > errors[-1]:  # rounding only; the exact maths cannot increase it
            break
        c = moved
        errors.append(error)
        if errors[-2] - error <= 1e-12 * max(errors[-2], 1e-300):
            break
    return c, errors


def cluster(values: np.ndarray, k: int, weights: np.ndarray | None = None, groups: int = 1024, steps: int = 8
            ) -> Clustering:
    """Cluster ``values`` into at most ``k`` (≤ 256) shared values: DP on groups of sorted values, then Lloyd.

    ``weights`` (broadcastable to ``values``, ≥ 0) weigh each value's squared error. Values that are already drawn
    from at most ``k`` distinct numbers, and no more than ``groups`` of them, are reproduced exactly. Besides the
    indices, memory is one sorted copy of the values (and of their weights, as float64): everything else is streamed
    ``_CHUNK`` values at a time, so a 64M-value embedding does not take gigabytes of temporaries.
    """
    if not 1 <= k <= 256:
        raise ValueError(f"k must be in [1, 256], not {k}")
    values = np.asarray(values)
    flat = _sortable(values.reshape(-1))
    scale = None if weights is None else np.broadcast_to(weights, values.shape)
    if scale is None:
        x, w = np.sort(flat), None
    else:
        order = np.argsort(flat, kind="stable")
        x, w = flat[order], np.empty(flat.size)
        for start in range(0, flat.size, _CHUNK):
            w[start:start + _CHUNK] = scale[np.unravel_index(order[start:start + _CHUNK], values.shape)]
        del order
    prefix = _Prefix(x, w)
    starts = _group_starts(x, groups)
    gw, gs1, gs2 = prefix.sums(np.append(starts, len(x)))
    keep = gw > 0
    if not keep.any():  # every weight is zero: any codebook is as good; use the plain values
        return cluster(values, k, None, groups, steps)
    gw, gs1 = gw[keep], gs1[keep]
    cuts, _ = dp_partition(gw, gs1, gs2[keep], k)
    run_w, run_s1 = (np.diff(np.concatenate([[0.0], np.cumsum(a)])[cuts]) for a in (gw, gs1))
    centroids, _ = _lloyd(prefix, run_s1 / run_w, steps)
    centroids = _snap(x, centroids)
    del prefix, x, w
    codebook = centroids.astype(flat.dtype if flat.dtype.kind == "f" else np.float32)
    book = codebook.astype(np.float64)
    mids = (book[1:] + book[:-1]) / 2
    indices = np.empty(values.shape, dtype=np.uint8)
    error, norm = 0.0, 0.0
    for rows in _row_slabs(values.shape):
        part = values[rows].reshape(-1).astype(np.float64)
        picked = np.searchsorted(mids, part, side="left")
        indices[rows] = picked.astype(np.uint8).reshape(indices[rows].shape)
        diff = part - book[picked]
        weight = 1.0 if scale is None else scale[rows].reshape(-1)
        error += float(np.sum(weight * diff * diff))
        norm += float(np.sum(weight * part * part))
    return Clustering(codebook, indices, float(np.sqrt(error / norm)) if norm > 0 else 0.0)


def nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index (uint8) of the nearest value of sorted ``codebook`` for each of ``values`` (ties to the lower)."""
    c = np.asarray(codebook, dtype=np.float64)
    return np.searchsorted((c[1:] + c[:-1]) / 2, np.asarray(values, dtype=np.float64), side="left").astype(np.uint8)


def compensated_assign(weight: np.ndarray, codebook: np.ndarray, hessian: np.ndarray, block: int = 128,
                       damp: float = 0.01) -> np.ndarray:
    """Codebook indices (uint8, shape of ``weight``) for ``weight`` (K×N, ``y = x·W``) chosen GPTQ-style.

    Rows i = 0…K−1 are rounded in order to the nearest value of sorted ``codebook``; each row's error, divided by
    ``U[i, i]``, is subtracted through ``U[i, i+1:]`` from the later rows, with ``U`` the upper Cholesky factor of
    ``(H + damp·mean(diag H)·I)⁻¹`` and ``hessian`` = ``H`` (K×K, e.g. XᵀX/n). Rows are handled in blocks of
    ``block`` with one matrix product per block for the rows beyond it. All arithmetic is float64. Every column
    (output) is compensated on its own, so the weight is taken a few columns at a time (about ``_CHUNK`` values).
    """
    w = np.asarray(weight)
    c = np.asarray(codebook, dtype=np.float64).reshape(-1)
    h = np.asarray(hessian, dtype=np.float64)
    if w.ndim != 2 or h.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"need weight K×N and hessian K×K, not {w.shape} and {h.shape}")
    if c.size == 0 or np.any(np.diff(c) < 0) or block < 1 or damp < 0:
        raise ValueError("need a non-empty sorted codebook, block >= 1 and damp >= 0")
    if not np.all(np.isfinite(h)) or not all(np.all(np.isfinite(w[:, cols])) for cols in _column_slabs(w.shape)):
        raise ValueError("weight and hessian must be finite")
    k = w.shape[0]
    h = (h + h.T) / 2
    diag = np.diag(h).copy()
    dead = diag <= 0  # a channel that is always zero: its rows cost nothing, so need no compensation
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diag(h)))
    h[np.diag_indices(k)] += damp * mean if mean > 0 else 1.0
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # H⁻¹ = UᵀU, U upper triangular
    indices = np.empty(w.shape, dtype=np.uint8)
    for cols in _column_slabs(w.shape):
        indices[:, cols] = _assign_columns(w[:, cols].astype(np.float64), c, u, block)
    return indices


def _assign_columns(w: np.ndarray, c: np.ndarray, u: np.ndarray, block: int) -> np.ndarray:
    """``compensated_assign`` on a few columns ``w`` (float64, overwritten) given ``U``."""
    k = w.shape[0]
    indices = np.empty(w.shape, dtype=np.uint8)
    for start in range(0, k, block):
        stop = min(start + block, k)
        rows, errors = w[start:stop], np.zeros((stop - start, w.shape[1]))
        for i in range(stop - start):
            picked = nearest(rows[i], c)
            indices[start + i] = picked
            errors[i] = (rows[i] - c[picked]) / u[start + i, start + i]
            rows[i + 1:] -= np.outer(u[start + i, start + i + 1:stop], errors[i])
        w[stop:] -= u[start:stop, stop:].T @ errors
    return indices


def compensated(clustering: Clustering, weight: np.ndarray, hessian: np.ndarray, axis: int = 0, block: int = 128
                ) -> Clustering:
    """``clustering``'s codebook with indices from ``compensated_assign``; ``axis`` of ``weight`` holds the K input
    channels of ``hessian`` (a 2-D weight only). ``relative_error`` becomes the layer's relative output error."""
    w = np.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"compensation needs a 2-D weight, not {w.shape}")
    rows = np.moveaxis(w, axis, 0)
    indices = compensated_assign(rows, clustering.codebook, hessian, block)
    terms = [output_error_terms(rows[:, cols], clustering.codebook[indices[:, cols]], hessian)
             for cols in _column_slabs(rows.shape)]
    error = relative(sum(t[0] for t in terms), sum(t[1] for t in terms))
    return Clustering(clustering.codebook, np.ascontiguousarray(np.moveaxis(indices, 0, axis)), error)


def output_error(weight: np.ndarray, rebuilt: np.ndarray, hessian: np.ndarray) -> float:
    """‖X(W − Ŵ)‖ / ‖XW‖ from the Gram ``H = XᵀX`` (any scale): the layer's relative output error."""
    return relative(*output_error_terms(weight, rebuilt, hessian))


def _group_starts(x: np.ndarray, groups: int) -> np.ndarray:
    """Start positions of the groups of sorted ``x``: each distinct value when there are at most ``groups``, else
    half equal-count and half equal-width boundaries, never splitting equal values."""
    distinct = _changes(x, groups)
    if distinct is not None:
        return np.concatenate([[0], distinct]).astype(np.int64)
    half = max(groups // 2, 1)
    by_count = np.linspace(0, len(x), half + 1)[:-1].astype(np.int64)
    by_width = _search(x, np.linspace(float(x[0]), float(x[-1]), half + 1)[:-1], "left")
    starts = np.unique(np.concatenate([[0], by_count, by_width]))
    starts = np.unique(np.searchsorted(x, x[starts], side="left"))  # move each start to its first equal value
    return starts.astype(np.int64)


def _changes(x: np.ndarray, most: int) -> np.ndarray | None:
    """Positions ``i`` where sorted ``x[i] != x[i - 1]``, or ``None`` once there are ``most`` or more."""
    found: list[np.ndarray] = []
    count = 0
    for start in range(1, len(x), _CHUNK):
        part = x[start - 1:start + _CHUNK]
        changes = np.flatnonzero(part[1:] != part[:-1]) + start
        count += len(changes)
        if count >= most:
            return None
        found.append(changes)
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _cuts(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Run boundaries of sorted ``x`` assigned to the nearest of sorted ``centroids`` (length k + 1)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.concatenate([[0], _search(x, mids, "right"), [len(x)]]).astype(np.int64)


def _search(x: np.ndarray, queries: np.ndarray, side: Literal["left", "right"]) -> np.ndarray:
    """``np.searchsorted(x, queries, side)`` for float64 ``queries`` into sorted float ``x`` of any precision, without
    numpy's float64 copy of ``x``: each query becomes the narrower float that bounds the same values of ``x``."""
    q = np.asarray(queries, dtype=np.float64)
    if x.dtype == np.float64:
        return np.searchsorted(x, q, side=side)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = q.astype(x.dtype)  # out of range: ±inf, which bounds the same values
        if side == "right":  # count of x ≤ q: the largest narrow float ≤ q bounds the same x
            narrow = np.where(narrow.astype(np.float64) > q, np.nextafter(narrow, x.dtype.type(-np.inf)), narrow)
        else:  # count of x < q: the smallest narrow float ≥ q
            narrow = np.where(narrow.astype(np.float64) < q, np.nextafter(narrow, x.dtype.type(np.inf)), narrow)
    return np.searchsorted(x, narrow.astype(x.dtype), side=side)


def _sortable(values: np.ndarray) -> np.ndarray:
    """``values`` as they are when float (a float32 weight stays float32: sorting and searching it is exact), else
    float64."""
    values = np.asarray(values)
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def _row_slabs(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Index tuples of whole leading-axis rows covering ``shape``, about ``_CHUNK`` values each."""
    if not shape:
        return [()]
    step = max(1, _CHUNK // max(math.prod(shape[1:]), 1))
    return [(slice(start, start + step),) for start in range(0, shape[0], step)] or [(slice(0, 0),)]


def _column_slabs(shape: tuple[int, ...]) -> list[slice]:
    """Column ranges of a K×N matrix, about ``_CHUNK`` values each."""
    step = max(1, _CHUNK // max(shape[0], 1))
    return [slice(start, start + step) for start in range(0, shape[1], step)] or [slice(0, 0)]


class _Prefix:
    """Sums of w, w·x, w·x² over any run of sorted ``x``, from totals per ``_BLOCK`` values plus, at each cut,
    the partial sums of its own block: no n-long prefix arrays, so a large weight costs only ``x`` and ``w``."""

    def __init__(self, x: np.ndarray, w: np.ndarray | None) -> None:
        self.x, self.w = x, None if w is None else np.asarray(w, dtype=np.float64)
        totals = [np.add.reduceat(terms, np.arange(0, terms.shape[1], _BLOCK), axis=1)
                  for terms in (self._terms(start, start + _CHUNK) for start in range(0, len(x), _CHUNK))]
        blocks = np.concatenate(totals, axis=1) if totals else np.zeros((3, 0))
        self.base = np.concatenate([np.zeros((3, 1)), np.cumsum(blocks, axis=1)], axis=1)

    def _terms(self, start: int, stop: int) -> np.ndarray:
        """w, w·x and w·x² of ``x[start:stop]``, stacked (3 × m)."""
        x = self.x[start:stop].astype(np.float64)
        w = np.ones_like(x) if self.w is None else self.w[start:stop]
        xw = x * w
        return np.stack([w, xw, xw * x])

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The three prefix sums (3 × len) at each of ``positions`` (0…n): Σ over ``x[:p]``."""
        block, offset = np.divmod(np.asarray(positions, dtype=np.int64), _BLOCK)
        sums = self.base[:, block]
        for b in np.unique(block[offset > 0]):
            inside = (block == b) & (offset > 0)
            partial = np.cumsum(self._terms(int(b) * _BLOCK, (int(b) + 1) * _BLOCK), axis=1)
            sums[:, inside] += partial[:, offset[inside] - 1]
        return sums

    def sums(self, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per run ``[cuts[i], cuts[i+1])``: Σw, Σw·x, Σw·x² (empty runs give zeros)."""
        s0, s1, s2 = np.diff(self.at(cuts), axis=1)
        return (np.diff(cuts).astype(np.float64) if self.w is None else s0), s1, s2

    def means(self, cuts: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
        """Weighted mean of each run; an empty (zero-weight) run keeps its ``fallback`` centroid, or is dropped."""
        s0, s1, _ = self.sums(cuts)
        full = s0 > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            means = s1 / s0
        return np.sort(np.where(full, means, fallback)) if fallback is not None else means[full]

    def error(self, centroids: np.ndarray) -> float:
        """Weighted squared error of every value rounded to its nearest centroid."""
        s0, s1, s2 = self.sums(_cuts(self.x, centroids))
        return float(np.sum(np.maximum(s2 - 2 * centroids * s1 + centroids**2 * s0, 0.0)))


def _snap(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """A cluster whose members are all equal gets that value exactly (its float mean may be off by rounding)."""
    cuts = _cuts(x, centroids)
    first, last = x[np.minimum(cuts[:-1], len(x) - 1)], x[np.maximum(cuts[1:] - 1, 0)]
    return np.where((cuts[1:] > cuts[:-1]) & (first == last), first, centroids.astype(np.float64))
