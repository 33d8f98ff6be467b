"""What an optimised model records about how it was made, so ``graphopt validate`` can tell held-out samples from
calibration samples and re-run the pipeline on folds. Stored as ``metadata_props`` entries (plain strings)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx

from graphopt.columns import chunks
from graphopt.data import Dataset

__all__ = ["Provenance", "data_digest", "read_provenance", "stamp_provenance"]

_PREFIX = "graphopt."


@dataclass(frozen=True)
class Provenance:
    """The pipeline string that made the model, the digest of its data and the share given to calibration."""

    pipeline: str
    data_digest: str
    calibration_fraction: float
    split_seed: int = 0


def data_digest(dataset: Dataset) -> str:
    """A SHA-256 over the input arrays (names, dtypes, shapes, bytes): same samples, same digest."""
    digest = hashlib.sha256()
    for name in sorted(dataset.arrays):
        array = dataset.arrays[name]
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        for part in chunks(array):
            digest.update(part.tobytes())
    return digest.hexdigest()


def stamp_provenance(model: onnx.ModelProto, provenance: Provenance) -> None:
    """Record ``provenance`` in ``model`` (in place), replacing an earlier graphopt record."""
    kept = {p.key: p.value for p in model.metadata_props if not p.key.startswith(_PREFIX)}
    onnx.helper.set_model_props(model, {
        **kept,
        f"{_PREFIX}pipeline": provenance.pipeline,
        f"{_PREFIX}data_digest": provenance.data_digest,
        f"{_PREFIX}calibration_fraction": repr(provenance.calibration_fraction),
        f"{_PREFIX}split_seed": str(provenance.split_seed),
    })


def read_provenance(model: onnx.ModelProto) -> Provenance | None:
    """The record ``stamp_provenance`` wrote, or ``None`` when the model has none (or a damaged one)."""
    props = {p.key[len(_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(_PREFIX)}
    try:
        return Provenance(props["pipeline"], props["data_digest"], float(props["calibration_fraction"]),
                          int(props.get("split_seed", "0")))
    except (KeyError, ValueError):
        return None
