from __future__ import annotations

import numpy as np
import pytest
from onnx import parser

from graphopt.data import Dataset
from graphopt.errors import UnsupportedModelError
from graphopt.runtime import create_session, run_dataset

SPLIT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N] x, int64[2] parts) => (seq(float[?]) y) { y = SplitToSequence(x, parts) }"""


def test_sequence_of_unequal_tensors_is_refused_in_one_line() -> None:
    """onnx's ``test_split_to_sequence_2`` (parts of 2 and 1) crashed the reference run with numpy's "inhomogeneous
    shape" ValueError; sequences of equal tensors still stack into one array."""
    session = create_session(parser.parse_model(SPLIT))

    def data(length: int, parts: list[int]) -> Dataset:
        x = np.arange(length, dtype=np.float32)
        return Dataset({"x": np.stack([x, x]), "parts": np.array([parts, parts], np.int64)},
                       frozenset({"x", "parts"}), batchable=False)

    with pytest.raises(UnsupportedModelError, match=r"different shapes \(\[1\], \[2\]\)"):
        run_dataset(session, data(3, [2, 1]))
    outputs, per_sample = run_dataset(session, data(4, [2, 2]))
    assert per_sample and outputs["y"].shape == (2, 2, 2)
