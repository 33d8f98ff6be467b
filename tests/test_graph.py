"""The graphsurgeon bridge keeps sparse constants: they are made dense before import, and counted as params."""

from __future__ import annotations

import numpy as np
import onnx
from helpers import run_ort, text_model
from onnx import helper, numpy_helper, parser

from graphopt.graph import densified, editing, initializer_arrays
from graphopt.summary import count_params

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,6] x) => (float[N,4] y) { h = MatMul(x, w1)\n y = MatMul(h, w2) }"""


def sparse(array: np.ndarray, name: str, coordinates: bool = False) -> onnx.SparseTensorProto:
    index = np.flatnonzero(array)
    indices = np.stack(np.unravel_index(index, array.shape), axis=1) if coordinates else index
    return helper.make_sparse_tensor(numpy_helper.from_array(array.reshape(-1)[index], name),
                                     numpy_helper.from_array(indices.astype(np.int64), f"{name}_indices"),
                                     list(array.shape))


def test_sparse_constants_become_dense_and_survive_editing(rng: np.random.Generator) -> None:
    w1 = np.where(rng.random((6, 5)) < 0.3, rng.standard_normal((6, 5)), 0).astype(np.float32)
    w2 = np.where(rng.random((5, 4)) < 0.3, rng.standard_normal((5, 4)), 0).astype(np.float32)
    dense = text_model(MODEL, w1=w1, w2=w2)
    model = parser.parse_model(MODEL)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], sparse_value=sparse(w1, "w1")))
    model.graph.sparse_initializer.append(sparse(w2, "w2", coordinates=True))
    feeds = {"x": rng.standard_normal((3, 6)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(model, feeds)[0], run_ort(dense, feeds)[0])
    assert count_params(model) == count_params(dense) == 6 * 5 + 5 * 4
    flat = densified(model)
    assert not flat.graph.sparse_initializer and all(n.op_type == "MatMul" for n in flat.graph.node)
    assert sorted(a.tobytes() for a in initializer_arrays(model)) == sorted(a.tobytes() for a in (w1, w2))
    with editing(model) as edit:
        pass
    onnx.checker.check_model(edit.model, full_check=True)
    np.testing.assert_array_equal(run_ort(edit.model, feeds)[0], run_ort(dense, feeds)[0])
    assert densified(dense) is dense
