"""Validation data: load it, check it against the model's inputs, batch it, and split it.

A data file is an ``.npz`` with one array per model input name (axis 0 = samples), or a folder of ``.npz`` files
(concatenated) or of ``<input>.npy`` files. An input's array either has the model input's rank, its axis 0 being
the model's (dynamic or size-1) batch axis, or one more dimension: whole model inputs stacked on a new axis 0.
``random`` synthesises inputs from the model's specs; such data can only judge lossless passes.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper

from graphopt.columns import ArrayFile, Column, Rows, chunks, select
from graphopt.errors import DataError, UnsupportedModelError, first_line

__all__ = ["RANDOM", "Dataset", "InputSpec", "data_files", "input_specs", "load_data", "split_indices", "synthesize"]

RANDOM = "random"
_SYNTHETIC_SAMPLES = 16
_SYNTHETIC_DYNAMIC_DIM = 16
_MAX_SYNTHETIC_BYTES = 2**30
"""Random data is for checking lossless rewrites; inputs declared larger than this are refused, not allocated."""
_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError)
"""What numpy and zipfile raise for unreadable array files (corrupt headers and deflate streams, unknown zip
methods, encrypted members…)."""


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (``str`` or ``None`` for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"

    @property
    def batch_axis(self) -> bool:
        """Whether axis 0 can carry samples: dynamic or of size 1."""
        return bool(self.shape) and (not isinstance(self.shape[0], int) or self.shape[0] == 1)


def input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    """The inputs a caller must feed (graph inputs that are not initializers).

    Refuses up front a model with an input onnxruntime's Python API cannot feed (bfloat16, float8, int4: numpy has
    no such types, ``ml_dtypes`` stands in and onnxruntime rejects it), rather than failing later with
    onnxruntime's "Numpy_type 256 can't be converted to MLDataType". Outputs are not judged here: onnxruntime
    returns some of these types (float8e4m3fn as its raw bytes) and words its refusal of the others
    (``runtime.run_dataset``).
    """
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            raise UnsupportedModelError(f"model input '{value.name}' is not a tensor; graphopt feeds tensors only")
        tensor = value.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError) as e:
            raise UnsupportedModelError(
                f"model input '{value.name}' has an unknown element type {tensor.elem_type}"
            ) from e
        if not _numpy_native(dtype):
            raise UnsupportedModelError(f"model input '{value.name}' is {dtype.name}, which onnxruntime's Python API "
                                        "cannot feed; graphopt runs models with numpy-typed inputs only")
        shape = tuple(  # a negative dim_value (PaddlePaddle writes -1) is dynamic, as onnxruntime treats it
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
            for d in tensor.shape.dim
        )
        specs.append(InputSpec(value.name, dtype, shape))
    return tuple(specs)


def _numpy_native(dtype: np.dtype) -> bool:
    """False for the ``ml_dtypes`` stand-ins (bfloat16, float8, int4, …), which numpy knows as user-defined types."""
    return dtype.isbuiltin == 1


@dataclass(frozen=True)
class Dataset:
    """Samples for every model input; ``stacked`` names inputs whose arrays stack whole model inputs. ``labels``
    (one per sample, optional) travel with the samples through ``subset`` and ``split``.

    An input's samples are a ``Column``: an array, or ``Rows`` read a batch at a time (a data file's arrays stay on
    disk, and subsets and splits are row numbers), so a run's memory does not grow with the number of samples.
    ``to_arrays`` reads them all.
    """

    arrays: Mapping[str, Column]
    stacked: frozenset[str]
    batchable: bool
    synthetic: bool = False
    source: str = ""
    labels: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def batches(self, batch_size: int, *, per_sample: bool = False, start: int = 0
                ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Feeds of up to ``batch_size`` samples from sample ``start`` on (one per feed when ``per_sample`` or not
        ``batchable``)."""
        step = 1 if per_sample or not self.batchable else batch_size
        for first in range(start, self.n_samples, step):
            stop = min(first + step, self.n_samples)
            feed = {
                name: (np.asarray(array[first]) if name in self.stacked else np.asarray(array[first:stop]))
                for name, array in self.arrays.items()
            }
            yield feed, stop - first

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every sample of every input, read into memory."""
        return {name: np.asarray(array) for name, array in self.arrays.items()}

    def window(self, start: int, stop: int | None = None) -> Dataset:
        """Samples ``start`` to ``stop`` (exclusive; ``None``: to the end), without copying them."""
        return self._with(slice(start, stop))

    def subset(self, indices: np.ndarray) -> Dataset:
        """Samples ``indices``, in that order, without copying them."""
        return self._with(np.asarray(indices, dtype=np.intp))

    def _with(self, key: slice | np.ndarray) -> Dataset:
        arrays = {name: select(array, key) for name, array in self.arrays.items()}
        labels = self.labels[key] if self.labels is not None else None
        return Dataset(arrays, self.stacked, self.batchable, self.synthetic, self.source, labels)

    def split(self, calibration_fraction: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A deterministic split into (calibration, verification) parts that share no sample (``split_indices``)."""
        calibration, verification = split_indices(self.n_samples, calibration_fraction, seed)
        return self.subset(calibration), self.subset(verification)


