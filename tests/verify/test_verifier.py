from __future__ import annotations

import numpy as np
import onnx
import pytest
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
