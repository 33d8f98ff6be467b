"""The graphsurgeon bridge keeps sparse constants: they are made dense before import, and counted as params."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import run_ort, text_model
from onnx import helper, numpy_helper, parser

from graphopt.errors import PreconditionError
from graphopt.graph import (
    _SHAPE_ONLY,
    Names,
    densified,
    editing,
    infer_shapes,
    initializer_arrays,
    label,
    nested_graphs,
    overridable_initializers,
    subgraph_reads,
    subgraphs,
)
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



def test_editing_keeps_initializer_inputs_and_ir3_validity(rng: np.random.Generator) -> None:
    """graphsurgeon turns a graph input that has an initializer into a constant and drops the input: the model lost
    an overridable input, and an IR 3 model (every initializer must be an input, as in onnx's light CNNs) failed
    ``onnx.checker``, so normalisation was rolled back on it. Below IR 4 a new initializer becomes an input too."""
    w = rng.standard_normal((6, 4)).astype(np.float32)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    for ir_version in (3, 8):
        model = helper.make_model(
            helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6]),
                               helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [6, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
                              [numpy_helper.from_array(w, "w")]),
            opset_imports=[helper.make_opsetid("", 7)], ir_version=ir_version)
        with editing(model) as edit:  # y = MatMul(x, w) + b, b a new constant
            matmul, y = edit.graph.nodes[0], edit.graph.outputs[0]
            h = gs.Variable("h", np.float32)
            matmul.outputs = [h]
            edit.graph.nodes.append(gs.Node("Add", inputs=[h, gs.Constant("b", np.ones(4, np.float32))], outputs=[y]))
        out = edit.model
        onnx.checker.check_model(out, full_check=True)
        assert [v.name for v in out.graph.input] == (["x", "w", "b"] if ir_version < 4 else ["x", "w"])
        np.testing.assert_allclose(run_ort(out, {"x": x})[0], x @ w + 1, rtol=1e-5, atol=1e-5)


def test_editing_refuses_values_graphsurgeon_cannot_export() -> None:
    """graphsurgeon exports an optional-typed value as an unbound variable (UnboundLocalError): surgery refuses such
    a model up front, with the value named, so a pass skips it instead of raising."""
    optional = helper.make_value_info("maybe", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [2])))
    graph = helper.make_graph([helper.make_node("Optional", ["x"], ["maybe"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])], [optional])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(PreconditionError, match="value 'maybe' is of optional_type"), editing(model):
        pass


def _nested() -> onnx.ModelProto:
    """An If whose then-branch holds a Loop: a name used only two levels down, and a node named like a tensor."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v", "outer"], ["deep_sum"], name="deep_add")], "body",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("i", "cond_in", "v")],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("cond_out", "deep_sum")])
    then = helper.make_graph(
        [helper.make_node("Loop", ["", "", "x"], ["looped"], name="loop", body=body)], "then", [],
        [helper.make_tensor_value_info("looped", onnx.TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "else", [],
                              [helper.make_tensor_value_info("same", onnx.TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["outer"], name="relu"),
         helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other),
         helper.make_node("Neg", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(2, np.float32), "w"), numpy_helper.from_array(np.ones(2, np.float32), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_toolkit_sees_into_nested_graphs_on_both_substrates() -> None:
    model = _nested()
    for graph in (model.graph, gs.import_onnx(model)):
        owners = [(label(owner), sub.name) for owner, sub in nested_graphs(graph)]
        assert sorted(owners) == [("branch", "else"), ("branch", "then"), ("loop", "body")]
        assert {"outer", "v", "x", "deep_sum", "looped", "same"} <= subgraph_reads(graph)
        names = Names.of(graph)
        assert names.fresh("deep_sum") == "deep_sum_1" and names.fresh("deep_sum") == "deep_sum_2"
        assert names.fresh("deep_add") == "deep_add_1", "node names are taken too, in nested graphs as well"
        assert names.fresh("new") == "new"
    assert [sub.name for sub in subgraphs(model.graph)] == ["g", "else", "then", "body"], "depth first"
    assert overridable_initializers(model.graph) == ["w"]
    neg = model.graph.node[2]
    assert label(neg) == "z" and label(gs.import_onnx(model).nodes[2]) == "z", "unnamed: its first output"
    assert label(helper.make_node("Identity", [], [])) == "Identity"


def test_editing_leaves_the_model_it_was_given_byte_for_byte() -> None:
    """graphsurgeon's export writes into the protos it imported (a Constant's unnamed tensor gains an empty name):
    a pass's cache keyed by the model's digest would then miss on the next trial's identical model."""
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1], np.int64)))
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    graph = helper.make_graph([shape, reshape], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    with editing(model) as edit:
        edit.graph.nodes[-1].name = "renamed"
    assert model.SerializeToString() == before
    assert [n.name for n in edit.model.graph.node if n.op_type == "Reshape"] == ["renamed"]


def test_shapes_are_inferred_as_onnx_infers_them_with_the_weights_left_out_and_put_back(
        rng: np.random.Generator) -> None:
    """Inference reads a weight's dims, not its values: with the large weights left out it infers the same shapes
    (through a Reshape whose target and a Resize whose scales are constants), and the result keeps every weight."""
    weight = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)  # 192 KB: above the size left out
    model = text_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 16, 16] x) => (float[1, 64, 1024] y) {
            c = Conv <pads = [8, 8, 7, 7]> (x, w)
            r = Resize <mode = "nearest"> (c, roi, scales)
            y = Reshape (r, shape)
        }""", w=weight, roi=np.zeros(0, np.float32), scales=np.array([1, 1, 2, 2], np.float32),
                       shape=np.array([1, 64, -1], np.int64))
    assert weight.nbytes > _SHAPE_ONLY
    expected = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    got = infer_shapes(model)
    assert got.SerializeToString() == expected.SerializeToString()
    assert {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in got.graph.value_info} == {
        "c": [1, 64, 16, 16], "r": [1, 64, 32, 32]}
