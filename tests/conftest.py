"""Shared fixtures: small seeded models and data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import mlp


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def mlp_model() -> onnx.ModelProto:
    return mlp()


@pytest.fixture
def mlp_files(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """The MLP saved as a file, and 64 samples of data for it."""
    model_path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model_path)
    data_path = tmp_path / "mlp.npz"
    np.savez(data_path, x=rng.standard_normal((64, 8)).astype(np.float32))
    return model_path, data_path
