"""Block-wise 4-bit weight quantisation: grids, a clip-ratio scale search and the two packed layouts onnxruntime reads.

A weight W (K×N, the layer computes X·W) is cut into blocks of ``block`` consecutive rows along the reduction axis K,
one scale (and, asymmetric, one zero point) per block and output column, so an outlier only coarsens its own block.
Symmetric blocks use the signed grid ``[-8, 7]`` with ``scale = clip·max|w| / 7`` and zero point 0; asymmetric
blocks use ``[0, 15]`` with ``scale = clip·(max − min) / 15`` and an integer zero point, which helps blocks whose
values are not centred on 0. Rounding is half to even, as ONNX's QuantizeLinear.

The scale search tries clip ratios (shrinking the range trades a clipped outlier for a finer grid for the rest) per
block and keeps the one with the least error. The error is plain weight MSE, or, data-aware, each row's squared
error weighted by ``E[x_k²]`` (the calibration Gram's diagonal, as AWQ weighs channels by activation magnitude):
rows that meet large activations matter more. With the diagonal the output error is a sum over blocks and columns,
so every block is chosen independently and exactly; ratio 1.0 (plain round to nearest) is always on the grid, so the
search never does worse than RTN on its own objective.

Layouts: ONNX INT4/UINT4 tensors pack the row-major flattened values two per byte, the first in the low nibble.
``MatMulNBits`` (com.microsoft) stores B transposed, ``[N, k_blocks, block/2]`` bytes, each column's block packed
low nibble first; scales ``[N, k_blocks]``; zero points packed the same way, ``[N, ceil(k_blocks/2)]``, with the
default zero point 8 when absent, so a symmetric weight is its signed values plus 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_CLIPS",
    "BlockQuant",
    "concatenate",
    "dequantize",
    "output_error",
    "output_error_terms",
    "pack_int4",
    "pack_nbits",
    "quantize",
    "relative",
    "search",
    "unpack_int4",
]

Array = NDArray[np.float64]

DEFAULT_CLIPS: tuple[float, ...] = tuple(float(c) for c in np.round(np.linspace(0.7, 1.0, 16), 3))
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class BlockQuant:
    """A quantised K×N weight: ``values`` (K×N ints, int8 in [-8, 7] or uint8 in [0, 15]), ``scales`` and
    ``zero_points`` (``ceil(K/block)×N``; zero points all 0 when symmetric)."""

    values: NDArray[np.integer]
    scales: Array
    zero_points: NDArray[np.integer]
    block: int
    symmetric: bool


def _blocks(w: Array, block: int) -> Array:
    """W (K×N) as ``[k_blocks, block, N]``, the last block padded with zeros."""
    k, n = w.shape
    padded = np.zeros((-(-k // block) * block, n))
    padded[:k] = w
    return padded.reshape(-1, block, n)


def _grid(blocks: Array, symmetric: bool, clip: Array) -> tuple[Array, Array]:
    """Scales and zero points (float, integral) per block and column for clip ratios ``clip`` (broadcastable)."""
    if symmetric:
        scale = np.max(np.abs(blocks), axis=1) * clip / 7.0
        zero = np.zeros_like(scale)
    else:
        low = np.minimum(np.min(blocks, axis=1), 0.0) * clip
        high = np.maximum(np.max(blocks, axis=1), 0.0) * clip
        scale = (high - low) / 15.0
        zero = np.clip(np.round(-low / np.where(scale > _TINY, scale, 1.0)), 0, 15)
    scale = np.where(scale > _TINY, scale, 1.0).astype(np.float32).astype(np.float64)  # stored as float32
    return scale, zero


def _round(blocks: Array, scale: Array, zero: Array, symmetric: bool) -> Array:
    low, high = (-8, 7) if symmetric else (0, 15)
    return np.clip(np.round(blocks / scale[:, None, :]) + zero[:, None, :], low, high)


def quantize(weight: ArrayLike, block: int, symmetric: bool = True, clips: ArrayLike | float = 1.0) -> BlockQuant:
    """Round-to-nearest block quantisation of ``weight`` (K×N) along K; ``clips`` scales each block's range
    (a scalar, or one ratio per block and column, ``ceil(K/block)×N``)."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or block < 1:
        raise ValueError(f"need a K×N matrix and block >= 1, got shape {w.shape} and block {block}")
    blocks = _blocks(w, block)
    scale, zero = _grid(blocks, symmetric, np.asarray(clips, dtype=np.float64))
    q = _round(blocks, scale, zero, symmetric).reshape(-1, w.shape[1])[: w.shape[0]]
    kind = np.int8 if symmetric else np.uint8
    return BlockQuant(q.astype(kind), scale, zero.astype(kind), block, symmetric)


def dequantize(quant: BlockQuant) -> Array:
    """``(q − zero)·scale`` as a float64 K×N matrix."""
    k = quant.values.shape[0]
    rows = np.arange(k) // quant.block
    return (quant.values.astype(np.float64) - quant.zero_points[rows].astype(np.float64)) * quant.scales[rows]


