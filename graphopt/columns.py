"""Sample arrays read a batch at a time: a data file's arrays stay on disk, and a subset of samples is a list of row
numbers, not a copy.

graphopt reads its data many times (calibration, then every trial's verification) but never needs all of it at once,
so the memory a run takes need not grow with the number of samples. The same holds for the outputs it compares: a
large output is written to a ``SpillFile`` as it is run and read back a block of samples at a time. A ``Column`` is
a numpy array or ``Rows``. Both have ``dtype``, ``shape``, ``ndim`` and ``len``, and index by an int, a slice or an
index array. Indexing ``Rows`` reads those rows into a new array, and ``np.asarray`` reads a ``Rows`` whole.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from graphopt.errors import DataError

__all__ = ["ArrayFile", "Column", "Joined", "Rows", "SpillFile", "chunks", "select"]

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
        with open(self.path, "rb") as handle:
            found = os.fstat(handle.fileno())
            if (found.st_size, found.st_mtime_ns) != self.stamp:
                raise DataError(f"data file {self.path} changed while graphopt was reading it")
            if not _read_rows(handle, self.offset, rows, out):
                raise DataError(f"data file {self.path} is shorter than its header says")
        return out


class SpillFile:
    """Rows of one dtype and row shape appended to an anonymous temporary file (in ``TMPDIR``), read back by row as
    an ``ArrayFile`` is: an output too large to hold for every sample costs the system's page cache, which it can
    drop, not the process's memory. The file has no name; the OS deletes it when this object is collected or the
    process ends, however it ends."""

    def __init__(self, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.dtype, self.row_shape = np.dtype(dtype), row_shape
        self._file = tempfile.TemporaryFile(prefix="graphopt-outputs-")  # noqa: SIM115 - lives as long as self
        self._rows = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._rows, *self.row_shape)

    def append(self, rows: np.ndarray) -> None:
        """Add ``rows`` (of this file's row shape) after the last."""
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {list(rows.shape[1:])} appended to a file of {list(self.row_shape)}")
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1).view(np.uint8).data)
        self._rows += len(rows)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (in that order) as a new array."""
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if out.size and not _read_rows(self._file, 0, rows, out):
            raise OSError("a temporary file of graphopt's outputs is shorter than what was written to it")
        return out


class Joined:
    """Columns of one row shape and dtype read as one, the rows of each after the last's: outputs run in stages
    joined without copying them."""

    def __init__(self, parts: Sequence[Column]) -> None:
        if len({(p.shape[1:], np.dtype(p.dtype)) for p in parts}) != 1:
            raise ValueError("joined columns share one row shape and dtype")
        self.parts = tuple(parts)
        self.starts = np.cumsum([0, *(len(p) for p in parts)])
        self.dtype = np.dtype(parts[0].dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self.parts[0].shape[1:])

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (in that order) as a new array."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for index in np.unique(part_of):
            here = part_of == index
            out[here] = self.parts[index][rows[here] - self.starts[index]]
        return out


def _read_rows(handle: io.BufferedIOBase, offset: int, rows: np.ndarray, out: np.ndarray) -> bool:
    """Read rows ``rows`` of the array stored raw at ``offset`` in ``handle`` into ``out``, as runs of consecutive
    rows; whether every byte was there."""
    row_bytes = math.prod(out.shape[1:]) * out.dtype.itemsize
    for start, first, count in _runs(rows):
        handle.seek(offset + first * row_bytes)
        if handle.readinto(out[start:start + count].reshape(-1).view(np.uint8).data) != count * row_bytes:
            return False
    return True


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

    def __init__(self, source: np.ndarray | ArrayFile | SpillFile | Joined, index: np.ndarray | None = None) -> None:
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
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

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
        where = ("memory" if isinstance(self.source, np.ndarray) else
                 str(self.source.path) if isinstance(self.source, ArrayFile) else
                 "a temporary file" if isinstance(self.source, SpillFile) else f"{len(self.source.parts)} parts")
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
