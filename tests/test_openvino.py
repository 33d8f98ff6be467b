"""OpenVINO (CPU plugin) runs graphopt's QDQ models: the digits CNN quantized by ``qdq-int8`` for OpenVINO and for
onnxruntime's CPU compiles, its outputs on the held-out samples stay within the default budget of onnxruntime's
(cosine ≥ 0.99, top-1 ≥ 0.99), its matrix layers run in int8 on x86, and ``graphopt validate``'s ``openvino``
check passes with the real package. The float model's OpenVINO outputs match onnxruntime's to float rounding with
f32 pinned, and stay within budget at OpenVINO's default precision, which depends on the CPU: bf16 on CPUs with
AVX-512 BF16 (the AVX-512 CI machine), f32 elsewhere (the AVX2 one). These tests run on either and check that the
precision read back from the compiled model is the one this CPU's flags call for; the reporting logic for the other
kind of CPU is tested with forced flags in ``tests/test_machine_features.py``.

``speed_check=note`` keeps the int8 model: on the tiny digits CNN int8 is not always faster, and the pass's default
would decline it (the optimised model would be the float one, testing nothing). The default speed check for
``target=openvino`` times int8 against float in OpenVINO (``graphopt.openvino.measure_latency``) and declines an
int8 model that is not faster there; the tests replace that timing with fixed latencies and never assert on real
ones. Without OpenVINO the pass keeps the int8 model and notes that its speed was not checked.
"""

from __future__ import annotations

import collections
import importlib.util
import platform
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, detector, random_feeds

import graphopt
import graphopt.openvino
from graphopt.data import Dataset, input_specs, load_data
from graphopt.machine import cpu_flags
from graphopt.openvino import F32_CONFIG, inference_precision
from graphopt.perf import Latency
from graphopt.report.model import PassRecord
from graphopt.runtime import Outputs, create_session, run_dataset
from graphopt.validation.environments import OPENVINO, OPENVINO_F32, openvino_outputs, openvino_run
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

openvino = pytest.importorskip("openvino")

TARGETS = ("openvino", "ort-cpu")  # ort-cpu is the default target: 7-bit weights on CPUs without VNNI
X86 = platform.machine().lower() in {"x86_64", "amd64"}
DEFAULT_PRECISION = "bf16" if "avx512_bf16" in cpu_flags() else "f32"
"""OpenVINO's CPU plugin by default on x86: bf16 where the CPU has native bf16 (AVX-512 BF16), else f32."""
BF16_HINT_HONOURED = bool(cpu_flags() & {"avx512bw", "avx_ne_convert"})
"""Whether an explicit bf16 hint gives bf16 (native, or emulated on AVX-512); elsewhere it silently stays f32."""


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
    """With f32 pinned, on any CPU: OpenVINO's float kernels agree with onnxruntime's to float rounding."""
    model, _, held_out = digits
    reference = _ort(model, held_out)
    run = openvino_run(model, held_out, config=F32_CONFIG)  # no reference given: names and layout from model and data
    got = run.outputs
    assert run.precision == "f32" and got.keys() == reference.keys()
    logits, expected = got["logits"], reference["logits"]
    assert isinstance(logits, np.ndarray) and isinstance(expected, np.ndarray)
    assert logits.shape == expected.shape == (399, 10)
    stats = error_stats(reference["logits"], got["logits"])
    assert stats.max_abs < 1e-4 and stats.cosine > 0.999999 and stats.top1 == 1.0, stats


def test_float_model_at_openvinos_default_precision_is_within_budget(
        digits: tuple[onnx.ModelProto, Dataset, Dataset]) -> None:
    """What a user gets: OpenVINO's defaults, bf16 or f32 by the CPU. Within budget either way; to float rounding
    when f32."""
    model, _, held_out = digits
    reference = _ort(model, held_out)
    run = openvino_run(model, held_out, reference)
    if X86:
        assert run.precision == DEFAULT_PRECISION, (run.precision, sorted(cpu_flags()))
    verification = Verifier.compare(reference, run.outputs, Tolerance.budget(), "onnxruntime")
    assert verification.passed, (run.precision, verification.failures)
    stats = error_stats(reference["logits"], run.outputs["logits"])
    if run.precision == "f32":
        assert stats.max_abs < 1e-4 and stats.cosine > 0.999999, stats
    assert openvino_outputs(model, held_out, reference).keys() == {"logits"}  # the same run, outputs only


