"""fast-prelu: PRelu rewritten as Relu + slope·Min(x, 0), bit for bit the same outputs, in any graph it appears in."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import run_ort
from onnx import numpy_helper, parser

from graphopt.pass_base import PassContext
from graphopt_passes.fast_prelu import FastPReluPass

PASS = FastPReluPass()


def build(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    model = parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def special_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values with the edge cases of the rewrite mixed in: ±0, subnormals, huge and tiny magnitudes."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    edge = np.array([0.0, -0.0, 1e-42, -1e-42, 3e38, -3e38, 1e-30, -1e-30], np.float32)
    flat[rng.choice(flat.size, 64, replace=False)] = np.resize(edge, 64)
    return x


def test_conv_prelu_gives_the_same_bits_with_per_channel_and_scalar_slopes(rng: np.random.Generator) -> None:
    model = build(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3, 12, 12] x) => (float[N, 8, 10, 10] y, float[N, 8, 10, 10] z) {
            c = Conv(x, w, b)
            y = PRelu(c, slope)
            z = PRelu(c, shared)
        }""",
        w=rng.standard_normal((8, 3, 3, 3)).astype(np.float32), b=rng.standard_normal(8).astype(np.float32),
        slope=rng.uniform(-0.6, 0.7, (8, 1, 1)).astype(np.float32), shared=np.array([0.25], np.float32))
    before = model.SerializeToString()
    result = PASS(model, PassContext())
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(result.model, full_check=True)
    assert result.modified and result.stats["prelus_rewritten"] == 2
    assert "PRelu" not in ops(result.model.graph)
    assert sorted(ops(result.model.graph)) == sorted(["Conv"] + ["Relu", "Min", "Mul", "Add"] * 2)
    feed = {"x": special_values(rng, (4, 3, 12, 12))}
    for optimize in (False, True):
        for want, got in zip(run_ort(model, feed, optimize), run_ort(result.model, feed, optimize), strict=True):
            assert np.array_equal(want.view(np.uint32), got.view(np.uint32))  # the same bits, signed zeros too
    again = PASS(result.model, PassContext())
    assert not again.modified


def test_prelu_inside_an_if_branch_and_in_float16(rng: np.random.Generator) -> None:
    model = build(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float16[N, 4] x, bool flag) => (float16[N, 4] y) {
            y = If(flag) <
                then_branch = t () => (float16[N, 4] a) { a = PRelu(x, slope) },
                else_branch = e () => (float16[N, 4] b) { b = Identity(x) }
            >
        }""",
        slope=np.array([0.1, -0.2, 0.3, 2.0], np.float16))
    result = PASS(model, PassContext())
    assert result.modified and result.stats["prelus_rewritten"] == 1
    branch = next(a.g for a in result.model.graph.node[0].attribute if a.name == "then_branch")
    assert ops(branch) == ["Relu", "Min", "Mul", "Add"]
    x = rng.standard_normal((16, 4)).astype(np.float16)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        assert np.array_equal(run_ort(model, feed)[0].view(np.uint16), run_ort(result.model, feed)[0].view(np.uint16))


def test_integer_prelu_and_old_opsets_are_left_alone(rng: np.random.Generator) -> None:
    integer = build(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (int32[N, 4] x) => (int32[N, 4] y) { y = PRelu(x, slope) }""", slope=np.array([1, 2, 3, 4], np.int32))
    result = PASS(integer, PassContext())
    assert not result.modified and "int32" in result.skipped[0].reason
    old = build(
        """<ir_version: 4, opset_import: ["" : 7]>
        g (float[N, 4] x) => (float[N, 4] y) { y = PRelu(x, slope) }""", slope=np.full(4, 0.1, np.float32))
    result = PASS(old, PassContext())
    assert not result.modified and "opset 7" in result.skipped[0].reason


@pytest.mark.parametrize("opset", [11, 17])
def test_a_prelu_that_is_a_graph_output_keeps_its_name(rng: np.random.Generator, opset: int) -> None:
    model = build(
        f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g (float[N, 5] x) => (float[N, 5] out) {{ out = PRelu(x, slope) }}""",
        slope=rng.uniform(-1, 1, 5).astype(np.float32))
    result = PASS(model, PassContext())
    assert [o.name for o in result.model.graph.output] == ["out"] and result.model.graph.node[-1].output[0] == "out"
    feed = {"x": special_values(rng, (32, 5))}
    assert np.array_equal(run_ort(model, feed)[0], run_ort(result.model, feed)[0])
