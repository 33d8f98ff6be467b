"""Sample arrays read a batch at a time: a data file's arrays stay on disk, and a subset of samples is a list of row
numbers, not a copy.

graphopt reads its data many times (calibration, then every trial's verification) but never needs all of it at once,
so the memory a run takes need not grow with the number of samples. A ``Column`` is a numpy array or ``Rows``. Both
have ``dtype``, ``shape``, ``ndim`` and ``len``, and index by an int, a slice or an index array. Indexing ``Rows``
reads those rows into a new array, and ``np.asarray`` reads a ``Rows`` whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from graphopt.errors import DataError

__all__ = ["ArrayFile", "Column", "Rows", "chunks", "select"]

_CHUNK_BYTES = 2**22
"""How much of a column ``chunks`` reads at a time."""


@dataclass(frozen=True)
class ArrayFile:
    """A C-ordered array stored raw at ``offset`` in ``path`` (an ``.npy`` file, or an uncompressed member of an
    ``.npz``). ``stamp`` (size, modification time) is the file's when it was checked: a file that changes under a run
    is refused, not read as other samples."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    stamp: tuple[int, int]

    @classmethod
    def at(cls, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> ArrayFile:
        found = path.stat()
        if offset + math.prod(shape) * dtype.itemsize > found.st_size:
            raise DataError(f"data file {path} is shorter than its header says")
        return cls(path, offset, dtype, shape, (found.st_size, found.st_mtime_ns))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (in that order) as a new array, read as runs of consecutive rows."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if out.size == 0:
            return out
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        with open(self.path, "rb") as handle:
            found = os.fstat(handle.fileno())
            if (found.st_size, found.st_mtime_ns) != self.stamp:
                raise DataError(f"data file {self.path} changed while graphopt was reading it")
            for start, first, count in _runs(rows):
                handle.seek(self.offset + first * row_bytes)
                if handle.readinto(out[start:start + count].reshape(-1).view(np.uint8).data) != count * row_bytes:
                    raise DataError(f"data file {self.path} is shorter than its header says")
        return out


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(position, first row, count)`` of each run of consecutive rows in ``rows``."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(rows)]
    for start, end in zip(starts, ends, strict=True):
        yield start, int(rows[start]), end - start


class Rows:
    """Rows ``index`` of ``source`` (an array in memory or in a file), read when indexed."""

    __slots__ = ("index", "source")

    def __init__(self, source: np.ndarray | ArrayFile, index: np.ndarray | None = None) -> None:
        self.source = source
        self.index = np.arange(source.shape[0]) if index is None else np.asarray(index, dtype=np.intp)

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.source.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.source.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._read(self.index[[key]])[0]
        return self._read(self.index[key])

    def select(self, key: slice | np.ndarray) -> Rows:
        """These rows' ``key``, still unread."""
        return Rows(self.source, self.index[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._read(self.index)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self.source, np.ndarray):
            return self.source[rows]
        return self.source.read(rows)

    def __repr__(self) -> str:
        where = "memory" if isinstance(self.source, np.ndarray) else str(self.source.path)
        return f"Rows({self.dtype} {list(self.shape)} of {where})"


Column: TypeAlias = np.ndarray | Rows


def select(column: Column, key: slice | np.ndarray) -> Column:
    """Samples ``key`` of ``column`` without copying them: a view for a slice of an array, ``Rows`` otherwise."""
    if isinstance(column, Rows):
        return column.select(key)
    if isinstance(key, slice):
        return column[key]
    return Rows(column, np.arange(len(column))[key])


def chunks(column: Column, max_bytes: int = _CHUNK_BYTES) -> Iterator[np.ndarray]:
    """``column``'s samples in order, as arrays of at most about ``max_bytes`` (one sample at least)."""
    row_bytes = max(column.nbytes // max(len(column), 1), 1)
    step = max(max_bytes // row_bytes, 1)
    for start in range(0, len(column), step):
        yield np.asarray(column[start:start + step])
