"""zero-weight-elimination: channel removal through chains, refusals with reasons, identities, units, idempotence."""

from __future__ import annotations

import time
import warnings

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, run_ort
from onnx import numpy_helper, parser

from graphopt.pass_base import PassContext, PassResult
from graphopt_passes.zero_weight_elimination import ZeroWeightEliminationPass

PASS = ZeroWeightEliminationPass(ZeroWeightEliminationPass.Options(align=1))
"""Structural tests remove every zero channel; channel alignment has its own test."""


def build(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    """An ONNX-text model with ``arrays`` as float32 initializers (names as given)."""
    model = parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items())
    onnx.checker.check_model(model, full_check=True)
    return model


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def layer_shapes(model: onnx.ModelProto, index: int = 1) -> list[tuple[int, ...]]:
    """The shape of input ``index`` (weight, or bias with 2) of every layer, in graph order."""
    arrays = inits(model)
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    return [arrays[n.input[index]].shape if len(n.input) > index else () for n in layers]


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def feeds(model: onnx.ModelProto, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded random inputs; symbolic dimensions get ``batch``."""
    out = {}
    for value in model.graph.input:
        kind = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else batch for d in kind.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
        out[value.name] = rng.random(shape) > 0.5 if dtype == bool else rng.standard_normal(shape).astype(dtype)
    return out


def check(model: onnx.ModelProto, context: PassContext | None = None) -> PassResult:
    """Run the pass and assert (b) equal ORT outputs, (c) full_check and (e) a second run changing nothing."""
    before = model.SerializeToString()
    result = PASS(model, context or PassContext())
    assert model.SerializeToString() == before, "the input model was mutated"
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        inputs = feeds(model, batch, rng)
        for want, got in zip(run_ort(model, inputs), run_ort(result.model, inputs)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    if context is None:
        assert PASS(result.model, PassContext()).modified is False
    return result


def reasons(result: PassResult) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in result.skipped)


CONV_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,10,10] x) => (float[N,5,H,W] y) {{
  h = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
  r = Relu(h)
  y = Conv <pads = [{pad}, {pad}, {pad}, {pad}], kernel_shape = [3, 3]> (r, w2, b2)
}}
"""


def conv_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w1[[1, 4, 6]] = 0.0
    b1[1], b1[4], b1[6] = 0.0, 0.7, -0.3  # values after Relu: 0, 0.7, 0
    return {
        "w1": w1,
        "b1": b1,
        "w2": rng.standard_normal((5, 8, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(5).astype(np.float32),
    }


def test_conv_relu_conv_folds_constant_channels(rng: np.random.Generator) -> None:
    model = build(CONV_TEXT.format(pad=0), **conv_weights(rng))
    result = check(model)
    assert ops(result.model) == ["Conv", "Relu", "Conv"]
    assert layer_shapes(result.model) == [(5, 3, 3, 3), (5, 5, 3, 3)]
    assert layer_shapes(result.model, 2) == [(5,), (5,)]
    assert result.stats["channels_removed"] == 3 and result.stats["params_removed"] == 3 * 27 + 3 + 3 * 45


def test_padded_conv_consumer_keeps_nonzero_constant_channel(rng: np.random.Generator) -> None:
    model = build(CONV_TEXT.format(pad=1), **conv_weights(rng))
    result = check(model)
    assert layer_shapes(result.model) == [(6, 3, 3, 3), (5, 6, 3, 3)]
    assert "channel(s) [4] kept: nonzero constant reaches Conv" in reasons(result)
    assert "pads its input" in reasons(result)


def test_flatten_gemm_rows_shrink_by_blocks(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w1[[0, 3]], b1[0], b1[3] = 0.0, 0.5, 0.0
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,8,8] x) => (float[N,10] y) {
          h = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
          r = Relu(h)
          p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r)
          f = Flatten(p)
          y = Gemm(f, w2, b2)
        }
        """,
        w1=w1,
        b1=b1,
        w2=rng.standard_normal((96, 10)).astype(np.float32),
        b2=rng.standard_normal(10).astype(np.float32),
    )
    result = check(model)
    assert ops(result.model) == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm"]
    assert layer_shapes(result.model) == [(4, 3, 3, 3), (64, 10)]


def test_gemm_relu_gemm_folds_bias_into_next_layer(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((16, 8)).astype(np.float32)  # transB: rows are output units
    w1[[2, 9]] = 0.0
    b1 = rng.standard_normal(16).astype(np.float32)
    b1[2], b1[9] = 1.5, -2.0
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,8] x) => (float[N,4] y) {
          h = Gemm <transB = 1, beta = 0.5> (x, w1, b1)
          r = Relu(h)
          y = Gemm <alpha = 2.0, beta = 3.0> (r, w2, b2)
        }
        """,
        w1=w1,
        b1=b1,
        w2=w2,
        b2=b2,
    )
    result = check(model)
    assert layer_shapes(result.model) == [(14, 8), (14, 4)] and layer_shapes(result.model, 2) == [(14,), (4,)]
    second = result.model.graph.node[-1]
    folded = inits(result.model)[second.input[2]]
    np.testing.assert_allclose(folded, 3.0 * b2 + 2.0 * 0.75 * w2[2], rtol=1e-6)  # relu(0.5*1.5), relu(0.5*-2)=0
    assert next(a.f for a in second.attribute if a.name == "beta") == 1.0