@pytest.mark.skipif(not X86, reason="OpenVINO's bf16 rules are x86's")
def test_a_bf16_hint_stays_f32_on_a_cpu_without_bf16(digits: tuple[onnx.ModelProto, Dataset, Dataset]) -> None:
    """On the AVX2 machine OpenVINO accepts ``INFERENCE_PRECISION_HINT: bf16`` without an error and runs f32: the
    compiled model says f32 and so does every layer. On an AVX-512 CPU the hint gives bf16."""
    model, _, _ = digits
    compiled = graphopt.openvino.compile_cpu(model, {"INFERENCE_PRECISION_HINT": "bf16"})
    assert inference_precision(compiled) == ("bf16" if BF16_HINT_HONOURED else "f32")
    bench = _benchmark_module()
    precisions = {precision for (_, precision) in bench.openvino_layer_precisions(compiled)}
    if not BF16_HINT_HONOURED:
        assert "bf16" not in precisions and "f32" in precisions, precisions


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
    assert graphopt.openvino.unavailable() is None
    assert bench.openvino_int8_layers(model) == (0, 4)
    int8, total = bench.openvino_int8_layers(quantized)
    assert total == 4 and int8 >= 2, bench.openvino_layer_precisions(quantized)
    kernels = bench.openvino_matrix_kernels(quantized, {"image": (1, 1, 8, 8)})  # static shapes: kernels chosen
    assert sum(kernels.values()) == 4 and not any(k.startswith("undef") for k in kernels), kernels
    compiled = graphopt.openvino.compile_cpu(quantized, graphopt.openvino.LATENCY_CONFIG)  # what the plugin applied
    assert (compiled.get_property("INFERENCE_NUM_THREADS"), compiled.get_property("NUM_STREAMS")) == (1, 1)
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert inference_precision(compiled) == "f32"  # pinned: float layers run f32 whatever the CPU
    sample = next(held_out.batches(1))[0]
    latencies = [t.median_ms for t in graphopt.openvino.measure_latency([model, quantized], sample, runs=5, warmup=2)]
    assert len(latencies) == 2 and all(0 < ms < 1000 for ms in latencies)


def test_validate_openvino_check_passes(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                        quantized: onnx.ModelProto) -> None:
    """Both OpenVINO checks, on either CI machine: the deployed default (its precision stated, as the compiled model
    reports it) and f32 pinned, each within budget of the original."""
    model, data, _ = digits
    section = graphopt.validate(model, quantized, data, sections=("environments",)).report.sections[0]
    default = inference_precision(graphopt.openvino.compile_cpu(quantized))
    if X86:
        assert default == DEFAULT_PRECISION
    checks = {c.name: c for c in section.checks if c.group == "openvino"}
    assert list(checks) == [OPENVINO, OPENVINO_F32], section.checks
    assert checks[OPENVINO].detail == f"inference precision {default}: OpenVINO's default on this CPU"
    assert checks[OPENVINO_F32].detail.startswith("inference precision f32")
    for check in checks.values():
        assert check.passed is True, check
        assert float(check.metrics["cosine"] or 0) >= 0.99 and float(check.metrics["top1"] or 0) >= 0.99
        assert isinstance(check.metrics["drift_max_abs"], float) and np.isfinite(check.metrics["drift_max_abs"])
    assert f"OpenVINO: installed, default inference precision {default} on this CPU" in section.notes[0]


