"""Model I/O: read untrusted model files safely, write outputs atomically and only once they are proven loadable.

Reading refuses external data whose location escapes the model's folder. Writing goes to a temporary folder beside
the destination, passes ``onnx.checker`` (full check) and an onnxruntime load there, and is then moved into place,
so a failed run never leaves a partial or invalid file and never touches the input model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import helper

from graphopt import weights
from graphopt._proto import model_size, raw_bytes, save_model_file
from graphopt.errors import ModelIOError, OutputPathError, UnsupportedModelError, first_line
from graphopt.graph import default_opset, subgraphs
from graphopt.runtime import RuntimeConfig, create_session

__all__ = [
    "LOGGERS",
    "MIN_OPSET",
    "LoadedModel",
    "NamedPath",
    "check_destination",
    "check_destinations",
    "check_model",
    "load_model",
    "logging_to",
    "max_supported_opset",
    "model_files",
    "model_sidecar",
    "read_model",
    "same_file",
    "save_bytes",
    "save_model",
]

log = logging.getLogger(__name__)

MIN_OPSET = 7
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**24
"""Models larger than this (just under protobuf's 2 GiB limit) are saved with external data."""


@dataclass(frozen=True)
class LoadedModel:
    """A model read from disk and every file it was read from (the ``.onnx`` and its external data files)."""

    model: onnx.ModelProto
    files: tuple[Path, ...]


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data; one-line ``ModelIOError`` for anything unreadable or unsafe."""
    return read_model(path).model


def read_model(path: str | Path) -> LoadedModel:
    """``load_model``, also naming the files read, so that no output is ever written over one of them."""
    path = Path(path)
    model = _model_proto(path)
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise ModelIOError(f"{path} is not an ONNX model (no graph, opset or IR version)")
    data_files = _load_external_data(model, path.parent)
    _check_opset(model, path)
    return LoadedModel(model, (path, *data_files))


def model_files(path: str | Path) -> tuple[Path, ...]:
    """The files ``read_model`` would read for ``path``, in the same order (the model, then its external data),
    each reference checked as it checks them, without reading the weights."""
    path = Path(path)
    model = _model_proto(path)
    root = path.parent.resolve()
    files = {_external_file(_external_fields(t)[0], t.name, path.parent, root): None for t in _all_tensors(model)
             if t.data_location == onnx.TensorProto.EXTERNAL}
    return (path, *files)


def _model_proto(path: Path) -> onnx.ModelProto:
    """The model at ``path`` without its external data; ``ModelIOError`` when it is not a regular, readable file."""
    if not _is_regular_file(path):
        raise ModelIOError(f"model not found: {path}" if not path.exists() else f"{path} is not a regular file")
    try:
        model = onnx.load_model(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelIOError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)})") from e
    return model


def _is_regular_file(path: Path) -> bool:
    """A regular file (after symlinks): FIFOs and devices are refused, since reading one can block for ever."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except (OSError, ValueError):  # missing, a name too long, an embedded NUL
        return False


_MAX_LOCATION = 1024
"""The longest external-data location accepted (Linux allows 4096-byte paths; real exports use short names)."""


def _load_external_data(model: onnx.ModelProto, folder: Path) -> tuple[Path, ...]:
    """Check every tensor's external data reference (initializers, sparse initializers, attributes, subgraphs) to
    files in ``folder``, refusing each unsafe or malformed one with one line; keep large main-graph weights in their
    files (``weights.place``: copies of the model then cost nothing, and a model of gigabytes is not held in memory)
    and read the others. Returns the files referred to."""
    root = folder.resolve()
    files: dict[Path, None] = {}
    main = [(t, True) for t in model.graph.initializer]
    for tensor, main_graph in (*main, *((t, False) for t in _all_tensors(model, main_initializers=False))):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_fields(tensor)
        target = _external_file(location, tensor.name, folder, root)
        size = target.stat().st_size
        if offset > size or (length is not None and offset + length > size):
            raise ModelIOError(f"external data file '{location}' is shorter than tensor '{tensor.name}' needs")
        length = size - offset if length is None else length
        expected = raw_bytes(tensor)
        if expected is not None and expected != length:
            raise ModelIOError(f"tensor '{tensor.name}' takes {length} bytes of external data, but its dims and "
                               f"type need {expected}")
        files[target] = None
        if main_graph and weights.placeable(tensor, length):
            weights.place(tensor, target, offset, length)
            continue
        try:
            with open(target, "rb") as handle:
                handle.seek(offset)
                tensor.raw_data = handle.read(length)
        except OSError as e:
            raise ModelIOError(f"cannot read external data '{location}': {e.strerror or first_line(e)}") from e
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return tuple(files)


def _external_fields(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """``location``, ``offset`` and ``length`` of an external tensor, each checked before it is used."""
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location", "")
    if not location or "\0" in location or len(location) > _MAX_LOCATION:
        shown = location[:40].replace("\0", "\\0") + ("…" if len(location) > 40 else "")
        raise ModelIOError(f"tensor '{tensor.name[:80]}' names an invalid external data location '{shown}'")
    numbers: list[int | None] = []
    for key in ("offset", "length"):
        value = fields.get(key)
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise ModelIOError(f"tensor '{tensor.name[:80]}': external data {key} '{value[:40]}' is not a "
                               "non-negative integer")
        numbers.append(int(value) if value is not None else None)
    return location, numbers[0] or 0, numbers[1]


def _external_file(location: str, tensor: str, folder: Path, root: Path) -> Path:
    """The file ``location`` names, refused unless it is a regular file inside ``folder`` with no other links."""
    try:
        target = (folder / location).resolve()
        outside = Path(location).is_absolute() or not target.is_relative_to(root)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise ModelIOError(f"external data location '{location[:80]}' of tensor '{tensor[:80]}' cannot be resolved: "
                           f"{first_line(e)}") from e
    if outside:
        raise ModelIOError(f"external data '{location[:80]}' of tensor '{tensor[:80]}' lies outside {folder}")
    if not target.exists():
        raise ModelIOError(f"external data file '{location[:80]}' of tensor '{tensor[:80]}' is missing")
    if not _is_regular_file(target):
        raise ModelIOError(f"external data '{location[:80]}' of tensor '{tensor[:80]}' is not a regular file")
    if target.stat().st_nlink > 1:
        raise ModelIOError(f"external data file '{location[:80]}' has other hard links, so it may live outside "
                           f"{folder}; copy it into the model's folder")
    return target


def _all_tensors(model: onnx.ModelProto, *, main_initializers: bool = True) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that can hold external data, subgraphs and functions included (the main graph's
    initializers only when ``main_initializers``)."""
    nodes = [n for f in model.functions for n in f.node]
    for depth, graph in enumerate(subgraphs(model.graph)):  # the main graph first
        if main_initializers or depth:
            yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        nodes.extend(graph.node)
    for attribute in (a for n in nodes for a in n.attribute):
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
        for sparse in (*sparse_tensors, *attribute.sparse_tensors):
            yield from (sparse.values, sparse.indices)


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    opset = default_opset(model)
    if opset == 0:
        return
    highest = max_supported_opset()
    if opset < MIN_OPSET or opset > highest:
        raise UnsupportedModelError(
            f"{path} uses opset {opset}; graphopt supports opsets {MIN_OPSET} to {highest} (this onnxruntime's newest)"
        )


@lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """The newest default-domain opset both onnx and the installed onnxruntime accept, found by probing."""
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        node = helper.make_node("Identity", ["x"], ["y"])
        value = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        probe = helper.make_model(
            helper.make_graph([node], "probe", [value], [out]), opset_imports=[helper.make_opsetid("", opset)]
        )
        probe.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
        try:
            create_session(probe)
            return opset
        except ModelIOError:
            continue
    return MIN_OPSET


def check_model(model: onnx.ModelProto, runtime: RuntimeConfig | None = None) -> ort.InferenceSession:
    """Raise ``ModelIOError`` unless ``model`` passes the full ONNX check and loads in onnxruntime; the session it
    loaded in, to run the model without loading it again."""
    if weights.in_place(model):  # checked as a file whose weights are holes of their size; run on the weights
        with tempfile.TemporaryDirectory(prefix="graphopt-check-") as folder:
            path = Path(folder) / "model.onnx"
            save_model_file(model, path, external=True, holes=True)
            _checker(path)
        return create_session(model, runtime)
    if model_size(model) < EXTERNAL_DATA_THRESHOLD:
        _checker(model)
        return create_session(model, runtime)
    with tempfile.TemporaryDirectory(prefix="graphopt-check-") as folder:
        path = Path(folder) / "model.onnx"
        _write(model, path)
        return _check_file(path, runtime)


def _checker(model: onnx.ModelProto | Path) -> None:
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelIOError(f"the model fails onnx.checker: {first_line(e)}") from e


def _check_file(path: Path, runtime: RuntimeConfig | None) -> ort.InferenceSession:
    _checker(path)
    return create_session(path, runtime)


def save_model(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    protect: Sequence[str | Path] = (),
    runtime: RuntimeConfig | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically, after it passes ``onnx.checker`` and loads in onnxruntime.

    Models over the protobuf limit get their weights in ``<name>.data`` beside the file. ``protect`` lists paths
    that must never be written (the input model); writing to one raises ``OutputPathError``.
    """
    path = Path(path)
    _refuse_protected(path, protect)
    folder = _writable_folder(path)
    with _staging_folder(folder) as staging:
        staged = staging / path.name
        data_files = _write(model, staged)
        _check_file(staged, runtime)
        for name in data_files:
            _refuse_protected(folder / name, protect)
            os.replace(staging / name, folder / name)
        os.replace(staged, path)
    log.info("wrote %s", path)
    return path


def save_bytes(data: bytes, path: str | Path, *, protect: Sequence[str | Path] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    _refuse_protected(path, protect)
    folder = _writable_folder(path)
    with _staging_folder(folder) as staging:
        (staging / path.name).write_bytes(data)
        os.replace(staging / path.name, path)
    return path


LOGGERS = ("graphopt", "graphopt_passes")
"""The loggers ``logging_to`` captures: graphopt's modules and the bundled passes."""


@contextlib.contextmanager
def logging_to(path: str | Path, level: int = logging.INFO, *, protect: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Send graphopt's log records at ``level`` and above to ``path`` while the block runs, and only there.

    The log is written to a staging file beside ``path`` and moved into place when the block ends, however it ends
    (an error is when a log matters most): an existing file is replaced whole, never appended to nor left half
    written. ``protect`` as for ``save_model``.
    """
    path = Path(path)
    _refuse_protected(path, protect)
    folder = _writable_folder(path)
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    with _staging_folder(folder) as staging:
        staged = staging / path.name
        handler = logging.FileHandler(staged, encoding="utf-8")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False
        try:
            yield path
        finally:
            for logger, (old_level, propagate) in zip(loggers, saved, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(old_level)
                logger.propagate = propagate
            handler.close()
            os.replace(staged, path)


def _write(model: onnx.ModelProto, path: Path) -> list[str]:
    """Serialise ``model`` (left untouched) to ``path``; returns the names of external data files written beside it
    (a model over the protobuf limit, or one with weights in place, has one)."""
    return save_model_file(model, path, external=model_size(model) >= EXTERNAL_DATA_THRESHOLD)


def check_destination(path: str | Path, *, protect: Sequence[str | Path] = ()) -> Path:
    """Fail early, before any work, if ``path`` could not be written by ``save_model``/``save_bytes``."""
    path = Path(path)
    _refuse_protected(path, protect)
    with _staging_folder(_writable_folder(path)):
        pass
    return path


NamedPath = tuple[str, Path]
"""What a file is to the run ("the report", "a data file") and where it is."""


def check_destinations(outputs: Sequence[NamedPath], inputs: Sequence[NamedPath]) -> None:
    """Fail before any work unless every output can be written and none is an input or another output.

    Files are compared by what they are, not by how they are named: the same path, a symlink to it, or a hard
    link (same device and inode) all collide. Raises ``OutputPathError`` naming both sides.
    """
    for index, (label, path) in enumerate(outputs):
        for other_label, other in (*inputs, *outputs[:index]):
            if same_file(path, other):
                raise OutputPathError(f"refusing to write {label} to {path}: it is {other_label} ({other}); "
                                      "choose another path")
        check_destination(path)


def model_sidecar(path: str | Path) -> Path:
    """The external-data file ``save_model`` writes beside ``path`` for a model over the protobuf limit."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or the same inode (a hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11's resolve)
        return False


def _refuse_protected(path: Path, protect: Sequence[str | Path]) -> None:
    for other in protect:
        if same_file(path, Path(other)):
            raise OutputPathError(f"refusing to write {path}: it is the same file as {other}, an input or another "
                                  "output of this run; choose another path")


def _writable_folder(path: Path) -> Path:
    if "\0" in str(path):
        raise OutputPathError(f"output path {str(path)!r} holds a NUL character")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"output folder does not exist: {folder}")
    if path.is_dir():
        raise OutputPathError(f"output path is a folder: {path}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder is not writable: {folder}")
    return folder


@contextlib.contextmanager
def _staging_folder(folder: Path) -> Iterator[Path]:
    try:
        staging = Path(tempfile.mkdtemp(prefix=".graphopt-", dir=folder))
    except OSError as e:
        raise OutputPathError(f"cannot write to {folder}: {e.strerror}") from e
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)

