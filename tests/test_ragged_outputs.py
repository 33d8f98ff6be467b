"""Models whose output shapes depend on the sample (NonZero, TopK with k from an input, Unique) are verified like any
other: per sample, with shape equality part of the check. They used to crash the reference run in np.concatenate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, parser

import graphopt
from graphopt.data import Dataset, input_specs, load_data
from graphopt.outcome import Status
from graphopt.outputs import join_samples, take_samples
from graphopt.pass_base import PassBase, PassContext, PassResult
from graphopt.runtime import RaggedOutput
from graphopt.validation.context import ValidationContext
from graphopt.validation.folds import check_folds
from graphopt.validation.held_out import check_held_out
from graphopt.validation.shifts import check_shifts
from graphopt.verify.metrics import identical
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

NONZERO = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 6] x) => (int64[2, ?] y) {
  half = Constant <value = float {0.25}> ()
  kept = Greater(x, half)
  y = NonZero(kept)
}"""

TOPK = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8] x, int64[1] k) => (float[N, ?] values, int64[N, ?] indices) {
  values, indices = TopK <axis = 1> (x, k)
}"""

UNIQUE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x) => (float[?] y, int64[?] counts) {
  y, first, inverse, counts = Unique <sorted = 1> (x)
}"""


def nonzero_data(rng: np.random.Generator, n: int = 12) -> dict[str, np.ndarray]:
    """Samples of 0s and 1s (so each has its own count of non-zeros) and sample 3 with one 0.5 among them."""
    x = (rng.random((n, 6)) > 0.5).astype(np.float32)
    x[3, :2] = [0.5, 0.0]
    return {"x": x}


def datasets(rng: np.random.Generator) -> dict[str, tuple[onnx.ModelProto, Dataset]]:
    topk = {"x": rng.standard_normal((6, 8)).astype(np.float32), "k": np.array([[1], [3], [2], [5], [3], [8]])}
    unique = {"x": rng.integers(0, 5, (6, 7)).astype(np.float32)}
    return {
        "NonZero": (parser.parse_model(NONZERO), Dataset(nonzero_data(rng), frozenset(), batchable=True)),
        "TopK": (parser.parse_model(TOPK), Dataset(topk, frozenset({"k"}), batchable=False)),
        "Unique": (parser.parse_model(UNIQUE), Dataset(unique, frozenset({"x"}), batchable=False)),
    }


