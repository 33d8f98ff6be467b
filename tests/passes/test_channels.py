"""The channel-group API that zero-weight elimination, dead-neuron removal and pruning share."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import run_ort
from onnx import numpy_helper, parser

from graphopt.graph import editing, infer_shapes
from graphopt.pass_base import Skip
from graphopt_passes._channels import (
    ChannelGroup,
    Layout,
    constant_channels,
    consumer_values,
    find_channel_groups,
    removable_channels,
    remove_channels,
)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,10] y, float[N,2,8,8] z) {
  h = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
  r = Relu(h)
  p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
  f = Flatten(p)
  y = Gemm(f, w2, b2)
  g2 = Conv <kernel_shape = [1, 1]> (x, w3)
  z = Add(g2, x2)
}
"""


@pytest.fixture
def model(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w1[[0, 3]] = 0.0
    b1 = np.linspace(-1, 1, 6).astype(np.float32)  # channel 0: -1 (0 after Relu), channel 3: 0.2
    arrays = {
        "w1": w1,
        "b1": b1,
        "w2": rng.standard_normal((96, 10)).astype(np.float32),
        "b2": np.zeros(10, np.float32),
        "w3": rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
        "x2": np.ones((1, 2, 8, 8), np.float32),
    }
    model = parser.parse_model(TEXT)
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    return infer_shapes(model)


def groups(model: onnx.ModelProto) -> dict[str, ChannelGroup | Skip]:
    found = find_channel_groups(gs.import_onnx(model))
    return {item.name if isinstance(item, ChannelGroup) else item.target: item for item in found}


def test_layout_rows_are_channel_blocks() -> None:
    assert Layout(-1, 3).rows([0, 2]).tolist() == [0, 1, 2, 6, 7, 8]
    assert Layout(-3, 1, 4).at_axis_one and not Layout(-1, 1, 4).at_axis_one


def test_find_groups_follows_the_chain_and_refuses_with_a_reason(model: onnx.ModelProto) -> None:
    found = groups(model)
    group = found["h"]
    assert isinstance(group, ChannelGroup)
    assert [link.node.op for link in group.ops] == ["Relu", "MaxPool", "Flatten"]
    assert [(link.node.op, link.layout.block) for link in group.consumers] == [("Gemm", 16)]
    assert constant_channels(group.producer) == {0: -1.0, 3: pytest.approx(0.2)}
    assert found["g2"] == Skip("g2", "Add 'z' combines the channels with a tensor that is not a per-channel constant")
    assert found["y"] == Skip("y", "'y' is a graph output")
    only = find_channel_groups(gs.import_onnx(model), select=lambda p: p.node.op == "Gemm")
    assert [item.target for item in only if isinstance(item, Skip)] == ["y"]


def test_values_reach_consumers_per_row(model: onnx.ModelProto) -> None:
    group = groups(model)["h"]
    (at_gemm,) = consumer_values(group, {0: -1.0, 3: 0.2})
    assert at_gemm[0].tolist() == [0.0] * 16 and np.allclose(at_gemm[3], 0.2) and at_gemm[3].shape == (16,)
    removable, skips = removable_channels(group, {0: -1.0, 3: 0.2})
    assert removable == {0: -1.0, 3: 0.2} and skips == []


def test_remove_channels_is_exact_for_constants_and_usable_for_pruning(model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    with editing(model) as edit:
        group = groups_in(edit.graph)["h"]
        assert remove_channels(edit.graph, [(group, {0: -1.0, 3: 0.2})]) == 2
    for want, got in zip(run_ort(model, feeds), run_ort(edit.model, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    with editing(edit.model) as pruned:  # a lossy caller removes a live channel with its mean as the value
        remove_channels(pruned.graph, [(groups_in(pruned.graph)["h"], {1: 0.5})])
    shapes = {t.name: tuple(t.dims) for t in pruned.model.graph.initializer}
    assert shapes["w1"] == (3, 3, 3, 3) and shapes["w2"] == (48, 10)
    onnx.checker.check_model(pruned.model, full_check=True)


def test_remove_channels_refuses_values_lost_on_the_way(rng: np.random.Generator) -> None:
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,6,6] x) => (float[N,2,6,6] y) {
          h = Conv <kernel_shape = [1, 1]> (x, w1)
          p = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (h)
          y = Conv(p, w2)
        }
        """
    )
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2"),
        ]
    )
    graph = gs.import_onnx(model)
    group = groups_in(graph)["h"]
    assert removable_channels(group, {2: 1.0}) == (
        {},
        [Skip("h", "channel(s) [2] kept: AveragePool 'p' averages it with padding")],
    )
    with pytest.raises(ValueError, match="no constant value"):
        remove_channels(graph, [(group, {2: 1.0})])


def groups_in(graph: gs.Graph) -> dict[str, ChannelGroup]:
    return {g.name: g for g in find_channel_groups(graph) if isinstance(g, ChannelGroup)}
