"""What an optimised model records about how it was made, so ``graphopt validate`` can tell held-out samples from
calibration samples and re-run the pipeline on folds. Stored as ``metadata_props`` entries (plain strings)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from graphopt.columns import chunks
from graphopt.data import Dataset

__all__ = ["Provenance", "data_digest", "files_digest", "read_provenance", "stamp_provenance"]

_PREFIX = "graphopt."


@dataclass(frozen=True)
class Provenance:
    """The pipeline string that made the model, the digest of its data and the share given to calibration; the
    digest of the input model's files and what the run was asked (``request``: passes or goal, budget, output kinds),
    by which ``graphopt fleet`` knows an output is up to date ("" in models stamped before they were recorded)."""

    pipeline: str
    data_digest: str
    calibration_fraction: float
    split_seed: int = 0
    input_digest: str = ""
    request: str = ""


def data_digest(dataset: Dataset) -> str:
    """A SHA-256 over the input arrays (names, dtypes, shapes, bytes): same samples, same digest."""
    digest = hashlib.sha256()
    for name in sorted(dataset.arrays):
        array = dataset.arrays[name]
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        for part in chunks(array):
            digest.update(part.tobytes())
    return digest.hexdigest()


def files_digest(paths: Sequence[Path]) -> str:
    """A SHA-256 over the bytes of ``paths`` in order (a model file and its external data), read in 16 MB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


_BLOCK = 1 << 24


def stamp_provenance(model: onnx.ModelProto, provenance: Provenance) -> None:
    """Record ``provenance`` in ``model`` (in place), replacing an earlier graphopt record."""
    kept = {p.key: p.value for p in model.metadata_props if not p.key.startswith(_PREFIX)}
    onnx.helper.set_model_props(model, {
        **kept,
        f"{_PREFIX}pipeline": provenance.pipeline,
        f"{_PREFIX}data_digest": provenance.data_digest,
        f"{_PREFIX}calibration_fraction": repr(provenance.calibration_fraction),
        f"{_PREFIX}split_seed": str(provenance.split_seed),
        **({f"{_PREFIX}input_digest": provenance.input_digest} if provenance.input_digest else {}),
        **({f"{_PREFIX}request": provenance.request} if provenance.request else {}),
    })


def read_provenance(model: onnx.ModelProto) -> Provenance | None:
    """The record ``stamp_provenance`` wrote, or ``None`` when the model has none (or a damaged one)."""
    props = {p.key[len(_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(_PREFIX)}
    try:
        return Provenance(props["pipeline"], props["data_digest"], float(props["calibration_fraction"]),
                          int(props.get("split_seed", "0")), props.get("input_digest", ""), props.get("request", ""))
    except (KeyError, ValueError):
        return None