MATMUL_TEXT = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[N,5,8] x) => (float[N,5,4] y) {{
  h = MatMul(x, w1)
  hb = Add(h, b1)
  r = Sigmoid(hb)
  {tail}
}}
"""


@pytest.mark.parametrize("tail", ["m = MatMul(r, w2)\n y = Add(m, b2)", "y = MatMul(r, w2)"])
def test_matmul_add_chain(rng: np.random.Generator, tail: str) -> None:
    w1 = rng.standard_normal((8, 12)).astype(np.float32)
    w1[:, [0, 5, 7]] = 0.0
    arrays = {
        "w1": w1,
        "b1": rng.standard_normal(12).astype(np.float32),
        "w2": rng.standard_normal((12, 4)).astype(np.float32),
    }
    if "b2" in tail:
        arrays["b2"] = rng.standard_normal(4).astype(np.float32)
    result = check(build(MATMUL_TEXT.format(tail=tail), **arrays))
    assert ops(result.model) == ["MatMul", "Add", "Sigmoid", "MatMul", "Add"]  # a bias Add is inserted when absent
    assert layer_shapes(result.model) == [(8, 9), (9, 4)]


def test_batchnorm_prelu_and_average_pool_in_chain(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w1[[1, 2]] = 0.0
    bn = {k: rng.uniform(0.5, 1.5, 6).astype(np.float32) for k in ("s", "bb", "mean", "var")}
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 11]>
        g (float[N,3,9,9] x) => (float[N,4,1,1] y) {
          h = Conv(x, w1)
          n = BatchNormalization <epsilon = 0.001> (h, s, bb, mean, var)
          a = PRelu(n, slope)
          c = Clip(a, lo, hi)
          p = AveragePool <kernel_shape = [3, 3], strides = [2, 2]> (c)
          y = Conv <strides = [2, 2], kernel_shape = [2, 2]> (p, w2)
        }
        """,
        w1=w1,
        slope=np.full((6, 1, 1), 0.1, np.float32),
        lo=np.float32(-1.0),
        hi=np.float32(1.2),
        w2=rng.standard_normal((4, 6, 2, 2)).astype(np.float32),
        **bn,
    )
    result = check(model)
    assert layer_shapes(result.model) == [(4, 3, 3, 3), (4, 4, 2, 2)]
    assert ops(result.model) == ["Conv", "BatchNormalization", "PRelu", "Clip", "AveragePool", "Conv"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            "r = Relu(h)\n s = Add(r, x)\n y = Conv(s, w2)",
            "Add 's' combines the channels with a tensor that is not a per-channel constant",
        ),
        ("y = Relu(h)\n z = Conv(y, w2)", "'y' is a graph output"),
        (
            "r = Relu(h)\n c = Concat <axis = 1> (r, x)\n y = Conv(c, w3)",
            "Concat 'c' reads the channels and is not channel-preserving",
        ),
        ("r = Relu(h)\n q = Reshape(r, shp)\n y = Conv(r, w2)", "Reshape 'q'"),
    ],
)
def test_refused_groups_keep_every_channel(rng: np.random.Generator, body: str, reason: str) -> None:
    w1 = rng.standard_normal((3, 3, 1, 1)).astype(np.float32)
    w1[1] = 0.0
    outputs = "float[N,3,4,4] y, float[N,2,4,4] z" if "z =" in body else "float[N,2,4,4] y"
    model = build(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,4,4] x) => ({outputs}) {{
          h = Conv(x, w1)
          {body}
        }}
        """,
        w1=w1,
        w2=rng.standard_normal((2, 3, 1, 1)).astype(np.float32),
        w3=rng.standard_normal((2, 6, 1, 1)).astype(np.float32),
        shp=np.array([0, 3, 16], np.int64),
    )
    result = PASS(model, PassContext())
    assert result.modified is False
    assert f"h: {reason}" in reasons(result)


def test_conv_weights_as_constant_nodes_and_shared_initializer(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w1[2] = 0.0
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,4,4] x) => (float[N,2,4,4] y, float[N,4,4,4] z) {
          w2 = Constant <value = float[2,4,1,1] {1, -2, 3, 4, 0.5, 0.25, -1, 2}> ()
          h = Conv(x, w1)
          r = Relu(h)
          y = Conv(r, w2)
          z = Conv(x, w1)
        }
        """,
        w1=w1,
    )
    result = check(model)
    arrays = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    assert sorted(arrays[n.input[1]].shape for n in convs) == [(2, 3, 1, 1), (3, 3, 1, 1), (4, 3, 1, 1)]
    assert "z: 'z' is a graph output" in reasons(result)


