from __future__ import annotations

import numpy as np
import onnx
from helpers import run_ort
from onnx import parser

from graphopt.normalize import DropInferredShapesPass, NormalizePass
from graphopt.opset import ensure_opset
from graphopt.pass_base import PassContext

MESSY = parser.parse_model(
    """<ir_version: 8, opset_import: ["" : 13]>
    messy (float[N,3] x) => (float[N,2] y) {
        dead = Relu(x)
        y = Add(h, b)
        b = Constant<value_floats = [0.5, -0.5]>()
        h = MatMul(x, w)
        w = Constant<value = float[3,2] {1, 2, 3, 4, 5, 6}>()
    }"""
)


def test_normalize_moves_constants_removes_dead_nodes_and_sorts() -> None:
    original = onnx.ModelProto()
    original.CopyFrom(MESSY)
    result = NormalizePass()(MESSY, PassContext())
    assert MESSY == original
    assert result.modified
    assert result.stats == {"constants_to_initializers": 2, "negative_dims_to_dynamic": 0, "dead_nodes_removed": 1,
                            "shapes_inferred": 1}
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Add"]
    assert {t.name for t in result.model.graph.initializer} == {"w", "b"}
    onnx.checker.check_model(result.model, full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ort(result.model, {"x": x})[0], x @ np.arange(1, 7, dtype=np.float32).reshape(3, 2)
                               + np.array([0.5, -0.5], np.float32), rtol=1e-6)
    again = NormalizePass()(result.model, PassContext())
    assert again.stats["constants_to_initializers"] == 0 and again.stats["dead_nodes_removed"] == 0


def test_ensure_opset_upgrades_only_when_needed(mlp_model: onnx.ModelProto) -> None:
    same, note = ensure_opset(mlp_model, 13)
    assert same is mlp_model and note == ""
    mlp_model.opset_import[0].version = 11
    upgraded, note = ensure_opset(mlp_model, 17)
    assert upgraded.opset_import[0].version == 17 and note == "opset upgraded from 11 to 17"


def test_drop_inferred_shapes_keeps_only_the_annotations_the_input_had() -> None:
    normalized = NormalizePass()(MESSY, PassContext()).model
    inferred = [v.name for v in normalized.graph.value_info]
    assert inferred == ["h"]
    assert not DropInferredShapesPass(frozenset({"h"}))(normalized, PassContext()).modified  # the input had it
    result = DropInferredShapesPass()(normalized, PassContext())
    assert result.modified and result.stats == {"shapes_dropped": 1} and not result.model.graph.value_info
    assert [v.name for v in normalized.graph.value_info] == ["h"]  # the input is not touched
    onnx.checker.check_model(result.model, full_check=True)
