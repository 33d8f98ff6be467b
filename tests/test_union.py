"""Many variants of a model as one: the union computes what each variant computes, their shared nodes once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import mlp
from onnx import numpy_helper

from graphopt.graph import copy_model
from graphopt.runtime import create_session
from graphopt.union import UnionBuilder, UnionError


def _variant(model: onnx.ModelProto, name: str, factor: float) -> onnx.ModelProto:
    """``model`` with the initializer ``name`` scaled by ``factor``."""
    out = copy_model(model)
    for tensor in out.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))
    return out


def _run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = create_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x}), strict=True))


def test_each_variant_computes_what_it_computes_alone_and_shared_nodes_run_once(rng: np.random.Generator) -> None:
    model = mlp()
    variants = {"same": model, "w1": _variant(model, "w1", 0.5), "w2": _variant(model, "w2", -1.0),
                "b2": _variant(model, "b2", 3.0)}
    builder = UnionBuilder()
    for name, variant in variants.items():
        builder.add(name, variant)
    union = builder.build()
    onnx.checker.check_model(union.model, full_check=True)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    together = _run(union.model, x)
    for name, variant in variants.items():
        alone = _run(variant, x)
        assert alone.keys() == union.outputs[name].keys()
        for output, value in alone.items():
            np.testing.assert_array_equal(together[union.outputs[name][output]], value)
    # Gemm → Relu → Gemm: w1 changes all three nodes, w2 and b2 the last one each, "same" none
    assert len(union.model.graph.node) == 3 + 3 + 1 + 1
    assert len({o.name for o in union.model.graph.output}) == 4


def test_initializers_of_one_name_are_shared_only_when_their_values_are(rng: np.random.Generator) -> None:
    """Variants keep their weights' names, changed or not: a name is no key, the values decide."""
    model = mlp()
    variants = {"same": model, "copy": copy_model(model), "w1": _variant(model, "w1", 0.5),
                "w1 again": _variant(model, "w1", 0.5), "w1 zero": _variant(model, "w1", 0.0)}
    builder = UnionBuilder()
    for name, variant in variants.items():
        builder.add(name, variant)
    union = builder.build()
    assert len(union.model.graph.initializer) == len(model.graph.initializer) + 2  # w1 ×0.5 and w1 ×0 join once each
    x = rng.standard_normal((3, 8)).astype(np.float32)
    together = _run(union.model, x)
    for name, variant in variants.items():
        for output, value in _run(variant, x).items():
            np.testing.assert_array_equal(together[union.outputs[name][output]], value)


def test_an_output_that_is_an_input_or_a_constant_passes_through() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] x_out, float[2] c_out) <float[2] c = {1.0, 2.0}> {
            y = Add(x, c)
            x_out = Identity(x)
            c_out = Identity(c)
        }""")
    passthrough = copy_model(model)
    del passthrough.graph.node[1:]
    passthrough.graph.output[1].name, passthrough.graph.output[2].name = "x", "c"
    builder = UnionBuilder()
    builder.add("a", passthrough)
    builder.add("b", model)
    union = builder.build()
    x = np.array([3.0, 4.0], np.float32)
    got = _run(union.model, x)
    np.testing.assert_array_equal(got[union.outputs["a"]["x"]], x)
    np.testing.assert_array_equal(got[union.outputs["a"]["c"]], [1.0, 2.0])
    np.testing.assert_array_equal(got[union.outputs["b"]["x_out"]], x)
    assert union.outputs["a"]["x"] != "x"  # an output distinct from the input it passes through


@pytest.mark.parametrize("change", ["opset", "input", "subgraph", "prefix", "input initializer"])
def test_variants_that_cannot_share_a_graph_are_refused(change: str) -> None:
    model = mlp()
    other = copy_model(model)
    if change == "opset":
        other.opset_import[0].version += 1
    elif change == "input":
        other.graph.input[0].name = "z"
    elif change == "prefix":
        other.graph.input[0].name = "union_3"
    elif change == "input initializer":
        other.graph.input.append(onnx.helper.make_tensor_value_info("w1", onnx.TensorProto.FLOAT, None))
    else:
        branch = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "b", [],
                                        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
        other.graph.node.append(onnx.helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    builder = UnionBuilder()
    if change in ("prefix", "input initializer"):
        with pytest.raises(UnionError):
            builder.add("other", other)
        return
    builder.add("model", model)
    with pytest.raises(UnionError):
        builder.add("other", other)


def test_the_union_stops_at_its_weight_limit() -> None:
    model = mlp()
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    builder = UnionBuilder(limit=weights + 10)
    builder.add("model", model)
    builder.add("same", model)  # shares every initializer: nothing added
    with pytest.raises(UnionError, match="exceed"):
        builder.add("w1", _variant(model, "w1", 0.5))
    with pytest.raises(UnionError, match="exceed"):  # a first variant above the limit: refused before hashing
        UnionBuilder(limit=weights - 1).add("model", model)


def test_a_refused_variant_leaves_the_union_as_it_was() -> None:
    """A variant refused half-way (its new weight and nodes added, then a node reading a value nothing computes)
    takes all of them back out: the union is the one built without it, and later variants still join."""
    model = mlp()
    broken = _variant(model, "w1", 0.5)
    broken.graph.node.append(onnx.helper.make_node("Identity", ["nowhere"], ["dangling"]))
    builder, plain = UnionBuilder(), UnionBuilder()
    builder.add("model", model)
    plain.add("model", model)
    with pytest.raises(UnionError, match="before it is computed"):
        builder.add("broken", broken)
    assert builder.build().model.SerializeToString() == plain.build().model.SerializeToString()
    builder.add("w2", _variant(model, "w2", -1.0))
    plain.add("w2", _variant(model, "w2", -1.0))
    assert builder.build().model.SerializeToString() == plain.build().model.SerializeToString()
    first = UnionBuilder()
    with pytest.raises(UnionError):
        first.add("broken", broken)
    first.add("model", model)  # the refused first variant left no header or value behind either
    alone = UnionBuilder()
    alone.add("model", model)
    assert first.build().model.SerializeToString() == alone.build().model.SerializeToString()
