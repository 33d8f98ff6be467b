"""How a pruned weight is stored: dense, or as ONNX's COO sparse tensor where that is smaller.

ONNX's ``SparseTensorProto`` is COO: the non-zero values plus int64 indices, either linear (``[NNZ]``, into the
row-major flattened tensor) or coordinates (``[NNZ, rank]``). Linear indices are the smaller form: 8 bytes of index
per non-zero, so a float32 weight is smaller as COO only below a density of 4/12 = 1/3, and a float16 one below
1/5. At the usual 50% sparsity dense storage is smaller, and the file shrinks only once compressed (the zeros
deflate); ``deflated_size`` measures that.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["INDEX_BYTES", "Storage", "choose_storage", "coo_bytes", "coo_decode", "coo_encode", "deflated_size"]

INDEX_BYTES = 8
"""ONNX sparse tensor indices are int64."""

Storage = Literal["dense", "sparse"]


def coo_encode(array: ArrayLike) -> tuple[np.ndarray, NDArray[np.int64]]:
    """``(values, linear indices)`` of the non-zeros of ``array`` in row-major order; values keep the dtype."""
    flat = np.asarray(array).reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    return flat[indices], indices


def coo_decode(values: ArrayLike, indices: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """The dense array of COO ``values`` at ``indices``: linear ``[NNZ]`` or coordinates ``[NNZ, rank]``."""
    v = np.asarray(values).reshape(-1)
    idx = np.asarray(indices, np.int64)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), shape) if idx.size else idx.reshape(-1)
    if idx.shape != v.shape:
        raise ValueError(f"{idx.shape[0]} indices for {v.shape[0]} values")
    size = int(np.prod(shape))
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise ValueError(f"indices out of range for shape {shape}")
    dense = np.zeros(size, dtype=v.dtype)
    dense[idx] = v
    return dense.reshape(shape)


def coo_bytes(nonzeros: int, itemsize: int) -> int:
    """Payload bytes of a COO tensor with linear indices: values plus int64 indices."""
    return nonzeros * (itemsize + INDEX_BYTES)


def choose_storage(array: ArrayLike, mode: str) -> Storage:
    """``dense`` or ``sparse`` for ``mode`` auto (whichever payload is smaller; dense on a tie), dense or sparse."""
    if mode in ("dense", "sparse"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise ValueError(f"storage must be auto, dense or sparse, not {mode!r}")
    a = np.asarray(array)
    return "sparse" if coo_bytes(int(np.count_nonzero(a)), a.itemsize) < a.nbytes else "dense"


def deflated_size(data: bytes, level: int = 6) -> int:
    """Bytes of ``data`` after zlib deflate (what a zip archive or compressed transfer would hold)."""
    return len(zlib.compress(data, level))