def _optimized(digits: tuple[onnx.ModelProto, Dataset, Dataset], pipeline: str) -> tuple[onnx.ModelProto, PassRecord]:
    model, data, _ = digits
    result = graphopt.optimize(model, data, passes=pipeline)
    return result.model, result.report.record("qdq-int8")


def _int8(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def test_default_speed_check_times_int8_in_openvino(digits: tuple[onnx.ModelProto, Dataset, Dataset]) -> None:
    """Real timing (about a second on the digits CNN): whichever way it goes, the report says it was OpenVINO's."""
    model, record = _optimized(digits, "qdq-int8{target=openvino}")
    assert any(note.startswith("int8 timed in OpenVINO: ") for note in record.notes), record.notes
    if record.status == "applied":
        assert _int8(model) and 0 < record.stats["latency_ratio"] < 1, record
    else:
        assert record.status == "declined" and not _int8(model), record
        assert record.reason.startswith("int8 ") and " here (OpenVINO: " in record.reason, record


@pytest.mark.parametrize(("int8_ms", "applied"), [(1.2, False), (0.8, True)])
def test_openvino_timing_declines_a_slower_int8_model(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                                      monkeypatch: pytest.MonkeyPatch, int8_ms: float,
                                                      applied: bool) -> None:
    timed: list[list[onnx.ModelProto]] = []

    def fixed(models: list[onnx.ModelProto], feed: dict[str, np.ndarray], **_: object) -> list[Latency]:
        timed.append(models)
        assert [next(iter(array.shape)) for array in feed.values()] == [1], "one sample, batch 1"
        return [Latency(1.0, 1.0, 20), Latency(int8_ms, int8_ms, 20)]

    monkeypatch.setattr(graphopt.openvino, "measure_latency", fixed)
    model, record = _optimized(digits, "qdq-int8{target=openvino}")
    assert timed and all(not _int8(float_) and _int8(int8) for float_, int8 in timed)
    assert f"int8 timed in OpenVINO: {int8_ms:.3f}× the float latency (single thread, batch 1)" in record.notes
    if applied:
        assert record.status == "applied" and _int8(model) and record.stats["latency_ratio"] == int8_ms, record
    else:
        ops = [node.op_type for node in digits[0].graph.node]
        assert record.status == "declined" and [node.op_type for node in model.graph.node] == ops, record
        assert record.reason == ("int8 1.20× slower here (OpenVINO: 1.200× the float latency (single thread, "
                                 "batch 1)); speed_check=note would keep it"), record


def test_without_openvino_the_speed_is_not_checked(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``import openvino`` fails: the int8 model is kept, untimed (onnxruntime is not OpenVINO), and the note says
    why; an explicit ``speed_check`` times it in onnxruntime instead and says so."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert graphopt.openvino.unavailable() is not None
    model, record = _optimized(digits, "qdq-int8{target=openvino}")
    assert record.status == "applied" and _int8(model) and "latency_ratio" not in record.stats, record
    assert "speed not checked: OpenVINO is not installed here, so int8 was not timed in it (pip install openvino)" in (
        record.notes), record.notes
    _, record = _optimized(digits, "qdq-int8{target=openvino,speed_check=note}")
    assert "OpenVINO is not installed here: int8 timed in onnxruntime instead" in record.notes, record.notes
    assert any(note.startswith("int8 timed in onnxruntime: ") for note in record.notes), record.notes


def test_int8_model_openvino_cannot_run_is_declined(digits: tuple[onnx.ModelProto, Dataset, Dataset],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO is the target: a model it cannot compile is not handed over, unless ``speed_check=note`` asks."""

    def failing(models: list[onnx.ModelProto], feed: dict[str, np.ndarray], **_: object) -> list[Latency]:
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:132:\nSummary:\n-- Conversion is failed for: "
                           "QuantizeLinear-13")

    monkeypatch.setattr(graphopt.openvino, "measure_latency", failing)
    model, record = _optimized(digits, "qdq-int8{target=openvino}")
    assert record.status == "declined" and not _int8(model), record
    assert record.reason == ("OpenVINO could not time the models: Conversion is failed for: QuantizeLinear-13; "
                             "speed_check=note would keep it"), record
    model, record = _optimized(digits, "qdq-int8{target=openvino,speed_check=note}")
    assert record.status == "applied" and _int8(model), record
    assert any(n.startswith("speed not checked: OpenVINO could not time the models") for n in record.notes), record


def test_target_openvino_is_verified_in_openvino(digits: tuple[onnx.ModelProto, Dataset, Dataset]) -> None:
    """The verdict on ``target=openvino`` is OpenVINO's: the verification's cosine is the one of OpenVINO's outputs
    of the kept model (at its defaults on this CPU: bf16 float layers on the AVX-512 BF16 kind) against the float
    model's in onnxruntime."""
    model, data, held_out = digits
    result = graphopt.optimize(model, data, passes="qdq-int8{target=openvino,speed_check=note}")
    record = result.report.record("qdq-int8")
    assert record.status == "applied" and _int8(result.model), record
    note = next(n for n in record.notes if n.startswith("verified in OpenVINO "))
    assert note.endswith(f"'s CPU plugin, the target's runtime (its defaults here: {DEFAULT_PRECISION} for float "
                         "layers)") or not X86, note
    (verification,) = record.verifications
    reference = _ort(model, held_out)
    in_openvino = error_stats(reference["logits"], openvino_outputs(result.model, held_out, reference)["logits"])
    # With f32 (the default on the AVX2 kind) OpenVINO's outputs can equal onnxruntime's; that the verdict is not
    # onnxruntime's where they differ is the next test's point.
    assert verification["outputs"]["logits"]["cosine"] == pytest.approx(in_openvino.cosine, abs=1e-12)


class _DriftingOpenVino(graphopt.openvino.CompiledSession):
    """OpenVINO's CPU plugin, with its int8 outputs moved off the QDQ model's meaning by a seeded per-sample
    distortion (as its low-precision transformations may): a float model's outputs are left as they are."""

    def __init__(self, model: onnx.ModelProto, config: object = None) -> None:
        super().__init__(model, config)  # type: ignore[arg-type]
        self.int8 = _int8(model)
        self.rng = np.random.default_rng(0)

    def run(self, output_names, input_feed):  # type: ignore[no-untyped-def]
        outputs = super().run(output_names, input_feed)
        if not self.int8:
            return outputs
        return [o + self.rng.standard_normal(o.shape).astype(o.dtype) * np.abs(o).mean() * 0.3 for o in outputs]


def test_a_detector_that_leaves_the_budget_in_openvino_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector-like block whose int8 model holds the budget in onnxruntime but not in OpenVINO: for
    ``target=openvino`` no layer survives narrowing; verified in onnxruntime (``target=ort-cpu``, or OpenVINO missing)
    the same int8 model is kept."""
    rng = np.random.default_rng(0)
    model = detector(rng)
    data = Dataset(random_feeds(model, 128, rng), frozenset(), True)
    monkeypatch.setattr(graphopt.openvino, "CompiledSession", _DriftingOpenVino)
    pipeline = "qdq-int8{target=TARGET,speed_check=off}"
    for target, kept in (("openvino", False), ("ort-cpu", True)):
        result = graphopt.optimize(model, data, passes=pipeline.replace("TARGET", target))
        record = result.report.record("qdq-int8")
        assert _int8(result.model) is kept, (target, record.status, record.reason)
        assert any(n.startswith("verified in OpenVINO") for n in record.notes) is (target == "openvino"), record.notes
    assert record.status == "applied"
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = graphopt.optimize(model, data, passes=pipeline.replace("TARGET", "openvino"))
    record = result.report.record("qdq-int8")
    assert record.status == "applied" and _int8(result.model), record
    assert ("verified in onnxruntime: OpenVINO is not installed here, so the verdict is onnxruntime's, not the "
            "target's (pip install openvino)") in record.notes
