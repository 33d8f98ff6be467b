from __future__ import annotations

from dataclasses import asdict

import numpy as np
import onnx
import pytest
from helpers import digits
from onnx import parser

import graphopt
from graphopt.data import Dataset
from graphopt.errors import DataError
from graphopt.runtime import RaggedOutput
from graphopt.verify.tolerance import Tolerance
from graphopt.verify.verifier import Verifier

CONSTANT = """<ir_version: 8, opset_import: ["" : 17]>
g () => (float[2] y) { y = Constant <value = float[2] {1.0, 2.0}> () }"""


def test_zero_samples_are_refused_in_one_line() -> None:
    """A model without inputs, given a hand-built Dataset with no arrays (onnx's ``test_constant``), crashed the
    reference run with numpy's "need at least one array to concatenate" instead of a one-line refusal."""
    model = parser.parse_model(CONSTANT)
    empty = Dataset({}, frozenset(), batchable=False)
    with pytest.raises(DataError, match="zero samples"):
        Verifier(model, empty)
    with pytest.raises(DataError, match="zero samples"):
        graphopt.optimize(model, empty)
    no_rows = Dataset({"x": np.zeros((0, 3), np.float32)}, frozenset(), batchable=True)
    assert no_rows.n_samples == 0
    with pytest.raises(DataError):
        Verifier(onnx.ModelProto(), no_rows)


def test_a_sample_whose_shape_differs_fails_whatever_the_tolerance() -> None:
    """Shape is part of the check of a ragged output: even a tolerance with no criterion fails it, in one sentence
    naming the output, the count and the first sample; the samples whose shapes agree are still measured."""
    ref = {"y": RaggedOutput((np.array([[0, 1]]), np.array([[2]]), np.array([[0, 1, 3]])))}
    got = {"y": RaggedOutput((np.array([[0, 1]]), np.array([[2, 4]]), np.array([[0, 1, 3]])))}
    for tolerance in (Tolerance(), Tolerance.lossless(), Tolerance.budget()):
        verification = Verifier.compare(ref, got, tolerance, "original")
        assert not verification.passed
        assert verification.failures == ("y: 1 of 3 samples differ in shape (sample 1: [1, 2] instead of [1, 1])",)
        assert verification.stats["y"].shape_mismatches == 1 and verification.stats["y"].mismatches == 0
    assert Verifier.compare(ref, ref, Tolerance.lossless(), "previous").passed


def test_ragged_and_fixed_shape_outputs_compare_both_ways() -> None:
    fixed = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}
    same = {"y": RaggedOutput((fixed["y"][0], fixed["y"][1]))}
    assert Verifier.compare(fixed, same, Tolerance.lossless(), "previous").passed
    assert Verifier.compare(same, fixed, Tolerance.lossless(), "previous").passed
    changed = {"y": RaggedOutput((fixed["y"][0], np.array([3.0], np.float32)))}
    failures = Verifier.compare(fixed, changed, Tolerance.budget(), "original").failures
    assert failures == ("y: 1 of 2 samples differ in shape (sample 1: [1] instead of [2])",)
    fewer = {"y": RaggedOutput((fixed["y"][0],))}
    assert Verifier.compare(fixed, fewer, Tolerance.budget(), "original").failures == (
        "y: shape varying by sample (1 sample) differs from shape [2, 2]",)


def test_a_run_with_its_outputs_on_disk_decides_as_one_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output over ``SPILL_BYTES`` is kept in a temporary file (0: all of them): the reference's, each
    candidate's and the previous model's. A narrowing search and a task metric on the digits CNN keep the same units
    and give the same figures as with every output in memory."""
    from graphopt.columns import SpillFile
    from graphopt.verify import verifier

    model, data = digits(360)

    def run() -> list[dict]:
        result = graphopt.optimize(model, data, passes="weight-clustering{clusters=4},dead-neuron-removal",
                                   metric="accuracy", max_drop=0.02)
        return [{k: v for k, v in asdict(record).items() if k != "seconds"} for record in result.report.passes]

    in_memory = run()
    spilled: list[SpillFile] = []
    append = SpillFile.append

    def counted(self: SpillFile, rows: np.ndarray) -> None:
        spilled.append(self)
        append(self, rows)

    monkeypatch.setattr(SpillFile, "append", counted)
    monkeypatch.setattr(verifier, "SPILL_BYTES", 0)
    assert run() == in_memory
    assert len({id(s) for s in spilled}) >= 3
    assert in_memory[1]["status"] == "narrowed" and in_memory[1]["verifications"][-1]["task"] is not None


def test_a_candidate_judged_as_its_samples_come_is_judged_as_one_run_whole() -> None:
    """A search's trial is screened on its first samples, then judged on all of them from where the screen
    stopped: each stage's verdict is the one of comparing every sample run so far at once."""
    model, data = digits(200)
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    weight = max(noisy.graph.initializer, key=lambda t: len(t.raw_data) or len(t.float_data))
    values = onnx.numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).standard_normal(values.shape).astype(values.dtype)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 0.3 * values.std() * noise, weight.name))
    verifier = Verifier(model, data)
    tolerance = Tolerance.budget()
    run = verifier.candidate(noisy, tolerance=tolerance)
    for stage in (32, 128):
        first = run.first(stage)
        at_once = Verifier.compare(verifier.head(stage), first, tolerance.at_confidence(None), "original",
                                   verifier.kinds)
        assert run.against_original(tolerance.at_confidence(None)).to_dict() == at_once.to_dict()
    outputs = run.outputs()
    whole = run.against_original(tolerance)
    assert whole.to_dict() == verifier.against_original(outputs, tolerance).to_dict()
    assert next(iter(whole.stats.values())).n_samples == 200
    assert whole.stats and 0.5 < next(iter(whole.stats.values())).cosine < 1.0
