"""Weights left in their files: a model's large external weights are not read into memory when it is loaded.

``modelio.read_model`` keeps each large main-graph initializer stored as external data where it is, an *in-place*
tensor: its location becomes the file's absolute path (checked before: a regular file inside the model's folder,
with one link), with its offset and length. Copying such a model copies a few bytes per weight, so the copies that
the manager, the passes and graph surgery make cost nothing, and a model of gigabytes is held once, on disk.

- Values are read on demand (``to_array``): a read-only memory map of the file, one per tensor while it is in use,
  so a weight a pass reads costs page cache, not a copy.
- onnxruntime loads the model from a temporary file beside them (``runtime``), so it maps them too; where that
  folder cannot be written, it is handed the maps (``external_initializers``) and copies them.
- Graph surgery keeps them in place (``keep_in_place`` before graphsurgeon's export): a constant whose values are
  still its unchanged map is exported as the in-place tensor again; one a pass rewrote is written inline.
- Saving streams them into the output's own data file (``copy_bytes``); the absolute location never reaches a file.

A pass that changes a weight writes a new tensor with its values, as for any model.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

__all__ = [
    "IN_PLACE_BYTES",
    "copy_bytes",
    "external_initializers",
    "import_in_place",
    "in_place",
    "in_place_tensors",
    "is_in_place",
    "keep_in_place",
    "location",
    "place",
    "placeable",
    "relocate",
    "to_array",
]

IN_PLACE_BYTES = 2**16
"""Initializers of at least this many bytes are kept in their file; smaller ones (shapes, scales, biases, which shape
inference may need to read) are loaded."""

_MAPPED = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
    onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
})
"""Types whose external bytes are their numpy values as they are (little-endian): these can be mapped."""

_PLACED: set[tuple[str, int, int]] = set()
"""The (file, offset, length) of every tensor ``place`` made in place in this process: an absolute location that a
model proto brings along by itself (one an API caller loaded without its external data) is not trusted as one."""

_Key = tuple[str, int, str, tuple[int, ...]]
_MAPS: weakref.WeakValueDictionary[_Key, np.memmap] = weakref.WeakValueDictionary()
"""The live map of each in-place tensor (file, offset, type, shape), so that a tensor read twice is mapped once."""


def placeable(tensor: onnx.TensorProto, length: int) -> bool:
    """Whether an external tensor of ``length`` bytes can stay in its file: large, and of a type mapped as is."""
    return length >= IN_PLACE_BYTES and tensor.data_type in _MAPPED


def place(tensor: onnx.TensorProto, file: Path, offset: int, length: int) -> None:
    """Make ``tensor`` an in-place tensor: ``length`` bytes at ``offset`` of ``file`` (already checked)."""
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", str(file.resolve())), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    _PLACED.add((str(file.resolve()), offset, length))


def is_in_place(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` is in place: external data at an absolute location that ``place`` wrote in this process
    (a model file's own locations are relative, ``modelio`` refuses absolute ones, and an absolute one that a proto
    brings along is not taken for one)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL or not os.path.isabs(location(tensor)):
        return False
    try:
        return _fields(tensor) in _PLACED
    except (KeyError, ValueError):
        return False


def in_place_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """The in-place initializers of ``model``'s main graph (the only ones ``modelio`` keeps in place)."""
    return (t for t in model.graph.initializer if is_in_place(t))


def in_place(model: onnx.ModelProto) -> bool:
    """Whether ``model`` has any in-place weight."""
    return any(True for _ in in_place_tensors(model))


def location(tensor: onnx.TensorProto) -> str:
    """Where an external tensor's data is (absolute for a tensor in place)."""
    return next((entry.value for entry in tensor.external_data if entry.key == "location"), "")


def relocate(tensor: onnx.TensorProto, new: str) -> None:
    """Point external ``tensor`` at ``new``, its offset and length kept."""
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = new


def _fields(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    fields = {entry.key: entry.value for entry in tensor.external_data}
    return fields["location"], int(fields.get("offset", "0")), int(fields["length"])


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of ``tensor``: a read-only map of its file when it is in place, else ``numpy_helper.to_array``."""
    if not is_in_place(tensor):
        return numpy_helper.to_array(tensor)
    location, offset, _ = _fields(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).newbyteorder("<")
    key = (location, offset, dtype.str, tuple(tensor.dims))
    array = _MAPS.get(key)
    if array is None:
        array = np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.dims))
        _MAPS[key] = array
    return array


def _source(array: object) -> _Key | None:
    """The in-place tensor whose live map ``array`` is (not a view of it, not a copy), else ``None``."""
    if not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap) or array.filename is None:
        return None
    key = (str(array.filename), int(array.offset), array.dtype.str, tuple(array.shape))
    return key if _MAPS.get(key) is array else None


class _InPlaceValues(gs.ir.tensor.LazyValues):  # type: ignore[misc]
    """A graphsurgeon constant's values in their file: loaded as the tensor's map, exported as the tensor itself."""

    def load(self) -> np.ndarray:
        return to_array(self.tensor)


def keep_in_place(graph: gs.Graph) -> None:
    """Before graphsurgeon exports ``graph``: each constant imported from an in-place tensor is exported in place
    when its values are still that tensor's map, and inline (its data location cleared, which graphsurgeon would
    otherwise copy onto the new values) when a pass gave it other values."""
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        values = tensor._values
        if isinstance(values, gs.ir.tensor.LazyValues):
            continue
        key = _source(values)
        if key is None:
            tensor.data_location = None
            continue
        location, offset, _, shape = key
        proto = onnx.TensorProto(name=tensor.name, data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype),
                                 dims=shape)
        place(proto, Path(location), offset, values.nbytes)
        tensor._values = _InPlaceValues(proto)


def import_in_place(graph: gs.Graph) -> gs.Graph:
    """``graph`` (just imported) with its in-place constants loading from their files."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and type(tensor._values) is gs.ir.tensor.LazyValues \
                and is_in_place(tensor._values.tensor):
            tensor._values = _InPlaceValues(tensor._values.tensor)
    return graph


def external_initializers(model: onnx.ModelProto) -> tuple[list[str], list[np.ndarray]]:
    """The names and maps of ``model``'s in-place weights, for ``SessionOptions.add_external_initializers``
    (onnxruntime then reads them in place; the caller keeps the maps alive as long as the session)."""
    tensors = list(in_place_tensors(model))
    return [t.name for t in tensors], [to_array(t) for t in tensors]


def copy_bytes(tensor: onnx.TensorProto, out: BinaryIO) -> int:
    """Append the bytes of in-place ``tensor`` to ``out`` in blocks (never all in memory); returns how many."""
    location, offset, length = _fields(tensor)
    with open(location, "rb") as source:
        source.seek(offset)
        remaining = length
        while remaining:
            block = source.read(min(remaining, 2**24))
            if not block:
                raise OSError(f"{location} ends before tensor '{tensor.name}' does")
            out.write(block)
            remaining -= len(block)
    return length

