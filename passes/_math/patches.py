"""Convolution patches (im2col): a Conv is a matrix product over them, so linear-layer maths applies to Conv layers.

``Conv(x, W)`` at one output position is ``patch · W.reshape(N, -1).T`` where the patch holds the C×k₁×…×k_d input
values under the kernel, channel-major, zeros where the kernel overhangs the padding. Gathering every patch of a
batch gives the rows whose Gram matrix a least-squares refit of the Conv needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ConvGeometry", "patches"]


@dataclass(frozen=True)
class ConvGeometry:
    """A Conv's kernel placement: spatial ``kernel`` size, ``strides``, ``dilations`` and explicit ``pads``
    (begins then ends, ONNX order), or ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER``/``VALID`` resolved per input."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"

    def resolved_pads(self, spatial: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """(begin, end) padding per spatial axis for an input of size ``spatial``."""
        d = len(self.kernel)
        strides = self.strides or (1,) * d
        dilations = self.dilations or (1,) * d
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for size, k, s, dil in zip(spatial, self.kernel, strides, dilations, strict=True):
                total = max((-(-size // s) - 1) * s + (k - 1) * dil + 1 - size, 0)
                small, large = total // 2, total - total // 2
                out.append((small, large) if self.auto_pad == "SAME_UPPER" else (large, small))
            return tuple(out)
        if self.auto_pad == "VALID" or not self.pads:
            return ((0, 0),) * d
        return tuple(zip(self.pads[:d], self.pads[d:], strict=True))


def patches(x: ArrayLike, geometry: ConvGeometry) -> NDArray[np.float32]:
    """Every kernel patch of ``x`` (N×C×spatial…) as one row: (N·positions) × (C·k₁·…·k_d), channel-major columns.

    Row order is batch then output positions in C order, so ``patches(x) @ W.reshape(N_out, -1).T`` equals the Conv
    (group 1, no bias) reshaped to rows.
    """
    array = np.asarray(x, np.float32)
    d = len(geometry.kernel)
    if array.ndim != d + 2:
        raise ValueError(f"input of rank {array.ndim} does not fit a {d}-D kernel")
    strides = geometry.strides or (1,) * d
    dilations = geometry.dilations or (1,) * d
    pads = geometry.resolved_pads(array.shape[2:])
    padded = np.pad(array, ((0, 0), (0, 0), *pads))
    outs = [(size - (k - 1) * dil - 1) // s + 1
            for size, k, s, dil in zip(padded.shape[2:], geometry.kernel, strides, dilations, strict=True)]
    if any(o < 1 for o in outs):
        raise ValueError(f"kernel {geometry.kernel} does not fit the padded input {padded.shape[2:]}")
    taps = []
    for offset in itertools.product(*(range(k) for k in geometry.kernel)):
        index = tuple(slice(o * dil, o * dil + (n - 1) * s + 1, s)
                      for o, dil, n, s in zip(offset, dilations, outs, strides, strict=True))
        taps.append(padded[(slice(None), slice(None)) + index])
    stacked = np.stack(taps, axis=2)  # N, C, taps, out…
    rows = np.moveaxis(stacked.reshape(stacked.shape[0], stacked.shape[1] * stacked.shape[2], -1), 1, 2)
    return np.ascontiguousarray(rows.reshape(-1, rows.shape[-1]))
