"""OpenVINO (CPU plugin) runs graphopt's QDQ models: the digits CNN quantized by ``qdq-int8`` for OpenVINO and for
onnxruntime's CPU compiles, its outputs on the held-out samples stay within the default budget of onnxruntime's
(cosine ≥ 0.99, top-1 ≥ 0.99), its matrix layers run in int8 on x86, and ``graphopt validate``'s ``openvino``
check passes with the real package. The float model's OpenVINO outputs match onnxruntime's to float rounding.

``speed_check=note`` keeps the int8 model: on the tiny digits CNN int8 is not faster in onnxruntime, and the
pass's default would decline it (the optimised model would be the float one, testing nothing).
"""

from __future__ import annotations

import collections
import importlib.util
import platform
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES

import graphopt
from graphopt.data import Dataset, input_specs, load_data
from graphopt.runtime import Outputs, create_session, run_dataset
from graphopt.validation.environments import openvino_outputs
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

openvino = pytest.importorskip("openvino")

TARGETS = ("openvino", "ort-cpu")  # ort-cpu is the default target: 7-bit weights on CPUs without VNNI
X86 = platform.machine().lower() in {"x86_64", "amd64"}


def _benchmark_module() -> ModuleType:
    """``benchmarks/openvino_runtime.py`` by path (the benchmarks folder is not a package nor on ``sys.path``)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "openvino_runtime.py"
    spec = importlib.util.spec_from_file_location("openvino_runtime", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", name="digits")
def digits_fixture() -> tuple[onnx.ModelProto, Dataset, Dataset]:
    """The digits CNN, all 797 samples with labels, and the half ``optimize`` holds out (split 0.5, seed 0)."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model), EXAMPLES / "digits_labels.npy")
    return model, data, data.split(0.5)[1]


@pytest.fixture(scope="module", name="quantized", params=TARGETS)
def quantized_fixture(request: pytest.FixtureRequest, digits: tuple[onnx.ModelProto, Dataset, Dataset]
                      ) -> onnx.ModelProto:
    model, data, _ = digits
    result = graphopt.optimize(model, data, passes=f"qdq-int8{{target={request.param},speed_check=note}}")
    ops = collections.Counter(n.op_type for n in result.model.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"], ops
    return result.model


def _ort(model: onnx.ModelProto, data: Dataset) -> Outputs:
    outputs, _ = run_dataset(create_session(model), data)
    return outputs


def test_float_model_matches_onnxruntime(digits: tuple[onnx.ModelProto, Dataset, Dataset]) -> None:
    model, _, held_out = digits
    reference = _ort(model, held_out)
    got = openvino_outputs(model, held_out)  # no reference given: names and layout from the model and data
    assert got.keys() == reference.keys() and got["logits"].shape == reference["logits"].shape == (399, 10)
    stats = error_stats(reference["logits"], got["logits"])
    assert stats.max_abs < 1e-4 and stats.cosine > 0.999999 and stats.top1 == 1.0, stats


def test_qdq_model_runs_in_openvino_within_budget(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                                  quantized: onnx.ModelProto) -> None:
    model, _, held_out = digits
    got = openvino_outputs(quantized, held_out)
    for against, reference in (("onnxruntime int8", _ort(quantized, held_out)), ("original", _ort(model, held_out))):
        verification = Verifier.compare(reference, got, Tolerance.budget(), against)
        assert verification.passed, (against, verification.failures, verification.stats)


@pytest.mark.skipif(not X86, reason="OpenVINO's CPU plugin has int8 kernels on x86; elsewhere it may run float")
def test_openvino_runs_the_qdq_layers_in_int8(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                              quantized: onnx.ModelProto) -> None:
    """conv2 and fc1 carry QDQ pairs (conv1 and fc2 are below ``min_dim``): OpenVINO runs them in u8."""
    bench = _benchmark_module()
    model, _, held_out = digits
    assert bench.unavailable() is None
    assert bench.openvino_int8_layers(model) == (0, 4)
    int8, total = bench.openvino_int8_layers(quantized)
    assert total == 4 and int8 >= 2, bench.openvino_layer_precisions(quantized)
    kernels = bench.openvino_matrix_kernels(quantized, {"image": (1, 1, 8, 8)})  # static shapes: kernels chosen
    assert sum(kernels.values()) == 4 and not any(k.startswith("undef") for k in kernels), kernels
    compiled = bench.compile_openvino(quantized)  # LATENCY_CONFIG is what the CPU plugin applied
    assert (compiled.get_property("INFERENCE_NUM_THREADS"), compiled.get_property("NUM_STREAMS")) == (1, 1)
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    sample = next(held_out.batches(1))[0]
    latencies = bench.openvino_latency([model, quantized], sample, runs=5, warmup=2)
    assert len(latencies) == 2 and all(0 < ms < 1000 for ms in latencies)


def test_validate_openvino_check_passes(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                        quantized: onnx.ModelProto) -> None:
    model, data, _ = digits
    section = graphopt.validate(model, quantized, data, sections=("environments",)).report.sections[0]
    check = next(c for c in section.checks if c.name == "openvino")
    assert check.passed is True, check
    assert float(check.metrics["cosine"] or 0) >= 0.99 and float(check.metrics["top1"] or 0) >= 0.99
    assert "OpenVINO: installed" in section.notes[0]
    assert isinstance(check.metrics["drift_max_abs"], float) and np.isfinite(check.metrics["drift_max_abs"])
