"""SmoothQuant: move activation outliers into the weights before quantizing a matrix product.

A LayerNorm output often has a few channels far larger than the rest; one per-tensor activation grid sized for them
leaves the other channels a handful of levels. Scaling input channel j by ``1/s_j`` and the matching weight row by
``s_j`` leaves ``X·W`` unchanged (``(X·diag(1/s))·(diag(s)·W)``) but evens out the channels, with
``s_j = max|X_j|^α / max|W_j|^(1−α)`` (Xiao et al., 2023). α trades activation range for weight range; it is chosen by
the quantized output error it gives on calibration data, and "no smoothing" competes too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from graphopt_passes._math import quant

__all__ = ["SmoothingSearch", "smoothing_scales"]

Array = NDArray[np.float64]

_FLOOR = 1e-5


def smoothing_scales(x_absmax: ArrayLike, w_absmax: ArrayLike, alpha: float) -> NDArray[np.float32]:
    """Per-input-channel ``s = max|X|^α / max|W|^(1−α)``, floored so silent channels are not blown up, in float32."""
    x = np.maximum(np.asarray(x_absmax, np.float64), _FLOOR)
    w = np.maximum(np.asarray(w_absmax, np.float64), _FLOOR)
    return (x**alpha / w ** (1 - alpha)).astype(np.float32)


class SmoothingSearch:
    """Accumulates, batch by batch, the quantized output error of matrix products reading one activation, for each
    candidate α (``None``: no smoothing); memory: one number per candidate.

    ``weights`` are K×N matrices (one per reader); ``low``/``high`` are the activation's per-channel min and max on
    the calibration data, which bound the range of ``X/s`` for every candidate without another pass.
    """

    def __init__(self, weights: Sequence[ArrayLike], low: ArrayLike, high: ArrayLike,
                 alphas: Sequence[float | None], *, weight_bits: int = 8) -> None:
        self.weights = [np.asarray(w, np.float64) for w in weights]
        low64, high64 = np.asarray(low, np.float64), np.asarray(high, np.float64)
        w_absmax = np.max([np.abs(w).max(axis=1) for w in self.weights], axis=0)
        x_absmax = np.maximum(np.abs(low64), np.abs(high64))
        self.alphas = list(alphas)
        self.scales = [None if a is None else smoothing_scales(x_absmax, w_absmax, a).astype(np.float64)
                       for a in self.alphas]
        self.grids = []
        self.rounded = []
        for s in self.scales:
            inv = 1.0 if s is None else 1.0 / s
            self.grids.append(quant.activation_params(float(np.min(low64 * inv)), float(np.max(high64 * inv))))
            ws = [w if s is None else w * s[:, None] for w in self.weights]
            self.rounded.append([quant.fake_quantize(w, quant.weight_params(w, 1, bits=weight_bits)).astype(np.float64)
                                 for w in ws])
        self.errors = np.zeros(len(self.alphas))
        self.energy = 0.0

    def update(self, x: ArrayLike) -> None:
        rows = np.asarray(x, np.float64).reshape(-1, self.weights[0].shape[0])
        exact = [rows @ w for w in self.weights]
        self.energy += float(sum(np.sum(e**2) for e in exact))
        for i, (s, grid, rounded) in enumerate(zip(self.scales, self.grids, self.rounded, strict=True)):
            xs = rows if s is None else rows / s
            xq = quant.fake_quantize(xs, grid).astype(np.float64)
            self.errors[i] += float(sum(np.sum((xq @ wq - e) ** 2) for wq, e in zip(rounded, exact, strict=True)))

    def best(self) -> tuple[float | None, NDArray[np.float32] | None, float]:
        """The α with the least error, its scales (``None`` for no smoothing) and its relative error."""
        i = int(np.argmin(self.errors))
        chosen = self.scales[i]
        scales = None if chosen is None else chosen.astype(np.float32)
        return self.alphas[i], scales, float(self.errors[i] / max(self.energy, 1e-30))
