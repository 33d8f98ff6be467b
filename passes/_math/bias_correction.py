"""Bias correction: fold the mean output shift that quantization causes in a layer back into its bias.

Rounding weights and inputs is not zero-mean per output channel: a channel whose weights mostly round up outputs a
little more on average, and the next layers see that shift on every sample (it hurts most where a channel has few
weights, as in depthwise convolutions). Because the layers are linear, the shift of output channel ``o`` needs only
the per-input-channel means of the float input ``x`` and of its fake-quantized copy ``x̃``:
``shift = E[x̃]·M̃ − E[x]·M``, where ``M`` (K×N) maps input-channel means to output means: the weight itself for a
matrix product, the kernel summed over its window for a convolution (exact away from padded borders). Subtracting it
from the bias makes the quantized layer unbiased on the calibration data (Nagel et al., 2019, "Data-Free
Quantization", empirical variant with real inputs).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ChannelMeans", "mean_map", "output_shift"]

Array = NDArray[np.float64]


class ChannelMeans:
    """Running per-channel means along ``axis``, reduced batch by batch (memory: one vector)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.total: Array | None = None
        self.count = 0

    def update(self, x: ArrayLike) -> None:
        values = np.asarray(x)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        axis = self.axis % values.ndim
        summed = values.sum(axis=tuple(i for i in range(values.ndim) if i != axis), dtype=np.float64)
        self.total = summed if self.total is None else self.total + summed
        self.count += values.size // max(values.shape[axis], 1)

    @property
    def mean(self) -> Array:
        if self.total is None or self.count == 0:
            raise ValueError("no values seen")
        return self.total / self.count


def mean_map(weight: ArrayLike, kind: str, *, trans_b: bool = False, groups: int = 1) -> Array:
    """The K×N matrix taking per-input-channel means to per-output-channel means of a layer without bias.

    ``kind`` is "matmul" (weight K×N), "gemm" (N×K when ``trans_b``) or "conv" (O × C/groups × window).
    """
    w = np.asarray(weight, np.float64)
    if kind == "matmul":
        return w
    if kind == "gemm":
        return w.T if trans_b else w
    if kind != "conv" or w.ndim < 3:
        raise ValueError(f"unknown layer kind {kind!r} for a {w.ndim}-D weight")
    out_channels, per_group = w.shape[:2]
    if out_channels % groups:
        raise ValueError(f"{out_channels} output channels do not split into {groups} groups")
    summed = w.reshape(out_channels, per_group, -1).sum(axis=2)
    result = np.zeros((per_group * groups, out_channels))
    out_per_group = out_channels // groups
    for g in range(groups):
        rows, cols = slice(g * per_group, (g + 1) * per_group), slice(g * out_per_group, (g + 1) * out_per_group)
        result[rows, cols] = summed[cols].T
    return result


def output_shift(float_map: ArrayLike, quantized_map: ArrayLike, mean_x: ArrayLike, mean_quantized_x: ArrayLike
                 ) -> Array:
    """The mean output change per output channel, ``E[x̃]·M̃ − E[x]·M``, to subtract from the bias."""
    return (np.asarray(mean_quantized_x, np.float64) @ np.asarray(quantized_map, np.float64)
            - np.asarray(mean_x, np.float64) @ np.asarray(float_map, np.float64))
