"""qdq-int8 with target=tensorrt: TensorRT's explicit-quantization placement (passes/_qdq_targets.py), checked on
the graph structure, since TensorRT itself cannot run here; the models still run in onnxruntime's CPU provider."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, run_ort, text_model
from helpers import calibration as context
from helpers import random_feeds as feeds
from onnx import numpy_helper

import graphopt
from graphopt.data import input_specs, load_data, split_indices
from graphopt.pass_base import PassContext, PassResult
from graphopt_passes.qdq_int8 import QdqInt8Pass

PASS = QdqInt8Pass(QdqInt8Pass.Options(target="tensorrt"))
ORT = QdqInt8Pass(QdqInt8Pass.Options(target="ort-cpu", weight_bits="7", speed_check="off"))
LAYERS = ("Conv", "MatMul", "Gemm")

CONV_NET = """g (float[N,16,8,8] x) => (float[N,32,4,4] y) {
  c = Conv <pads = [1,1,1,1]> (x, w1, b1)
  r = Relu(c)
  p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
  y = Conv <pads = [1,1,1,1]> (p, w2, b2)
}"""

MLP = """g (float[N,64] x) => (float[N,16] y) {
  h = MatMul(x, w1)
  a = Add(h, b1)
  r = Relu(a)
  g1 = Gemm <transB = 1> (r, w2, b2)
  s = Relu(g1)
  y = Gemm (s, w3, b3)
}"""

RESIDUAL = """g (float[N,32,8,8] x) => (float[N,32,8,8] y) {
  c = Conv <pads = [1,1,1,1]> (x, w1, b1)
  r = Relu(c)
  d = Conv <pads = [1,1,1,1]> (r, w2, b2)
  a = Add(d, x)
  y = Relu(a)
}"""


def build(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    return text_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{text}', **arrays)


def weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 2 else shape[0])).astype(np.float32)


def ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def made(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    node = producer(model, tensor)
    assert node is not None, f"nothing makes {tensor}"
    return node


def readers(model: onnx.ModelProto, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
    return [(n, i) for n in model.graph.node for i, t in enumerate(n.input) if t == tensor]


def quantizers_of(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]


def activation_dq(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The DequantizeLinear that restores ``tensor`` after its one QuantizeLinear."""
    (q,) = quantizers_of(model, tensor)
    return next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])