def test_all_zero_layer_keeps_one_channel(rng: np.random.Generator) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,2] y) {
          h = Gemm(x, w1, b1)
          y = Gemm(h, w2)
        }
        """,
        w1=np.zeros((3, 4), np.float32),
        b1=np.arange(4, dtype=np.float32),
        w2=rng.standard_normal((4, 2)).astype(np.float32),
    )
    result = check(model)
    assert layer_shapes(result.model) == [(3, 1), (1, 2)]
    assert "channel(s) [3] kept: removing every channel would leave the layer empty" in reasons(result)


def test_round_two_removes_channels_that_became_zero(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((3, 4)).astype(np.float32)
    w1[:, 1] = 0.0
    w2 = rng.standard_normal((4, 5)).astype(np.float32)
    w2[[0, 2, 3], 3] = 0.0  # output unit 3 of the second layer only reads the removed unit 1
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,2] y) {
          h = MatMul(x, w1)
          r = Tanh(h)
          k = MatMul(r, w2)
          y = MatMul(k, w3)
        }
        """,
        w1=w1,
        w2=w2,
        w3=rng.standard_normal((5, 2)).astype(np.float32),
    )
    result = check(model)
    assert layer_shapes(result.model) == [(3, 3), (3, 4), (4, 2)]


def test_identities(rng: np.random.Generator) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x, float[2,4] v) => (float[N,3] y, float[2,4] z, float[3,N,4] u) {
          a = Add(x, zeros)
          b = Mul(ones, a)
          c = Div(b, ones)
          d = Sub(c, zeros)
          y = Gemm(d, w, bz)
          m = Mul(x, wide)
          u = Relu(m)
          k = Mul(v, zeros)
          z = Add(k, one_b)
        }
        """,
        zeros=np.zeros(4, np.float32),
        ones=np.ones((1, 4), np.float32),
        wide=np.ones((3, 1, 4), np.float32),
        w=rng.standard_normal((4, 3)).astype(np.float32),
        bz=np.zeros(3, np.float32),
        one_b=np.ones(4, np.float32),
    )
    result = check(model)
    assert sorted(ops(result.model)) == ["Add", "Gemm", "Mul", "Relu"]
    assert len(next(n for n in result.model.graph.node if n.op_type == "Gemm").input) == 2
    assert "m: Mul by a constant 1 kept: the constant broadcasts the input to a larger shape" in reasons(result)
    assert result.stats["nodes_removed"] == 5


def test_units_narrow_the_rewrite(rng: np.random.Generator) -> None:
    arrays = conv_weights(rng)
    arrays["b1"][4], arrays["b2"] = -0.7, np.zeros(5, np.float32)  # every constant channel is 0 after Relu
    model = build(CONV_TEXT.format(pad=0), **arrays)
    units = {u.name: u.detail for u in PASS.units(model, PassContext())}
    assert units == {"h": "3 of 8 channels", "y": "zero bias dropped"}
    only_bias = check(model, PassContext(only_units=frozenset({"y"})))
    assert layer_shapes(only_bias.model) == [(8, 3, 3, 3), (5, 8, 3, 3)]
    assert only_bias.stats["channels_removed"] == 0
    assert PASS(model, PassContext(only_units=frozenset())).modified is False
    both = check(model)
    assert both.stats["units_applied"] == 2


def test_tensor_read_inside_a_subgraph_is_skipped(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((3, 4)).astype(np.float32)
    w1[:, 0] = 0.0
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x, bool c) => (float[N,2] y) {
          h = MatMul(x, w1)
          r = Relu(h)
          y = If <then_branch = t () => (float[N,2] a) { a = MatMul(r, w2) },
                  else_branch = e () => (float[N,2] b) { b = MatMul(r, w2) }> (c)
        }
        """,
        w1=w1,
        w2=rng.standard_normal((4, 2)).astype(np.float32),
    )
    result = PASS(model, PassContext())
    assert result.modified is False and "h: 'r' is read inside a subgraph" in reasons(result)


