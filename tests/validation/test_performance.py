"""Performance: every figure of the digits CNN is present and positive, identical models measure alike (a sanity
range, not a timing assertion), the section only informs, and a model that cannot load gives ``None`` figures with
the reason."""

from __future__ import annotations

import onnx
import pytest
from helpers import digits, figure

from graphopt.data import Dataset
from graphopt.perf import peak_memory_bytes
from graphopt.validation.context import ValidationContext
from graphopt.validation.performance import check_performance

NAMES = ["size_bytes", "load_ms", "latency_median_ms", "latency_p90_ms", "peak_memory_bytes"]


@pytest.fixture(scope="module", name="digits")
def digits_fixture() -> tuple[onnx.ModelProto, Dataset]:
    return digits(8)

def test_identical_models_measure_alike_and_the_section_only_informs(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    section = check_performance(ValidationContext(model, copy, held_out, held_out), runs=40, budget_s=0.5)
    assert (section.name, section.title, section.passed) == ("performance", "Performance", None)
    assert [c.name for c in section.checks] == NAMES
    for check in section.checks:
        assert check.passed is None and set(check.metrics) == {"original", "optimized", "ratio"}, check
        assert figure(check, "original") > 0 and figure(check, "optimized") > 0, check
        spread = 4 if check.name == "load_ms" else 2  # a 2 ms load jitters more on a busy machine
        assert 1 / spread < figure(check, "ratio") < spread, check
    size = section.checks[0].metrics
    assert size["original"] == model.ByteSize() and size["ratio"] == 1.0
    assert any(note.startswith("CPU: ") for note in section.notes)
    assert any("single thread, batch 1" in note and "interleaved" in note for note in section.notes)


def test_a_model_that_cannot_load_gives_no_figures_and_says_why(digits: tuple[onnx.ModelProto, Dataset]) -> None:
    model, held_out = digits
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(RuntimeError, match="the measuring process failed: .*NoSuchOp"):
        peak_memory_bytes(broken, next(held_out.batches(1))[0])
    section = check_performance(ValidationContext(model, broken, held_out, held_out), runs=20, budget_s=0.2)
    checks = {c.name: c for c in section.checks}
    assert checks["size_bytes"].metrics["ratio"] is not None
    for name in NAMES[1:]:
        assert checks[name].metrics["optimized"] is None and checks[name].metrics["ratio"] is None, name
        assert "NoSuchOp" in checks[name].detail and "\n" not in checks[name].detail
    assert figure(checks["peak_memory_bytes"], "original") > 0
    assert checks["peak_memory_bytes"].detail.startswith("optimized: peak memory failed: ")