def with_floor(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input floored before the comparison: sample 3's 0.5 then no longer counts as non-zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.insert(0, helper.make_node("Floor", ["x"], ["x_floor"]))
    for node in out.graph.node[1:]:
        node.input[:] = ["x_floor" if name == "x" else name for name in node.input]
    return out


class FloorInputs(PassBase):
    """Claims to be lossless, but floors the input: one sample's NonZero output loses an element."""

    name = "test-floor-inputs"
    lossless = True

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        return PassResult(with_floor(model), True, {"nodes_added": 1})


@pytest.mark.parametrize("op", ["NonZero", "TopK", "Unique"])
def test_a_model_with_data_dependent_shapes_verifies_against_itself(op: str, rng: np.random.Generator) -> None:
    model, data = datasets(rng)[op]
    verifier = Verifier(model, data)
    assert all(isinstance(output, RaggedOutput) for output in verifier.reference.values())
    outputs = verifier.outputs(model)
    for tolerance, against in ((Tolerance.lossless(), "previous"), (Tolerance.budget(), "original")):
        verification = verifier.compare(verifier.reference, outputs, tolerance, against)
        assert verification.passed, verification.failures
        assert all(s.shape_mismatches == 0 and s.max_abs == 0 for s in verification.stats.values())


def test_a_candidate_that_changes_one_samples_shape_fails_with_the_shape_reason(rng: np.random.Generator) -> None:
    model = parser.parse_model(NONZERO)
    data = Dataset(nonzero_data(rng), frozenset(), batchable=True)
    verifier = Verifier(model, data)
    verification = verifier.compare(verifier.reference, verifier.outputs(with_floor(model)), Tolerance.budget(),
                                    "original")
    reference = verifier.reference["y"]
    assert isinstance(reference, RaggedOutput)
    width = reference.shapes[3][1]
    reason = f"y: 1 of 12 samples differ in shape (sample 3: [2, {width - 1}] instead of [2, {width}])"
    assert verification.failures == (reason,)
    assert verification.stats["y"].shape_mismatches == 1


def test_the_manager_rolls_back_a_pass_that_changes_sample_shapes(rng: np.random.Generator) -> None:
    arrays = nonzero_data(rng, 24)
    arrays["x"][::4, 5] = 0.5  # samples 0, 4, 8…: whichever the split verifies on, some lose an element
    data = Dataset(arrays, frozenset(), batchable=True)
    result = graphopt.optimize(parser.parse_model(NONZERO), data, passes=[FloorInputs()], normalize=False)
    (outcome,) = result.pipeline.outcomes
    assert outcome.status is Status.ROLLED_BACK
    assert outcome.reason.startswith("y: ") and "samples differ in shape" in outcome.reason
    assert outcome.reason.endswith("(vs previous)")


def test_optimize_accepts_normalisation_of_a_nonzero_model(tmp_path: Path, rng: np.random.Generator) -> None:
    """End to end from an .npz, as ``graphopt optimize`` runs it: no crash, and normalize (Constant → initializer,
    shape inference) is verified lossless on every sample's output."""
    model = parser.parse_model(NONZERO)
    np.savez(tmp_path / "data.npz", x=nonzero_data(rng, 16)["x"])
    data = load_data(tmp_path / "data.npz", input_specs(model))
    result = graphopt.optimize(model, data, passes=[], report=tmp_path / "report.json")
    normalize = result.pipeline.outcomes[0]
    assert normalize.pass_name == "normalize" and normalize.status is Status.APPLIED
    assert normalize.verifications and all(v.passed for v in normalize.verifications)
    assert not any(o.status is Status.ROLLED_BACK for o in result.pipeline.outcomes)
    report = json.loads((tmp_path / "report.json").read_text())
    stats = report["passes"][0]["verifications"][0]["outputs"]["y"]
    assert stats["shape_mismatches"] == 0 and stats["mismatches"] == 0 and stats["exact"] is True


def test_validation_sections_judge_ragged_outputs_per_sample(rng: np.random.Generator) -> None:
    model = parser.parse_model(NONZERO)
    data = Dataset(nonzero_data(rng, 20), frozenset(), batchable=True)
    same = ValidationContext(model, model, data, data)
    assert check_held_out(same).passed and check_folds(same, folds=4).checks
    assert check_shifts(same).passed
    changed = ValidationContext(model, with_floor(model), data, data)
    (held_out,) = check_held_out(changed).checks
    assert held_out.passed is False and "1 of 20 samples differ in shape (sample 3:" in held_out.detail
    folds = check_folds(changed, folds=4)
    assert sum("differ in shape" in c.detail for c in folds.checks) == 1


def test_outputs_of_consecutive_sample_ranges_join_in_order() -> None:
    """What a staged verification joins: arrays stay one array, shapes that differ between ranges turn ragged."""
    a, b = np.arange(6.0).reshape(3, 2), np.arange(4.0).reshape(2, 2) + 10
    assert np.array_equal(join_samples([a, b]), np.concatenate([a, b]))
    wider = np.zeros((1, 3))
    joined = join_samples([a, wider])
    assert isinstance(joined, RaggedOutput) and joined.shapes == ((2,), (2,), (2,), (3,))
    ragged = RaggedOutput((np.ones(1), np.ones(2)))
    both = join_samples([ragged, a])
    assert isinstance(both, RaggedOutput) and both.shapes == ((1,), (2,), (2,), (2,), (2,))
    assert np.array_equal(both.samples[2], a[0])
    assert take_samples(ragged, slice(1, 2)).shapes == ((2,),) and take_samples(a, slice(0, 2)).base is not None


def test_a_staged_run_gives_every_sample_once_as_one_run_would(rng: np.random.Generator) -> None:
    """A candidate run on the first 3 samples, then the first 5, then all, equals one run on all: ragged outputs
    (NonZero per sample) and stacked ones (TopK with a fixed k) alike."""
    topk = {"x": rng.standard_normal((9, 8)).astype(np.float32), "k": np.full((9, 1), 3)}
    cases = {"NonZero": (parser.parse_model(NONZERO), Dataset(nonzero_data(rng, 9), frozenset(), batchable=True)),
             "TopK": (parser.parse_model(TOPK), Dataset(topk, frozenset({"k"}), batchable=False))}
    for model, data in cases.values():
        verifier = Verifier(model, data)
        run = verifier.candidate(model)
        assert all(len(o) == 3 if isinstance(o, RaggedOutput) else o.shape[0] == 3 for o in run.first(3).values())
        run.first(5)
        for name, output in run.outputs().items():
            assert identical(output, verifier.reference[name])
            assert identical(verifier.head(5)[name], take_samples(output, slice(0, 5)))