def test_model_with_overridable_initializers_is_left_alone(rng: np.random.Generator) -> None:
    model = build(CONV_TEXT.format(pad=0), **conv_weights(rng))
    model.graph.input.append(onnx.helper.make_tensor_value_info("w1", onnx.TensorProto.FLOAT, [8, 3, 3, 3]))
    result = PASS(model, PassContext())
    assert result.modified is False and "overridable" in reasons(result)


def test_onnx_backend_node_models_never_break() -> None:
    """Every backend-test node model: no exception, a valid output, and equal outputs where ORT runs it."""
    from onnx.backend.test.case.node import collect_testcases

    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    modified = 0
    for case in cases:
        try:
            onnx.checker.check_model(case.model)
        except onnx.checker.ValidationError:
            continue  # invalid on input: not the pass's business
        result = PASS(case.model, PassContext())
        onnx.checker.check_model(result.model)
        if not result.modified:
            continue
        modified += 1
        feeds = dict(zip((i.name for i in case.model.graph.input), case.data_sets[0][0]))
        try:
            want = run_ort(case.model, feeds)
        except Exception:  # noqa: BLE001, S112 - models onnxruntime cannot run (many unrelated error types)
            continue
        for a, b in zip(want, run_ort(result.model, feeds)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4, err_msg=case.name)
    assert modified > 0
    assert time.monotonic() - start < 60


