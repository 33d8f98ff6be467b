from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import digits
from onnx import numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

import graphopt
from graphopt import activations
from graphopt.activations import reduce_activations, stream_activations
from graphopt.data import input_specs, load_data
from graphopt.errors import CalibrationError, PreconditionError
from graphopt.outcome import Status
from graphopt.runtime import RuntimeConfig


def test_streams_intermediate_tensors_per_batch(mlp_files: tuple[Path, Path]) -> None:
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))
    batches = list(stream_activations(model, ["h", "r"], data, RuntimeConfig(batch_size=64)))
    assert [b["h"].shape for b in batches] == [(1, 16), (63, 16)], "the first sample alone measures the bytes"
    h = np.concatenate([b["h"] for b in batches])
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    expected = data.to_arrays()["x"] @ weights["w1"] + weights["b1"]
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["r"] for b in batches]), np.maximum(h, 0))
    assert len(model.graph.output) == 1 and model.graph.output[0].name == "logits"


def test_batches_are_bounded_by_the_bytes_of_their_tapped_tensors(mlp_files: tuple[Path, Path]) -> None:
    """Memory must not grow with what a sample's activations take: two float32 tensors of 16 values are 128 bytes
    a sample, so a budget of 1,280 bytes runs 10 samples at a time, whatever the batch size allows."""
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))
    sizes = [len(b["h"]) for b in stream_activations(model, ["h", "r"], data, RuntimeConfig(batch_size=64),
                                                      max_batch_bytes=1280)]
    assert sizes == [1, *[10] * 6, 3] and sum(sizes) == data.n_samples


def test_reducing_nothing_runs_nothing(mlp_files: tuple[Path, Path]) -> None:
    """A pass with no tensor to calibrate (a model without weights) must not fail calibration: onnxruntime refuses
    a run that requests no output, which weight-clustering reported as "calibration failed" on every such model."""
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))
    reduce_activations(model, {}, data)  # would raise: a run of no outputs is an onnxruntime error


def _onnxruntime_refuses(model: object, config: object) -> None:
    raise Fail("[ONNXRuntimeError] : 1 : FAIL : no kernel for this tapped tensor")


def test_a_run_onnxruntime_refuses_is_a_calibration_error_and_a_reducer_bug_is_not(
        mlp_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's errors share no base class but ``Exception``: they become one typed ``CalibrationError`` (a
    precondition, so the pass is skipped with its one line); what a reducer raises is the pass's own bug and stays
    what it is, so that the manager reports the pass as failed."""
    model = onnx.load(mlp_files[0])
    data = load_data(mlp_files[1], input_specs(model))

    def bug(x: np.ndarray) -> None:
        raise ZeroDivisionError("reducer bug")

    with pytest.raises(ZeroDivisionError, match="reducer bug"):
        reduce_activations(model, {"h": bug}, data)
    monkeypatch.setattr(activations, "create_session", _onnxruntime_refuses)
    with pytest.raises(CalibrationError, match=r"^low-rank calibration failed: Fail: \[ONNXRuntimeError\]") as caught:
        reduce_activations(model, {"h": lambda x: None}, data, label="low-rank calibration")
    assert isinstance(caught.value, PreconditionError)


@pytest.mark.parametrize("name", ["low-rank", "weight-pruning", "int4-weights", "neuron-pruning"])
def test_a_pass_whose_calibration_onnxruntime_refuses_is_skipped_with_the_reason(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activations, "create_session", _onnxruntime_refuses)
    model, data = digits(120)
    (outcome,) = graphopt.optimize(model, data, passes=name, normalize=False).pipeline.outcomes
    assert outcome.status is Status.SKIPPED and "calibration failed: Fail: [ONNXRuntimeError]" in outcome.reason


def test_weight_clustering_goes_on_without_the_data_it_could_not_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activations, "create_session", _onnxruntime_refuses)
    model, data = digits(120)
    (outcome,) = graphopt.optimize(model, data, passes="weight-clustering", normalize=False).pipeline.outcomes
    assert outcome.status in (Status.APPLIED, Status.NARROWED)
    assert any("clustered without calibration data" in s.reason for s in outcome.result.skipped)
