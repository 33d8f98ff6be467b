"""Model sizes beyond protobuf's 2 GiB limit, and saving such models without touching them.

The upb protobuf runtime computes ``ByteSize()`` by serialising, so on a model over 2 GiB (weights loaded from
external data) it raises ``EncodeError`` instead of returning the size, after seconds of work. ``model_size`` adds
the parts up instead, and never reads a large tensor's ``raw_data`` (each read copies it): its length follows from
the tensor's dims and type. ``save_model_file`` saves with external data when a model needs it, on a copy: onnx's own
``save_model(..., save_as_external_data=True)`` moves the weights out of the proto it is handed, leaving the caller's
model pointing at a file that is about to be deleted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError, Message

from graphopt import weights

__all__ = ["PROTOBUF_LIMIT", "fits_protobuf", "model_size", "raw_bytes", "save_model_file", "serialised_size",
           "weight_bytes"]

PROTOBUF_LIMIT = 2**31 - 1
"""The largest message protobuf serialises."""

_LARGE = 2**20
"""Tensors with more raw bytes than this are sized from their dims, not by reading ``raw_data``."""

_SAFE = 2**30
"""Models whose initializers hold fewer bytes than this are sized by ``ByteSize()`` directly."""

_ALIGNMENT = 4096
"""External tensors start at multiples of this (onnxruntime can map them in place)."""

_INLINE = 1024
"""Tensors of fewer raw bytes than this stay inside the model when it is saved with external data, as onnx's own
``save_model`` keeps them: shape inference reads small constants (a ``Split``'s sizes, a ``Reshape``'s shape) only
from the model, and onnxruntime refuses to load a model whose such constant is external."""

_BITS: dict[int, int] = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4}


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main-graph initializers' values, from their dims and types (cheap: no data is read)."""
    return sum(raw_bytes(t) or 0 for t in model.graph.initializer)


def model_size(model: onnx.ModelProto) -> int:
    """The size of ``model`` in bytes as saved, its weights kept in place (``graphopt.weights``) counted at their
    size, also beyond protobuf's 2 GiB limit."""
    return serialised_size(model) + sum(raw_bytes(t) or 0 for t in weights.in_place_tensors(model))


def serialised_size(model: onnx.ModelProto) -> int:
    """The bytes of ``model``'s serialisation as it is (a weight in place is a reference), beyond 2 GiB too."""
    if weight_bytes(model) < _SAFE:
        try:
            return model.ByteSize()
        except EncodeError:
            pass
    return _size(model)


def fits_protobuf(model: onnx.ModelProto, limit: int = PROTOBUF_LIMIT) -> bool:
    """Whether ``model`` serialises in one piece (its serialised size is below ``limit``)."""
    return serialised_size(model) < limit


def save_model_file(model: onnx.ModelProto, path: Path, *, external: bool | None = None,
                    location: str | None = None, holes: bool = False, refer: bool = False,
                    inline_below: int = _INLINE) -> list[str]:
    """Write ``model`` to ``path``, the raw data of its main-graph initializers (of ``inline_below`` bytes or more,
    default 1 KiB) in one external data file ``location`` (default ``<name>.data``) beside it when ``external``
    (default: when the model does not fit protobuf) or when it has weights in place (``graphopt.weights``: streamed
    from their files); ``model`` is left untouched and never copied whole. With ``holes``, the weights in place are
    holes of their size (a sparse file: for ``onnx.checker``, which reads no values); with ``refer``, they stay in
    their files, named relative to ``path``'s folder (a session's temporary model written beside them). Returns the
    names of the data files written."""
    if not (external if external is not None else not fits_protobuf(model)) and not weights.in_place(model):
        onnx.save_model(model, path)
        return []
    location = location or f"{path.name}.data"
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip="graph")
    _copy_fields(model.graph, shell.graph, skip="initializer")
    with open(path.parent / location, "wb") as data:
        for tensor in model.graph.initializer:
            stored = shell.graph.initializer.add()
            placed = weights.is_in_place(tensor)
            if placed and refer:
                stored.CopyFrom(tensor)
                weights.relocate(stored, os.path.relpath(weights.location(tensor), path.parent))
                continue
            if not placed and (not tensor.HasField("raw_data") or (raw_bytes(tensor) or 0) < inline_below):
                stored.CopyFrom(tensor)
                continue
            _copy_fields(tensor, stored, skip="external_data" if placed else "raw_data")
            data.write(b"\0" * (-data.tell() % _ALIGNMENT))
            offset = data.tell()
            if not placed:
                data.write(tensor.raw_data)
            elif holes:
                data.seek(raw_bytes(tensor) or 0, 1)
                data.truncate()
            else:
                weights.copy_bytes(tensor, data)
            stored.data_location = onnx.TensorProto.EXTERNAL
            del stored.external_data[:]
            for key, value in (("location", location), ("offset", offset), ("length", data.tell() - offset)):
                stored.external_data.add(key=key, value=str(value))
    onnx.save_model(shell, path)
    return [location]


def _copy_fields(source: Message, target: Message, skip: str) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target`` (the skipped one may exceed 2 GiB)."""
    for field in source.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        value = getattr(source, field.name)
        if _is_repeated(field):
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            if source.HasField(field.name):
                getattr(target, field.name).CopyFrom(value)
        elif source.HasField(field.name):
            setattr(target, field.name, value)


def _size(message: Message) -> int:
    if isinstance(message, onnx.TensorProto):
        raw = raw_bytes(message) if message.HasField("raw_data") else 0
        if raw is not None and raw > _LARGE:
            return _fields_size(message, skip="raw_data") + _field_size(message, "raw_data", raw)
    if not isinstance(message, (onnx.ModelProto, onnx.GraphProto)):
        try:
            return message.ByteSize()
        except EncodeError:
            pass
    return _fields_size(message)


def _fields_size(message: Message, skip: str = "") -> int:
    """Nested messages by ``_size``; every other set field by ``ByteSize()`` of a copy holding only those."""
    shell = type(message)()
    total = 0
    for field in message.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        repeated = _is_repeated(field)
        if field.message_type is not None:
            items = list(getattr(message, field.name)) if repeated else (
                [getattr(message, field.name)] if message.HasField(field.name) else [])
            total += sum(_field_size(message, field.name, _size(item)) for item in items)
        elif repeated:
            getattr(shell, field.name).extend(getattr(message, field.name))
        elif message.HasField(field.name):
            setattr(shell, field.name, getattr(message, field.name))
    return total + shell.ByteSize()


def _field_size(message: Message, name: str, size: int) -> int:
    """Bytes of a length-delimited field ``name`` holding ``size`` bytes: tag, length, payload."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    return _varint_size(number << 3) + _varint_size(size) + size


def raw_bytes(tensor: onnx.TensorProto) -> int | None:
    """How many bytes the tensor's values take as ``raw_data``, from dims and type (``None``: variable width)."""
    if tensor.data_type in _BITS:
        return (math.prod(tensor.dims) * _BITS[tensor.data_type] + 7) // 8
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    return math.prod(tensor.dims) * itemsize


def _is_repeated(field: object) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 5.28+; ``label`` is gone in 7
    return bool(flag) if flag is not None else field.label == 3  # type: ignore[attr-defined]  # LABEL_REPEATED


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)