CHAIN_CASES = {
    "reshape-dropout-leaky": (
        """
        <ir_version: 8, opset_import: ["" : 21]>
        g (float[N,3,6,6] x) => (float[N,4] y) {
          h = Conv <kernel_shape = [3, 3]> (x, w1, b1)
          a = LeakyRelu <alpha = 0.2> (h)
          d = Dropout(a)
          q = Reshape(d, shp)
          y = Gemm <transB = 1> (q, w2)
        }
        """,
        {"shp": np.array([-1, 96], np.int64), "w2": (4, 96)},
        [(4, 3, 3, 3), (4, 64)],
    ),
    "global-pool-flatten-sub-div": (
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,6,6] x) => (float[N,4] y) {
          h = Conv <kernel_shape = [3, 3]> (x, w1, b1)
          s = Sub(per_channel, h)
          t = Div(s, two)
          p = GlobalAveragePool(t)
          f = Flatten(p)
          y = MatMul(f, w2)
        }
        """,
        {
            "per_channel": np.linspace(-1, 1, 6).reshape(6, 1, 1).astype(np.float32),
            "two": np.float32(2.0),
            "w2": (6, 4),
        },
        [(4, 3, 3, 3), (4, 4)],
    ),
    "conv-transpose-both-ends": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,5,5] x) => (float[N,2,9,9] y) {
          h = ConvTranspose <kernel_shape = [3, 3]> (x, wt, b1)
          r = Relu(h)
          y = ConvTranspose <kernel_shape = [3, 3]> (r, w2)
        }
        """,
        {"w2": (6, 2, 3, 3)},
        [(3, 5, 3, 3), (5, 2, 3, 3)],
    ),
    "average-pool-with-padding": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,6,6] x) => (float[N,2,4,4] y) {
          h = Conv <kernel_shape = [3, 3]> (x, w1, b1)
          p = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (h)
          y = Conv(p, w2)
        }
        """,
        {"w2": (2, 6, 1, 1)},
        [(5, 3, 3, 3), (2, 5, 1, 1)],
    ),
}


@pytest.mark.parametrize("case", sorted(CHAIN_CASES))
def test_more_chains(rng: np.random.Generator, case: str) -> None:
    """Channels 1 and 4 of a 6-channel layer have zero weights; their biases are 0 and 0.6."""
    text, extra, shapes = CHAIN_CASES[case]
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w1[[1, 4]] = 0.0
    wt = rng.standard_normal((3, 6, 3, 3)).astype(np.float32)
    wt[:, [1, 4]] = 0.0
    b1 = rng.standard_normal(6).astype(np.float32)
    b1[1], b1[4] = 0.0, 0.6
    arrays = {k: rng.standard_normal(v).astype(np.float32) if isinstance(v, tuple) else v for k, v in extra.items()}
    model = build(text, **{"w1": w1, "wt": wt, "b1": b1, **arrays})
    result = check(model)
    assert layer_shapes(result.model) == shapes
    if case == "average-pool-with-padding":
        assert "h: channel(s) [4] kept: AveragePool 'p' averages it with padding" in reasons(result)
    if case == "conv-transpose-both-ends":
        assert "whose borders see it unevenly" in reasons(result)


def test_layer_that_is_consumer_and_producer(rng: np.random.Generator) -> None:
    """The middle MatMul loses input rows (a folded constant, via an inserted Add) and output columns at once."""
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    w1[:, 2] = 0.0
    w2 = rng.standard_normal((6, 5)).astype(np.float32)
    w2[:, [0, 3]] = 0.0
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,3] y) {
          h = MatMul(x, w1)
          hb = Add(h, b1)
          r = Sigmoid(hb)
          k = MatMul(r, w2)
          s = Relu(k)
          y = Gemm(s, w3, b3)
        }
        """,
        w1=w1,
        b1=rng.standard_normal(6).astype(np.float32),
        w2=w2,
        w3=rng.standard_normal((5, 3)).astype(np.float32),
        b3=rng.standard_normal(3).astype(np.float32),
    )
    result = check(model)
    assert layer_shapes(result.model) == [(4, 5), (5, 3), (3, 3)]
    assert ops(result.model) == ["MatMul", "Add", "Sigmoid", "MatMul", "Add", "Relu", "Gemm"]


def test_conv_channel_counts_stay_aligned(rng: np.random.Generator) -> None:
    """By default Conv layers keep a multiple of 8 channels, which onnxruntime's blocked kernels run fastest."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    aligned = ZeroWeightEliminationPass()(model, PassContext())
    shapes = {t.name: tuple(t.dims) for t in aligned.model.graph.initializer}
    assert all(shapes[name][0] % 8 == 0 for name in ("conv1.weight", "conv2.weight"))
    assert shapes["conv2.weight"][0] < 32 and shapes["fc1.weight"][0] < 64
    assert any("multiple of 8" in skip.reason for skip in aligned.skipped)
    every = PASS(model, PassContext())
    assert every.stats["channels_removed"] > aligned.stats["channels_removed"] > 0
    x = np.load(EXAMPLES / "digits.npz")["image"][:64]
    for result in (aligned, every):
        got, want = run_ort(result.model, {"image": x})[0], run_ort(model, {"image": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