def axis(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def assert_tensorrt_placement(model: onnx.ModelProto) -> None:
    """The rules of passes/_qdq_targets.py for tensorrt, on the structure of a quantized model."""
    values = constants(model)
    assert not any(v.dtype == np.uint8 for v in values.values()), "no uint8 anywhere"
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = values[node.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), f"{node.name}: symmetric int8, zero point 0"
        if node.op_type == "QuantizeLinear":
            assert values[node.input[1]].ndim == 0, "activations are quantized per tensor"
            assert len(readers(model, node.output[0])) == 1, "a Q feeds its own DQ only"
            made_by = producer(model, node.input[0])
            if made_by is not None and made_by.op_type in LAYERS:
                dq = next(n for n, _ in readers(model, node.output[0]))
                assert readers(model, dq.output[0]), "a layer's output is quantized only for a quantized reader"
            continue
        weighted = node.input[0] in values
        for reader, index in readers(model, node.output[0]):
            if weighted:
                assert values[node.input[0]].dtype == np.int8 and index == 1 and reader.op_type in LAYERS
                trans_b = next((a.i for a in reader.attribute if a.name == "transB"), 0)
                expected = {"Conv": 0, "MatMul": 1, "Gemm": 0 if trans_b else 1}[reader.op_type]
                assert axis(node) == expected, f"{reader.op_type} weight per channel on axis {expected}"
                assert values[node.input[1]].shape == (values[node.input[0]].shape[expected],)
            elif reader.op_type in LAYERS:
                assert index == 0, "activation pairs sit on the layer's data input"
                assert made(model, reader.input[1]).op_type == "DequantizeLinear", "…of a quantized layer"
            else:
                assert reader.op_type == "Add", f"only layers and residual Adds read an activation DQ: {reader}"
        assert node.output[0] not in outputs, "graph outputs stay float"
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            assert values[node.input[2]].dtype == np.float32, f"{node.name}: the bias stays float for TensorRT to fold"


def check(model: onnx.ModelProto, ctx: PassContext, tol: float = 0.05) -> PassResult:
    """Run the tensorrt pass and assert the placement rules, full_check, close ORT outputs and a no-op rerun."""
    result = PASS(model, ctx)
    assert result.modified, result.skipped
    assert_tensorrt_placement(result.model)
    onnx.checker.check_model(result.model, full_check=True)
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    held_out = feeds(model, 16, np.random.default_rng(99))
    for optimize in (False, True):
        for want, got in zip(run_ort(model, held_out), run_ort(result.model, held_out, optimize=optimize)):
            assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    gate = PASS.speed_check()
    assert gate.mode == "off", "speed_check=auto does not time a TensorRT model on this CPU"
    assert any("speed not checked: tensorrt" in note for note in gate.notes), gate.notes
    assert PASS(result.model, ctx).modified is False
    return result


def test_conv_net_quantizes_layer_inputs_only(rng: np.random.Generator) -> None:
    model = build(CONV_NET, w1=weight(rng, 32, 16, 3, 3), b1=weight(rng, 32), w2=weight(rng, 32, 32, 3, 3),
                  b2=weight(rng, 32))
    ctx = context(model, rng)
    q = check(model, ctx).model
    assert ops(q)["QuantizeLinear"] == 2 and ops(q)["DequantizeLinear"] == 4, "x, p; two weights; no bias DQ"
    assert quantizers_of(q, "x") and quantizers_of(q, "p"), "the Convs' data inputs"
    assert not quantizers_of(q, "c") and not quantizers_of(q, "r"), "TensorRT fuses Conv+Relu and the Q after it"
    assert {n.input[0] for n in q.graph.node if n.op_type == "MaxPool"} == {"r"}, "MaxPool reads the float tensor"
    ort = ORT(model, ctx).model
    assert quantizers_of(ort, "r_float"), "ort-cpu quantizes the Relu's output for QLinearConv"
    assert ops(ort)["DequantizeLinear"] == 8, "ort-cpu: x, r, p, y; two weights; two int32 biases"


def test_mlp_weight_axes_follow_the_output_channel(rng: np.random.Generator) -> None:
    model = build(MLP, w1=weight(rng, 64, 32), b1=weight(rng, 32), w2=weight(rng, 32, 32), b2=weight(rng, 32),
                  w3=weight(rng, 32, 16), b3=weight(rng, 16))
    result = check(model, context(model, rng))
    q = result.model
    assert {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"} == {"x", "r", "s"}
    assert result.stats["layers_quantized"] == 3 and result.stats["biases_int32"] == 0
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert add.input[1] in constants(q), "the MatMul's bias Add keeps a float bias"
    gemms = [n for n in q.graph.node if n.op_type == "Gemm"]
    assert [axis(made(q, g.input[1])) for g in gemms] == [0, 1], "transB=1 → axis 0, transB=0 → axis 1"
    assert axis(made(q, next(n for n in q.graph.node if n.op_type == "MatMul").input[1])) == 1
    assert result.stats["weight_bits"] == 8 and np.abs(constants(q)[made(q, gemms[0].input[1]).input[0]]).max() > 63


def test_a_tensor_read_by_two_layers_shares_one_pair(rng: np.random.Generator) -> None:
    """One pair a tensor, not one per reader (DedicatedQDQPair): TensorRT clones shared Q/DQ itself."""
    model = build(
        "g (float[N,64] x) => (float[N,32] y, float[N,32] z, float[N,64] u) "
        "{ y = MatMul(x, w1)\n z = MatMul(x, w2)\n u = Sigmoid(x) }",
        w1=weight(rng, 64, 32), w2=weight(rng, 64, 32),
    )
    q = check(model, context(model, rng)).model
    dq = activation_dq(q, "x")
    assert sorted(n.op_type for n, _ in readers(q, dq.output[0])) == ["MatMul", "MatMul"]
    assert next(n for n in q.graph.node if n.op_type == "Sigmoid").input[0] == "x", "a float reader keeps x"


def test_residual_add_quantizes_the_skip_input_and_leaves_the_conv_output_float(rng: np.random.Generator) -> None:
    model = build(RESIDUAL, w1=weight(rng, 32, 32, 3, 3), b1=weight(rng, 32), w2=weight(rng, 32, 32, 3, 3),
                  b2=weight(rng, 32))
    q = check(model, context(model, rng)).model
    add = next(n for n in q.graph.node if n.op_type == "Add")
    dq = activation_dq(q, "x")
    assert add.input[0] == "d" and add.input[1] == dq.output[0], "main branch float, skip branch int8"
    assert sorted(n.op_type for n, _ in readers(q, dq.output[0])) == ["Add", "Conv"], "one pair for Conv and Add"
    assert not quantizers_of(q, "d") and not quantizers_of(q, "a") and not quantizers_of(q, "y")


def test_no_residual_pair_when_the_conv_output_is_read_elsewhere(rng: np.random.Generator) -> None:
    """TensorRT fuses the Add into the Conv only when the Add alone reads the Conv's output."""
    text = RESIDUAL.replace("=> (float[N,32,8,8] y)", "=> (float[N,32,8,8] y, float[N,32,8,8] d)")
    model = build(text, w1=weight(rng, 32, 32, 3, 3), b1=weight(rng, 32), w2=weight(rng, 32, 32, 3, 3),
                  b2=weight(rng, 32))
    q = check(model, context(model, rng)).model
    assert next(n for n in q.graph.node if n.op_type == "Add").input[:] == ["d", "x"]


def test_dynamic_mode_is_refused_for_tensorrt(rng: np.random.Generator) -> None:
    model = build("g (float[N,64] x) => (float[N,32] y) { y = MatMul(x, w) }", w=weight(rng, 64, 32))
    result = QdqInt8Pass(QdqInt8Pass.Options(target="tensorrt", mode="dynamic"))(model, context(model, rng))
    assert not result.modified
    assert "MatMulInteger, which tensorrt does not run" in result.skipped[0].reason


def test_digits_model_within_budget_with_the_tensorrt_placement(tmp_path: Path) -> None:
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model))
    result = graphopt.optimize(model, data, passes="qdq-int8{target=tensorrt}", output=tmp_path / "trt.onnx")
    record = result.report.record("qdq-int8")
    assert record.status == "applied", record
    assert all(v["passed"] for v in record.verifications), record.verifications
    assert "latency_ratio" not in record.stats
    q = onnx.load(str(tmp_path / "trt.onnx"))
    onnx.checker.check_model(q, full_check=True)
    assert_tensorrt_placement(q)
    assert {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"} == {"relu1_out", "flat"}
    labels = np.load(EXAMPLES / "digits_labels.npy")
    _, held_out = data.split(0.5)
    index = split_indices(data.n_samples)[1]
    accuracy = [float(np.mean(np.argmax(run_ort(m, held_out.arrays)[0], axis=1) == labels[index])) for m in (model, q)]
    assert accuracy[1] >= accuracy[0] - 0.01, accuracy


@pytest.mark.parametrize("target", ["ort-cpu", "openvino"])
def test_other_targets_keep_the_onnxruntime_placement(rng: np.random.Generator, target: str) -> None:
    model = build(RESIDUAL, w1=weight(rng, 32, 32, 3, 3), b1=weight(rng, 32), w2=weight(rng, 32, 32, 3, 3),
                  b2=weight(rng, 32))
    result = QdqInt8Pass(QdqInt8Pass.Options(target=target, weight_bits="7", speed_check="off"))(model,
                                                                                               context(model, rng))
    q = result.model
    assert next(n for n in q.graph.node if n.op_type == "Add").input[1] == "x", "the residual stream stays float"
    assert result.stats["biases_int32"] == 2
    assert all(constants(q)[n.input[2]].dtype == np.uint8 for n in q.graph.node if n.op_type == "QuantizeLinear")
