from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.activations import reduce_activations, stream_activations
from graphopt.data import input_specs, load_data


def test_streams_intermediate_tensors_per_batch(mlp_files: tuple[Path, Path]) -> None:
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))
    batches = list(stream_activations(model, ["h", "r"], data))
    assert [b["h"].shape for b in batches] == [(64, 16)]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    expected = data.arrays["x"] @ weights["w1"] + weights["b1"]
    np.testing.assert_allclose(batches[0]["h"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batches[0]["r"], np.maximum(batches[0]["h"], 0))
    assert len(model.graph.output) == 1 and model.graph.output[0].name == "logits"


def test_reducing_nothing_runs_nothing(mlp_files: tuple[Path, Path]) -> None:
    """A pass with no tensor to calibrate (a model without weights) must not fail calibration: onnxruntime refuses
    a run that requests no output, which weight-clustering reported as "calibration failed" on every such model."""
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))
    assert reduce_activations(model, {}, data) == ""
