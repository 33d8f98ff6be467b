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
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper

from graphopt._proto import model_size, save_model_file
from graphopt.errors import ModelIOError, OutputPathError, UnsupportedModelError, first_line
from graphopt.graph import default_opset
from graphopt.runtime import RuntimeConfig, create_session

__all__ = ["MIN_OPSET", "check_destination", "check_model", "load_model", "max_supported_opset", "save_bytes", "save_model"]

log = logging.getLogger(__name__)

MIN_OPSET = 7
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**24
"""Models larger than this (just under protobuf's 2 GiB limit) are saved with external data."""


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data; one-line ``ModelIOError`` for anything unreadable or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise ModelIOError(f"model not found: {path}")
    try:
        model = onnx.load_model(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelIOError(f"{path} is not a readable ONNX model ({type(e).__name__}: {first_line(e)})") from e
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise ModelIOError(f"{path} is not an ONNX model (no graph, opset or IR version)")
    _load_external_data(model, path.parent)
    _check_opset(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    root = folder.resolve()
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (folder / info.location).resolve()
        if Path(info.location).is_absolute() or not target.is_relative_to(root):
            raise ModelIOError(f"external data '{info.location}' of tensor '{tensor.name}' lies outside {folder}")
        if not target.is_file():
            raise ModelIOError(f"external data file '{info.location}' of tensor '{tensor.name}' is missing")
        end = (info.offset or 0) + (info.length or 0)
        if end > target.stat().st_size:
            raise ModelIOError(f"external data file '{info.location}' is shorter than tensor '{tensor.name}' needs")
    if tensors:
        try:
            external_data_helper.load_external_data_for_model(model, str(folder))
        except (OSError, ValueError) as e:
            raise ModelIOError(f"cannot read external data: {first_line(e)}") from e


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


def check_model(model: onnx.ModelProto, runtime: RuntimeConfig | None = None) -> None:
    """Raise ``ModelIOError`` unless ``model`` passes the full ONNX check and loads in onnxruntime."""
    if model_size(model) < EXTERNAL_DATA_THRESHOLD:
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ModelIOError(f"the model fails onnx.checker: {first_line(e)}") from e
        create_session(model, runtime)
        return
    with tempfile.TemporaryDirectory(prefix="graphopt-check-") as folder:
        path = Path(folder) / "model.onnx"
        _write(model, path)
        _check_file(path, runtime)


def _check_file(path: Path, runtime: RuntimeConfig | None) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelIOError(f"the model fails onnx.checker: {first_line(e)}") from e
    create_session(path, runtime)


def save_model(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    protect: tuple[str | Path, ...] = (),
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


def save_bytes(data: bytes, path: str | Path, *, protect: tuple[str | Path, ...] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    _refuse_protected(path, protect)
    folder = _writable_folder(path)
    with _staging_folder(folder) as staging:
        (staging / path.name).write_bytes(data)
        os.replace(staging / path.name, path)
    return path


def _write(model: onnx.ModelProto, path: Path) -> list[str]:
    """Serialise ``model`` (left untouched) to ``path``; returns the names of external data files written beside it."""
    return save_model_file(model, path, external=model_size(model) >= EXTERNAL_DATA_THRESHOLD)


def check_destination(path: str | Path, *, protect: tuple[str | Path, ...] = ()) -> Path:
    """Fail early, before any work, if ``path`` could not be written by ``save_model``/``save_bytes``."""
    path = Path(path)
    _refuse_protected(path, protect)
    with _staging_folder(_writable_folder(path)):
        pass
    return path


def _refuse_protected(path: Path, protect: tuple[str | Path, ...]) -> None:
    target = path.resolve()
    for other in protect:
        if target == Path(other).resolve():
            raise OutputPathError(f"refusing to overwrite the input model {other}; choose another output path")


def _writable_folder(path: Path) -> Path:
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