def search(
    weight: ArrayLike,
    block: int,
    symmetric: bool = True,
    importance: ArrayLike | None = None,
    clips: tuple[float, ...] = DEFAULT_CLIPS,
) -> tuple[BlockQuant, Array]:
    """The quantisation whose clip ratio minimises each block's error, and the ratios chosen (``k_blocks×N``).

    ``importance`` (length K, e.g. the calibration Gram's diagonal ``E[x_k²]``) weights each row's squared error;
    ``None`` weighs all rows alike (weight MSE). 1.0 is always tried.
    """
    w = np.asarray(weight, dtype=np.float64)
    weights = np.ones(w.shape[0]) if importance is None else np.maximum(np.asarray(importance, np.float64), 0.0)
    if weights.shape != (w.shape[0],):
        raise ValueError(f"importance needs {w.shape[0]} entries, got shape {weights.shape}")
    blocks, rows = _blocks(w, block), _blocks(weights[:, None], block)  # rows: [k_blocks, block, 1]
    best_error = np.full((blocks.shape[0], w.shape[1]), np.inf)
    best_clip = np.ones_like(best_error)
    for clip in sorted({1.0, *clips}, reverse=True):
        scale, zero = _grid(blocks, symmetric, np.float64(clip))
        approx = (_round(blocks, scale, zero, symmetric) - zero[:, None, :]) * scale[:, None, :]
        error = np.sum(rows * (blocks - approx) ** 2, axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_clip = np.where(better, clip, best_clip)
    return quantize(w, block, symmetric, best_clip), best_clip


def output_error(weight: ArrayLike, approx: ArrayLike, gram: ArrayLike) -> float:
    """Relative layer-output error ‖X(W − Ŵ)‖ / ‖XW‖ from the input Gram XᵀX (0 when the output is 0)."""
    return relative(*output_error_terms(weight, approx, gram))


def output_error_terms(weight: ArrayLike, approx: ArrayLike, gram: ArrayLike) -> tuple[float, float]:
    """``(‖X(W − Ŵ)‖², ‖XW‖²)`` from the Gram: sums over columns, so a matrix taken a few columns at a time adds
    its parts' terms."""
    w, e, g = (np.asarray(a, dtype=np.float64) for a in (weight, approx, gram))
    e = w - e
    return float(np.sum(e * (g @ e))), float(np.sum(w * (g @ w)))


def relative(num: float, den: float) -> float:
    """``√(num / den)``, 0 when ``den`` is 0 (an error and the norm it is relative to)."""
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def concatenate(parts: list[BlockQuant]) -> BlockQuant:
    """The quantisation of a matrix from those of its column slices, in order (blocks run along K: each column's
    are its own)."""
    return BlockQuant(np.concatenate([p.values for p in parts], axis=1),
                      np.concatenate([p.scales for p in parts], axis=1),
                      np.concatenate([p.zero_points for p in parts], axis=1), parts[0].block, parts[0].symmetric)


def pack_int4(values: ArrayLike) -> NDArray[np.uint8]:
    """Two 4-bit values per byte, the row-major flattened order, first value in the low nibble (ONNX INT4/UINT4).
    Works in bytes throughout (a negative value's low nibble is its two's complement), so packing a 64M-value weight
    takes about its count in bytes, not eight times that."""
    flat = np.asarray(values).reshape(-1).astype(np.uint8) & np.uint8(0xF)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    high = flat[1::2] << np.uint8(4)
    high |= flat[0::2]
    return high


def unpack_int4(packed: ArrayLike, count: int, signed: bool) -> NDArray[np.int8] | NDArray[np.uint8]:
    """The first ``count`` 4-bit values of ``pack_int4`` output, sign-extended when ``signed``."""
    data = np.asarray(packed, dtype=np.uint8)
    flat = np.stack([data & 0xF, data >> 4], axis=-1).reshape(-1)[:count].astype(np.int8)
    return np.where(flat > 7, flat - 16, flat).astype(np.int8) if signed else flat.astype(np.uint8)


def pack_nbits(quant: BlockQuant) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.uint8] | None]:
    """``MatMulNBits`` inputs B ``[N, k_blocks, block/2]``, scales ``[N, k_blocks]`` and packed zero points
    ``[N, ceil(k_blocks/2)]`` (``None`` when symmetric: the default zero point 8 applies)."""
    if quant.block % 2:
        raise ValueError(f"block {quant.block} is odd: a block would not fill whole bytes")
    k, n = quant.values.shape
    kb = quant.scales.shape[0]
    padded = np.empty((n, kb * quant.block), dtype=np.uint8)  # N×K: MatMulNBits' layout, one byte per value
    padded[:, :k] = quant.values.T
    if quant.symmetric:
        padded[:, :k] += np.uint8(8)  # int8 [-8, 7] as bytes, wrapped: + 8 gives [0, 15]
    if k < kb * quant.block:  # padding rows dequantise to 0: they hold the zero point
        padded[:, k:] = 8 if quant.symmetric else quant.zero_points[-1][:, None]
    b = pack_int4(padded).reshape(n, kb, quant.block // 2)
    scales = quant.scales.T.astype(np.float32).copy()
    if quant.symmetric:
        return b, scales, None
    zeros = quant.zero_points.T.astype(np.int64)
    if kb % 2:
        zeros = np.concatenate([zeros, np.zeros((n, 1), np.int64)], axis=1)
    return b, scales, pack_int4(zeros).reshape(n, -1)