def split_indices(n_samples: int, calibration_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The samples ``Dataset.split`` gives calibration and verification, each in ascending order: a seeded
    permutation cut at ``calibration_fraction`` (each part has a sample when there are two or more)."""
    order = np.random.default_rng(seed).permutation(n_samples)
    cut = round(n_samples * calibration_fraction) if n_samples >= 2 else 0
    cut = min(max(cut, 1 if n_samples >= 2 else 0), n_samples - 1)
    return np.sort(order[:cut]), np.sort(order[cut:])


def load_data(source: str | Path, specs: tuple[InputSpec, ...], labels: str | Path | None = None) -> Dataset:
    """Load and check validation data, or synthesise it when ``source`` is ``"random"``.

    ``labels`` names an array of the data file that holds one label per sample (it is not fed to the model), or
    is a path to an ``.npy`` file of them.
    """
    if str(source) == RANDOM:
        if labels is not None:
            raise DataError("labels need real data, not --data random")
        return synthesize(specs)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data not found: {path}")
    arrays = _read_folder(path, specs) if path.is_dir() else _read_file(_regular(path), specs)
    label_array = None
    if labels is not None:
        label_array = _labels(arrays, labels)
    dataset = _check(arrays, specs, str(path))
    if label_array is not None and len(label_array) != dataset.n_samples:
        raise DataError(f"labels hold {len(label_array)} values for {dataset.n_samples} samples")
    return replace(dataset, labels=label_array)


def _labels(arrays: dict[str, Column], labels: str | Path) -> np.ndarray:
    """Take the label array named ``labels`` out of ``arrays``, or read it from an ``.npy`` file."""
    name = str(labels)
    if name in arrays:
        found = np.asarray(arrays.pop(name))
    elif name.endswith(".npy") and Path(name).exists():
        try:
            found = np.asarray(_load_npy(_regular(Path(name))))
        except _READ_ERRORS as e:
            raise DataError(f"cannot read labels {name}: {first_line(e)}") from e
    else:
        raise DataError(f"labels '{name}' are neither an array of the data ({', '.join(sorted(arrays))}) nor an .npy file")
    if found.ndim < 1 or found.dtype.kind not in "biuf" or (found.dtype.kind == "f" and not np.isfinite(found).all()):
        raise DataError(f"labels '{name}' must be finite numbers, one per sample (got {found.dtype} {list(found.shape)})")
    return found


def synthesize(specs: tuple[InputSpec, ...], n_samples: int = _SYNTHETIC_SAMPLES, seed: int = 0) -> Dataset:
    """Seeded random inputs: normal floats, booleans, and integers in a range that suits ids and masks
    (ones for inputs named like masks, zeros for type ids, 0..99 otherwise)."""
    rng = np.random.default_rng(seed)
    shapes = {}
    for spec in specs:
        dims = [d if isinstance(d, int) else _SYNTHETIC_DYNAMIC_DIM for d in spec.shape]
        shapes[spec.name] = (n_samples, *dims[1:]) if spec.batch_axis else (n_samples, *dims)
    needed = sum(math.prod(shapes[s.name]) * s.dtype.itemsize for s in specs)
    if needed > _MAX_SYNTHETIC_BYTES:
        widest = max(specs, key=lambda s: math.prod(shapes[s.name]) * s.dtype.itemsize)
        raise DataError(f"--data random: input '{widest.name}' is declared {widest.describe()}, so {n_samples} "
                        f"random samples would take {_gib(needed)}; give real samples with --data")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = shapes[spec.name]
        name = spec.name.lower()
        if spec.dtype == np.bool_:
            arrays[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(spec.dtype, np.integer):
            fill = 1 if "mask" in name else 0 if "type" in name else None
            values = np.full(shape, fill) if fill is not None else rng.integers(0, 100, shape)
            arrays[spec.name] = values.astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return _check(arrays, specs, RANDOM, synthetic=True)


def _read_file(path: Path, specs: tuple[InputSpec, ...]) -> dict[str, Column]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise DataError(f"{path} holds one array but the model has {len(specs)} inputs; use an .npz")
            return {specs[0].name: _load_npy(path)}
        if zipfile.is_zipfile(path):
            return _read_archive(path)
        with open(path, "rb") as handle:
            if _npy_header(handle, path.stat().st_size, str(path)) is not None:
                raise DataError(f"{path} is not an .npz archive (it holds one array; name it .npy)")
        np.load(path, allow_pickle=False)  # says in numpy's words what the file is instead
        raise DataError(f"{path} is not an .npz archive")
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"cannot read data file {path}: {first_line(e)}") from e


def _load_npy(path: Path) -> Column:
    """One array from an ``.npy`` file, left on disk and read by rows when it is C-ordered; ``DataError`` when the
    file holds something else (an ``.npz`` archive)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            header = _npy_header(handle, path.stat().st_size, str(path))
        if header is not None and header.by_rows:
            return Rows(ArrayFile.at(path, header.offset, header.dtype, header.shape))
        _check_memory(path.stat().st_size, str(path))
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise DataError(f"{path} is not an .npy array (it is an .npz archive; name it .npz)")
    return loaded


def _regular(path: Path) -> Path:
    """``path`` if it is a regular file; a FIFO or device is refused, since reading one can block for ever."""
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read data file {path}: {first_line(e)}") from e
    if not regular:
        raise DataError(f"data file {path} is not a regular file (a FIFO, socket or device); give an .npz or .npy file")
    return path


@dataclass(frozen=True)
class _NpyHeader:
    """What an ``.npy`` stream's header declares, and where its array starts (``offset`` from the stream's start)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int

    @property
    def by_rows(self) -> bool:
        """Whether the array can be read a row at a time where it lies: C-ordered, with samples."""
        return not self.fortran and len(self.shape) >= 1


def _npy_header(handle: BinaryIO, stored: int, name: str) -> _NpyHeader | None:
    """The header of an ``.npy`` stream, refused when ``stored`` bytes cannot hold the array it declares; ``None``
    when the stream is not an ``.npy`` or holds Python objects (numpy then says what it is).

    Read before the array, so that a header claiming 10**12 samples is refused instead of allocated.
    """
    try:
        version = np.lib.format.read_magic(handle)
    except ValueError:
        return None
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"cannot read data file {name}: .npy format version {version[0]}.{version[1]} is not one numpy "
                        "writes (1.0, 2.0, 3.0)")
    try:  # version 3.0 differs from 2.0 in allowing utf-8 field names, which sample arrays do not have
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
    except _READ_ERRORS as e:
        raise DataError(f"cannot read data file {name}: {first_line(e)}") from e
    if dtype.hasobject:
        return None  # numpy refuses object arrays itself (allow_pickle=False), in its own words
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > stored - handle.tell():
        raise DataError(f"cannot read data file {name}: its header declares {dtype} {list(shape)} ({claimed} bytes), "
                        f"but the file holds {max(stored - handle.tell(), 0)}: truncated or forged")
    return _NpyHeader(dtype, tuple(shape), bool(fortran), handle.tell())


def _read_archive(path: Path) -> dict[str, Column]:
    """An ``.npz``'s arrays. Each member's header is checked against its size before anything is read; members
    stored uncompressed stay on disk and are read by rows, compressed ones are inflated (when the memory free can
    hold them)."""
    arrays: dict[str, Column] = {}
    inflated: dict[str, int] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                header = _npy_header(member, info.file_size, f"{path}:{info.filename}")  # type: ignore[arg-type]
            name = info.filename.removesuffix(".npy")
            if header is not None and header.by_rows and info.compress_type == zipfile.ZIP_STORED \
                    and info.filename.endswith(".npy"):
                start = _member_start(path, info) + header.offset
                arrays[name] = Rows(ArrayFile.at(path, start, header.dtype, header.shape))
            else:
                inflated[name] = info.file_size
    _check_memory(sum(inflated.values()), str(path))
    if inflated:
        with np.load(path, allow_pickle=False) as archive:
            arrays.update({name: archive[name] for name in inflated})
    odd = [name for name in inflated if not isinstance(arrays[name], np.ndarray)]  # numpy gives raw bytes for these
    if odd:
        raise DataError(f"{path}: member '{odd[0]}' is not a numpy array")
    return arrays


def _member_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in its archive: after its local header, whose name and extra fields may
    differ in length from the central directory's."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"cannot read data file {path}: member '{info.filename}' has a damaged header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _check_memory(claimed: int, name: str) -> None:
    """Refuse data that would take more than a quarter of the memory available now: graphopt holds the arrays, their
    calibration and verification halves and the models' outputs on them at once."""
    available = _available_memory()
    if available is not None and claimed > available // 4:
        raise DataError(f"{name} holds {_gib(claimed)} of arrays, more than a quarter of the {_gib(available)} of "
                        "memory available; give fewer samples")


def _available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (Linux), else physical memory, else ``None``."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**27 else f"{n / 2**20:.3g} MiB"


def data_files(source: str | Path, labels: str | Path | None = None) -> tuple[Path, ...]:
    """The files ``load_data`` reads for ``source`` and ``labels`` (none for ``random``), so outputs never
    overwrite one of them."""
    if str(source) == RANDOM:
        return ()
    path = Path(source)
    files = [*_members(path)] if path.is_dir() else [path]
    if labels is not None and str(labels).endswith(".npy"):
        files.append(Path(labels))
    return tuple(files)


def _members(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.npz"), *folder.glob("*.npy")])


def _read_folder(path: Path, specs: tuple[InputSpec, ...]) -> dict[str, Column]:
    npz = sorted(_regular(p) for p in path.glob("*.npz"))
    npy = sorted(_regular(p) for p in path.glob("*.npy"))
    if npz and npy:
        raise DataError(f"data folder {path} mixes .npz and .npy files; use one kind")
    if npy:
        arrays: dict[str, Column] = {}
        for file in npy:
            try:
                arrays[file.stem] = _load_npy(file)
            except _READ_ERRORS as e:
                raise DataError(f"cannot read data file {file}: {first_line(e)}") from e
        return arrays
    if not npz:
        raise DataError(f"data folder {path} holds no .npz or .npy files")
    parts = [_read_file(file, specs) for file in npz]
    names = set(parts[0])
    for file, part in zip(npz, parts, strict=True):
        if set(part) != names:
            raise DataError(f"{file} holds arrays {sorted(part)}, but {npz[0].name} holds {sorted(names)}")
    try:
        _check_memory(sum(part[name].nbytes for part in parts for name in names), str(path))
        return {name: np.concatenate([np.asarray(p[name]) for p in parts], axis=0) for name in names}
    except ValueError as e:
        raise DataError(f"arrays in {path} do not concatenate along the sample axis: {e}") from e


def _check(
    arrays: Mapping[str, Column], specs: tuple[InputSpec, ...], source: str, synthetic: bool = False
) -> Dataset:
    by_name = {s.name: s for s in specs}
    missing = [s for s in specs if s.name not in arrays]
    if missing:
        s = missing[0]
        raise DataError(f"data has no array for model input '{s.name}' (expects {s.describe()})")
    extra = sorted(set(arrays) - set(by_name))
    if extra:
        raise DataError(f"data has arrays that are not model inputs: {', '.join(extra)} (inputs: {', '.join(by_name)})")
    stacked = set()
    counts = {}
    for name, array in arrays.items():
        spec = by_name[name]
        if array.dtype != spec.dtype:
            raise DataError(f"input '{name}': data is {array.dtype}, model expects {spec.describe()}")
        rank = len(spec.shape)
        if array.ndim == rank + 1:
            stacked.add(name)
            dims = array.shape[1:]
        elif array.ndim == rank and spec.batch_axis:
            dims = (1, *array.shape[1:])
        else:
            raise DataError(
                f"input '{name}': data has shape {list(array.shape)}, model expects {spec.describe()} "
                f"with samples on axis 0" + ("" if spec.batch_axis else " (stack whole inputs: rank + 1)")
            )
        for axis, (want, got) in enumerate(zip(spec.shape, dims, strict=True)):
            if isinstance(want, int) and want != got and not (axis == 0 and name not in stacked):
                raise DataError(f"input '{name}': dimension {axis} is {got} in the data, model expects {want}")
        if np.issubdtype(array.dtype, np.floating) and not all(np.isfinite(part).all() for part in chunks(array)):
            raise DataError(f"input '{name}': data holds NaN or Inf values")
        counts[name] = len(array)
    if not counts or min(counts.values()) == 0:
        raise DataError("data has zero samples")
    if len(set(counts.values())) > 1:
        raise DataError(f"inputs have different sample counts: {counts}")
    batchable = not stacked and all(not isinstance(by_name[n].shape[0], int) for n in arrays)
    return Dataset(dict(arrays), frozenset(stacked), batchable, synthetic, source)
