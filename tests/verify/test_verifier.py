from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import parser

import graphopt
from graphopt.data import Dataset
from graphopt.errors import DataError
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
