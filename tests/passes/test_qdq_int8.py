"""qdq-int8: placement rules (shared pairs, pass-through, int32 bias, per-channel axis), fusion by onnxruntime,
refusals with reasons, units, bounded calibration memory, and accuracy on the bundled digits model."""

from __future__ import annotations

import collections
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import EXAMPLES, detector, run_ort, text_model
from helpers import calibration as context
from helpers import random_feeds as feeds
from onnx import numpy_helper

import graphopt
from graphopt.data import Dataset, input_specs, load_data, split_indices
from graphopt.errors import PreconditionError
from graphopt.pass_base import PassContext, PassResult
from graphopt_passes import _qdq_calibration as calibration
from graphopt_passes._qdq_calibration import activation_ranges
from graphopt_passes.qdq_int8 import QdqInt8Pass
from graphopt_zoo import available, export_minilm, minilm_dataset

PASS = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", speed_check="off"))
"""Timing is off in unit tests so that they are deterministic; the digits test times in "note" mode."""


def build(text: str, opset: int = 17, **arrays: np.ndarray) -> onnx.ModelProto:
    return text_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}', **arrays)


def weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 2 else shape[0])).astype(np.float32)


def ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def fused_ops(model: onnx.ModelProto, tmp_path: Path) -> collections.Counter[str]:
    """The node types after onnxruntime's graph optimisations (EXTENDED: the QDQ fusions, no layout changes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return ops(onnx.load(str(tmp_path / "optimized.onnx")))


def reasons(result: PassResult) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in result.skipped)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def dq_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == tensor)


def quantizer_of(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    """The QuantizeLinear whose pair restores ``tensor`` (under its own name when it sits behind the producer)."""
    dq = dq_of(model, tensor)
    return next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == dq.input[0])


def check(model: onnx.ModelProto, ctx: PassContext, tol: float = 0.05) -> PassResult:
    """Run the pass and assert: input untouched, full_check, outputs close on held-out inputs, second run no-op."""
    before = model.SerializeToString()
    result = PASS(model, ctx)
    assert model.SerializeToString() == before, "the input model was mutated"
    assert result.modified, reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    held_out = feeds(model, 16, np.random.default_rng(99))
    for optimize in (False, True):
        for want, got in zip(run_ort(model, held_out), run_ort(result.model, held_out, optimize=optimize)):
            assert got.shape == want.shape
            assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    again = PASS(result.model, ctx)
    assert again.modified is False
    return result


def test_matmul_gets_one_pair_per_tensor_and_per_channel_int8_weights(rng: np.random.Generator, tmp_path: Path) -> None:
    model = build(
        "g (float[N,64] x) => (float[N,32] y, float[N,32] z) "
        "{ a = MatMul(x, w1)\n y = Add(a, b1)\n z = MatMul(x, w2) }",
        w1=weight(rng, 64, 32), b1=weight(rng, 32), w2=weight(rng, 64, 32),
    )
    result = check(model, context(model, rng))
    q = result.model
    assert ops(q)["QuantizeLinear"] == 1, "x is read by two layers but quantized once"
    assert ops(q)["DequantizeLinear"] == 4, "x, both weights and the Add's bias"
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert initializer(q, dq_of(q, add.input[1]).input[0]).dtype == np.int32, "the bias Add is the layer's bias"
    constants = {t.name for t in q.graph.initializer}
    for node in q.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in constants and node.output[0] != add.input[1]:
            values = initializer(q, node.input[0])
            assert values.dtype == np.int8 and np.abs(values).max() <= 63  # 7-bit weights
            assert initializer(q, node.input[1]).shape == (32,)  # one scale per output column
            assert next(a.i for a in node.attribute if a.name == "axis") == 1
    fused = fused_ops(q, tmp_path)
    assert fused["MatMulIntegerToFloat"] == 1 and fused["QGemm"] == 1, "MatMul + bias Add fuse into an int8 Gemm"
    assert fused["MatMul"] == fused["Gemm"] == fused["DequantizeLinear"] == 0
    assert result.stats["layers_quantized"] == 2 and result.stats["weight_bits"] == 7


def test_conv_relu_maxpool_conv_shares_scales_and_fuses(rng: np.random.Generator, tmp_path: Path) -> None:
    model = build(
        "g (float[N,16,8,8] x) => (float[N,32,4,4] y) { c = Conv <pads = [1,1,1,1]> (x, w1, b1)\n r = Relu(c)\n"
        " p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)\n y = Conv <pads = [1,1,1,1]> (p, w2, b2) }",
        w1=weight(rng, 32, 16, 3, 3), b1=weight(rng, 32), w2=weight(rng, 32, 32, 3, 3), b2=weight(rng, 32),
    )
    result = check(model, context(model, rng))
    q = result.model
    by_output = {n.output[0]: n for n in q.graph.node}
    relu_q, pool_q = quantizer_of(q, "r"), quantizer_of(q, "p")
    for i in (1, 2):
        assert initializer(q, relu_q.input[i]) == initializer(q, pool_q.input[i]), "MaxPool passes the scale through"
    for conv in (n for n in q.graph.node if n.op_type == "Conv"):
        bias_dq = by_output[conv.input[2]]
        weight_dq = by_output[conv.input[1]]
        x_dq = by_output[conv.input[0]]
        assert initializer(q, bias_dq.input[0]).dtype == np.int32
        expected = initializer(q, x_dq.input[1]) * initializer(q, weight_dq.input[1])
        np.testing.assert_array_equal(initializer(q, bias_dq.input[1]), expected.astype(np.float32))
        assert next(a.i for a in weight_dq.attribute if a.name == "axis") == 0
    fused = fused_ops(q, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["Conv"] == 0
    assert fused["DequantizeLinear"] == 1, "only the model output is dequantized: Relu, MaxPool run on uint8"


def test_a_detector_block_runs_in_int8_from_its_first_conv_to_its_last(rng: np.random.Generator,
                                                                      tmp_path: Path) -> None:
    """Between the quantized Convs, onnxruntime fuses SiLU into QLinearSigmoid and QLinearMul, the Concat into
    QLinearConcat, the residual into QLinearAdd, and runs MaxPool and the nearest Resize on uint8: nothing is
    dequantized until the model output, where layers alone left every element-wise op float between a DQ and a Q."""
    model = detector(rng)
    fused = fused_ops(check(model, context(model, rng)).model, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["QLinearSigmoid"] == 2 and fused["QLinearMul"] == 2
    assert fused["QLinearConcat"] == 1 and fused["QLinearAdd"] == 1
    assert fused["MaxPool"] == 2 and fused["Resize"] == 1
    assert fused["Conv"] == fused["Sigmoid"] == fused["Mul"] == fused["Concat"] == fused["Add"] == 0
    assert fused["DequantizeLinear"] == 1, "only the model output is dequantized"
    layers_only = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", speed_check="off", regions="off"))
    fused = fused_ops(layers_only(model, context(model, rng)).model, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["Sigmoid"] == 2 and fused["QLinearSigmoid"] == 0


def test_regions_auto_offers_layers_only_to_the_speed_gate_where_it_placed_regions(rng: np.random.Generator) -> None:
    """Whether a region pays depends on the CPU's int8 kernels, so under ``regions=auto`` the speed gate times the
    result against layers only; where no region was placed, or the user chose, there is nothing to time."""
    model = detector(rng)
    result = check(model, context(model, rng))
    assert result.stats["region_tensors"] > 0
    (variant,) = PASS.speed_variants(result)
    assert isinstance(variant, QdqInt8Pass) and variant.options == replace(PASS.options, regions="off")
    assert variant(model, context(model, rng)).stats["region_tensors"] == 0
    for regions in ("on", "off"):
        assert QdqInt8Pass(replace(PASS.options, regions=regions)).speed_variants(result) == ()
    plain = build("g (float[N,16,8,8] x) => (float[N,32,8,8] y) { y = Conv <pads = [1,1,1,1]> (x, w, b) }",
                  w=weight(rng, 32, 16, 3, 3), b=weight(rng, 32))
    assert PASS.speed_variants(check(plain, context(plain, rng))) == ()


def test_the_layers_only_variant_reuses_the_measurements_and_gives_what_a_fresh_pass_gives(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed gate's layers-only variant runs on the same model and samples: it measures no range its pass
    measured (a detector's calibration is a third of an int8 run) and its graph is the one a fresh
    ``regions=off`` pass gives."""
    measured: list[list[str]] = []
    real = calibration.activation_ranges

    def counted(model: onnx.ModelProto, names: list[str], *args: object, **kwargs: object) -> calibration.Ranges:
        measured.append(list(names))
        return real(model, names, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(calibration, "activation_ranges", counted)
    model = detector(rng)
    ctx = context(model, rng)
    first = QdqInt8Pass(PASS.options)
    result = first(model, ctx)
    (variant,) = first.speed_variants(result)
    assert len(measured) == 1
    layers_only = variant(model, ctx)
    assert len(measured) == 1, "the variant measured its ranges again"
    fresh = QdqInt8Pass(replace(PASS.options, regions="off"))(model, ctx)
    assert len(measured) == 2 and set(measured[1]) <= set(measured[0])
    assert layers_only.stats == fresh.stats and layers_only.stats["region_tensors"] == 0
    assert layers_only.model.graph.SerializeToString(deterministic=True) == fresh.model.graph.SerializeToString(
        deterministic=True)


def test_a_region_stops_at_a_linear_resize_and_at_a_float_layer(rng: np.random.Generator, tmp_path: Path) -> None:
    """onnxruntime runs Resize in int8 in nearest mode only, so the Add after a linear one cannot fuse; a region
    grows only where it leads on to a quantized layer, so the Concat and the second SiLU, which lead only there, stay
    float too (rounding them would cost accuracy for no int8 kernel). And a region is what its layers make it: with
    the middle Conv left in float, the first SiLU, which now leads only to float ops, stays float."""
    model = detector(rng, mode="linear")
    fused = fused_ops(check(model, context(model, rng)).model, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["QLinearSigmoid"] == fused["QLinearMul"] == 1
    assert fused["Sigmoid"] == fused["Mul"] == fused["Concat"] == fused["Add"] == fused["Resize"] == 1
    assert fused["QLinearConcat"] == fused["QLinearAdd"] == 0
    model = detector(rng)
    ctx = context(model, rng).with_units(frozenset({"c1", "y"}))
    fused = fused_ops(PASS(model, ctx).model, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["Conv"] == 1 and fused["Concat"] == 1
    assert fused["QLinearSigmoid"] == fused["QLinearMul"] == fused["QLinearConcat"] == 0


def test_a_split_between_layers_runs_on_uint8_and_a_tail_into_the_output_stays_float(rng: np.random.Generator,
                                                                                      tmp_path: Path) -> None:
    """A Split shares its input's scale on every output, so onnxruntime drops the pairs around it; the Concat after
    the two last Convs leads only to the model output, so it stays float and keeps the output unrounded by a
    second grid."""
    model = build(
        "g (float[N,16,8,8] x) => (float[N,32,8,8] y) { c = Conv <pads = [1,1,1,1]> (x, w1, b1)\n"
        " a, b = Split <axis = 1> (c, halves)\n ca = Conv <pads = [1,1,1,1]> (a, w2, b2)\n"
        " cb = Conv <pads = [1,1,1,1]> (b, w3, b3)\n y = Concat <axis = 1> (ca, cb) }",
        w1=weight(rng, 32, 16, 3, 3), b1=weight(rng, 32), w2=weight(rng, 16, 16, 3, 3), b2=weight(rng, 16),
        w3=weight(rng, 16, 16, 3, 3), b3=weight(rng, 16), halves=np.array([16, 16], np.int64),
    )
    q = check(model, context(model, rng)).model
    assert quantizer_of(q, "a").input[1] == quantizer_of(q, "b").input[1] == quantizer_of(q, "c").input[1]
    fused = fused_ops(q, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["Split"] == 1 and fused["Concat"] == 1
    assert fused["QLinearConcat"] == 0 and fused["DequantizeLinear"] == 2, "only the Concat's two inputs"


def test_a_region_output_that_is_also_a_model_output_keeps_its_name(rng: np.random.Generator, tmp_path: Path) -> None:
    """A SiLU read by the next Conv and by the caller: it runs in int8 for both, and the model output keeps its
    name behind the DQ (a fused op may feed Qs only)."""
    model = build(
        "g (float[N,16,8,8] x) => (float[N,16,8,8] a, float[N,16,8,8] y) { c = Conv <pads = [1,1,1,1]> (x, w1, b1)\n"
        " s = Sigmoid(c)\n a = Mul(c, s)\n y = Conv <pads = [1,1,1,1]> (a, w2, b2) }",
        w1=weight(rng, 16, 16, 3, 3), b1=weight(rng, 16), w2=weight(rng, 16, 16, 3, 3), b2=weight(rng, 16),
    )
    q = check(model, context(model, rng)).model
    assert [o.name for o in q.graph.output] == ["a", "y"] and dq_of(q, "a").input[0].startswith("a_quantized")
    fused = fused_ops(q, tmp_path)
    assert fused["QLinearSigmoid"] == fused["QLinearMul"] == 1 and fused["QLinearConv"] == 2


def test_region_ops_come_from_this_onnxruntime_kernel_registry(rng: np.random.Generator, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Which ops a region may take is read from the installed onnxruntime (QLinearConcat is registered without type
    constraints, so it is found by name) at the model's opset; an onnxruntime without them quantizes layers only."""
    from graphopt_passes import _qdq_kernels as kernels

    assert {"Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split", "GlobalAveragePool"} <= set(
        kernels.int8_fusions(13))
    assert "MaxPool" not in kernels.int8_fusions(11), "onnxruntime's uint8 MaxPool starts at opset 12"
    assert ("com.microsoft", "QLinearConcat") in {(domain, op) for domain, op, _ in kernels.int8_kernels()}
    monkeypatch.setattr(kernels, "int8_kernels", lambda provider="CPUExecutionProvider": frozenset())
    assert kernels.int8_fusions(13) == {}
    model = detector(rng)
    fused = fused_ops(PASS(model, context(model, rng)).model, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["QLinearSigmoid"] == fused["QLinearConcat"] == 0


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_axis_follows_transB_and_relu_is_owned(rng: np.random.Generator, tmp_path: Path, trans_b: int) -> None:
    shape = (32, 64) if trans_b else (64, 32)
    model = build(
        f"g (float[N,64] x) => (float[N,16] y) {{ h = Gemm <transB = {trans_b}> (x, w, b)\n r = Relu(h)\n"
        " y = MatMul(r, w2) }",
        w=weight(rng, *shape), b=weight(rng, 32), w2=weight(rng, 32, 16),
    )
    result = check(model, context(model, rng))
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    weight_dq = dq_of(result.model, gemm.input[1])
    assert next(a.i for a in weight_dq.attribute if a.name == "axis") == (0 if trans_b else 1)
    assert quantizer_of(result.model, "r"), "the Relu's output is quantized, so the runtime can drop the Relu"
    fused = fused_ops(result.model, tmp_path)
    assert fused["QGemm"] == 1 and fused["Gemm"] == fused["FusedGemm"] == 0


def test_batched_matmul_keeps_a_float_bias_that_correction_still_adjusts(rng: np.random.Generator) -> None:
    model = build(
        "g (float[N,7,64] x) => (float[N,7,32] y) { h = MatMul(x, w)\n y = Add(h, b) }",
        w=weight(rng, 64, 32), b=weight(rng, 32),
    )
    ctx = context(model, rng)
    plain = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", speed_check="off", bias_correction="off"))(model, ctx)
    add = next(n for n in plain.model.graph.node if n.op_type == "Add")
    assert add.input[1] == "b" and plain.stats["biases_int32"] == 0, "nothing would fuse an int32 bias here"
    on = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", speed_check="off", bias_correction="on"))(model, ctx)
    add = next(n for n in on.model.graph.node if n.op_type == "Add")
    corrected = initializer(on.model, add.input[1])
    assert on.stats["biases_corrected"] == 1 and corrected.dtype == np.float32
    assert not np.array_equal(corrected, initializer(model, "b"))


PRE_LN = """g (float[N,64] x) => (float[N,32] y, float[N,16] z) {
  n = LayerNormalization <axis = -1> (x, gamma, beta)
  y = MatMul(n, w1)
  z = MatMul(n, w2)
}"""


def test_smoothing_folds_into_a_pre_ln_layernorm_and_cuts_the_error(rng: np.random.Generator) -> None:
    gamma = np.ones(64, np.float32)
    gamma[:3] = 40.0  # outlier channels after the LayerNorm
    model = build(PRE_LN, gamma=gamma, beta=np.zeros(64, np.float32), w1=weight(rng, 64, 32), w2=weight(rng, 64, 16))
    ctx = context(model, rng, count=256)
    held_out = feeds(model, 64, np.random.default_rng(7))
    want = run_ort(model, held_out)
    errors = {}
    for mode in ("off", "auto"):
        options = QdqInt8Pass.Options(weight_bits="7", speed_check="off", bias_correction="off", smooth=mode)
        result = QdqInt8Pass(options)(model, ctx)
        got = run_ort(result.model, held_out)
        errors[mode] = sum(float(np.linalg.norm(g - w) / np.linalg.norm(w)) for g, w in zip(got, want))
        if mode == "auto":
            assert any("smoothed with alpha" in note for note in result.notes), result.notes
            norm = next(n for n in result.model.graph.node if n.op_type == "LayerNormalization")
            assert initializer(result.model, norm.input[1])[:3].max() < 40.0, "the scale absorbed 1/s"
    assert errors["auto"] < 0.5 * errors["off"], errors


def test_smoothing_is_skipped_when_the_layernorm_output_feeds_a_residual(rng: np.random.Generator) -> None:
    model = build(
        "g (float[N,64] x) => (float[N,64] y) { n = LayerNormalization <axis = -1> (x, gamma, beta)\n"
        " h = MatMul(n, w)\n y = Add(h, n) }",
        gamma=np.ones(64, np.float32), beta=np.zeros(64, np.float32), w=weight(rng, 64, 64),
    )
    result = check(model, context(model, rng))
    assert "no smoothing: output is also read by Add" in reasons(result)


def test_dynamic_mode_fuses_into_dynamic_quantize_matmul_and_leaves_convs(rng: np.random.Generator,
                                                                           tmp_path: Path) -> None:
    model = build(
        "g (float[N,7,64] x, float[N,16,8,8] i) => (float[N,7,32] y, float[N,7,32] z, float[N,32,6,6] c) "
        "{ y = MatMul(x, w1)\n z = MatMul(x, w2)\n c = Conv(i, k) }",
        w1=weight(rng, 64, 32), w2=weight(rng, 64, 32), k=weight(rng, 32, 16, 3, 3),
    )
    pass_ = QdqInt8Pass(QdqInt8Pass.Options(mode="dynamic", weight_bits="7", speed_check="off"))
    ctx = context(model, rng)
    assert [u.name for u in pass_.units(model, ctx)] == ["y", "z"]
    result = pass_(model, ctx)
    assert result.modified and result.stats["layers_quantized"] == 2 and result.stats["tensors_quantized"] == 1
    assert ops(result.model)["DynamicQuantizeLinear"] == 1 and ops(result.model)["MatMulInteger"] == 2
    assert "dynamic mode quantizes weight MatMuls and LSTMs only (Conv stays float)" in reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    held_out = feeds(model, 1, np.random.default_rng(3))
    for optimize in (False, True):
        for want, got in zip(run_ort(model, held_out), run_ort(result.model, held_out, optimize=optimize)):
            assert np.linalg.norm(got - want) <= 0.03 * np.linalg.norm(want)
    fused = fused_ops(result.model, tmp_path)
    assert fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == 2 and fused["MatMulInteger"] == 0
    assert pass_(result.model, ctx).modified is False


def _lstm(rng: np.random.Generator, direction: str, hidden: int = 32, features: int = 48) -> onnx.ModelProto:
    """x[T,N,features] → LSTM (with bias, initial state and sequence lengths as inputs) → its three outputs."""
    directions = 2 if direction == "bidirectional" else 1
    return build(
        f"g (float[T,N,{features}] x, int32[N] lengths, float[{directions},N,{hidden}] h0, "
        f"float[{directions},N,{hidden}] c0) => (float[T,{directions},N,{hidden}] y, "
        f"float[{directions},N,{hidden}] h, float[{directions},N,{hidden}] c) "
        f'{{ y, h, c = LSTM <hidden_size = {hidden}, direction = "{direction}"> (x, w, r, b, lengths, h0, c0) }}',
        w=weight(rng, directions, 4 * hidden, features) / 4, r=weight(rng, directions, 4 * hidden, hidden) / 4,
        b=(rng.standard_normal((directions, 8 * hidden)) / 10).astype(np.float32),
    )


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_dynamic_mode_runs_lstms_in_int8_as_dynamic_quantize_lstm(rng: np.random.Generator, direction: str) -> None:
    """An LSTM becomes onnxruntime's DynamicQuantizeLSTM: the same outputs as the float LSTM with the int8 weights
    written back in float, up to the rounding of the activations it quantizes per step; initial state and sequence
    lengths kept."""
    model = _lstm(rng, direction)
    # 7-bit: the grid that cannot saturate onnxruntime's AVX2 kernels, so that the figures hold on every CPU
    pass_ = QdqInt8Pass(QdqInt8Pass.Options(mode="dynamic", weight_bits="7", speed_check="off"))
    ctx = context(model, rng, 4)  # dynamic mode calibrates nothing
    assert [(u.name, u.detail) for u in pass_.units(model, ctx)] == [
        ("y", f"LSTM {2 if direction == 'bidirectional' else 1}×128×48")]
    before = model.SerializeToString()
    result = pass_(model, ctx)
    assert model.SerializeToString() == before, "the input model was mutated"
    assert result.modified and result.stats["layers_quantized"] == 1 and result.stats["lstms_quantized"] == 1
    onnx.checker.check_model(result.model, full_check=True)
    (node,) = result.model.graph.node
    assert (node.op_type, node.domain) == ("DynamicQuantizeLSTM", "com.microsoft")
    assert any(o.domain == "com.microsoft" for o in result.model.opset_import)
    assert list(node.input[4:7]) == ["lengths", "h0", "c0"]

    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)  # the float LSTM with the stored int8 weights dequantized: what the kernel multiplies by
    for name, stored in (("w", node.input[1]), ("r", node.input[2])):
        values = initializer(result.model, stored).astype(np.float32).transpose(0, 2, 1)
        scale = initializer(result.model, node.input[8 if name == "w" else 10])
        assert initializer(result.model, node.input[9 if name == "w" else 11]).dtype == np.int8
        at = next(i for i, t in enumerate(rounded.graph.initializer) if t.name == name)
        rounded.graph.initializer[at].CopyFrom(numpy_helper.from_array(values * scale[..., None], name))
        original = initializer(model, name)
        assert np.abs(values * scale[..., None] - original).max() <= scale.max() / 2 + 1e-7  # per gate row grid
    directions = 2 if direction == "bidirectional" else 1
    held_out = {"x": rng.standard_normal((6, 3, 48)).astype(np.float32), "lengths": np.array([6, 4, 1], np.int32),
                "h0": rng.standard_normal((directions, 3, 32)).astype(np.float32) / 2,
                "c0": rng.standard_normal((directions, 3, 32)).astype(np.float32) / 2}
    for optimize in (False, True):
        got = run_ort(result.model, held_out, optimize=optimize)
        for want_rounded, want_float, out in zip(run_ort(rounded, held_out), run_ort(model, held_out), got,
                                                 strict=True):
            assert np.linalg.norm(out - want_rounded) <= 0.005 * np.linalg.norm(want_rounded)
            assert np.linalg.norm(out - want_float) <= 0.01 * np.linalg.norm(want_float)
    assert pass_(result.model, ctx).modified is False


def test_lstms_dynamic_int8_cannot_run_are_refused_with_reasons(rng: np.random.Generator) -> None:
    small = _lstm(rng, "forward", hidden=8)
    pass_ = QdqInt8Pass(QdqInt8Pass.Options(mode="dynamic", speed_check="off"))
    ctx = context(small, rng, 2)
    assert "y: too small for int8 to pay off: input 48, hidden 8 (min_dim 16)" in reasons(pass_(small, ctx))
    computed = build(
        "g (float[T,N,16] x, float[1,64,16] w) => (float[T,1,N,16] y) { y = LSTM <hidden_size = 16> (x, w, r) }",
        r=weight(rng, 1, 64, 16))
    assert "y: LSTM weights W and R are not both constants" in reasons(pass_(computed, ctx))
    batch_first = build(
        "g (float[N,T,16] x) => (float[N,T,1,16] y) { y = LSTM <hidden_size = 16, layout = 1> (x, w, r) }",
        w=weight(rng, 1, 64, 16), r=weight(rng, 1, 64, 16))
    assert "batch first" in reasons(pass_(batch_first, ctx))


def test_float_consumers_of_a_quantized_input_keep_the_float_tensor(rng: np.random.Generator) -> None:
    model = build(
        "g (float[N,64] x) => (float[N,64] y) { h = MatMul(x, w)\n y = Add(h, x) }", w=weight(rng, 64, 64)
    )
    result = check(model, context(model, rng))
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    assert "x" in add.input, "the residual reads x, not its rounded copy"


def test_refusals_have_reasons(rng: np.random.Generator) -> None:
    model = build(
        "g (float[N,8] x, float[N,64] u, float[64,N] v) => (float[N,4] y, float[N,N] z, float[N,32,6,6] c) "
        "{ y = MatMul(x, small)\n z = MatMul(u, v)\n c = Conv(img, k) }",
        small=weight(rng, 8, 4), k=weight(rng, 32, 16, 3, 3), img=np.ones((1, 16, 8, 8), np.float32),
    )
    text = reasons(PASS(model, context(model, rng)))
    assert "too small for int8 to pay off" in text
    assert "activation × activation" in text
    assert "both inputs are constants" in text


def test_conv_into_a_graph_output_is_quantized_behind_the_same_name(rng: np.random.Generator, tmp_path: Path) -> None:
    model = build("g (float[N,16,8,8] x) => (float[N,32,6,6] y) { y = Conv(x, k) }", k=weight(rng, 32, 16, 3, 3))
    result = check(model, context(model, rng))
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert dq_of(result.model, "y").input[0].startswith("y_quantized")
    assert fused_ops(result.model, tmp_path)["QLinearConv"] == 1


def _branch(name: str, rng: np.random.Generator, weights: bool = True) -> onnx.GraphProto:
    """An If branch ``x → Conv → Relu → Conv → y_<name>`` whose weights are its own initializers."""
    nodes = [onnx.helper.make_node("Conv", ["x", f"{name}_w1", f"{name}_b1"], [f"{name}_c1"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", [f"{name}_c1"], [f"{name}_r"]),
             onnx.helper.make_node("Conv", [f"{name}_r", f"{name}_w2", f"{name}_b2"], [f"{name}_y"], pads=[1, 1, 1, 1])]
    arrays = {f"{name}_w1": weight(rng, 32, 16, 3, 3), f"{name}_b1": weight(rng, 32),
              f"{name}_w2": weight(rng, 32, 32, 3, 3), f"{name}_b2": weight(rng, 32)}
    return onnx.helper.make_graph(
        nodes, name, [], [onnx.helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()] if weights else [])


def test_layers_inside_if_branches_are_quantized_where_calibration_takes_the_branch(rng: np.random.Generator,
                                                                                  tmp_path: Path) -> None:
    """silero-vad's layers live in the branches of an If on the sample rate. A branch's tensors are measured on the
    samples that take it (threaded out of the If for calibration), and its layers are placed within it; the branch no
    calibration sample took keeps float with the reason, and onnxruntime fuses the branch's QDQ into QLinearConv."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("If", ["c"], ["y"], then_branch=_branch("fast", rng),
                               else_branch=_branch("slow", rng))], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16, 8, 8]),
         onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32, 8, 8])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    x = rng.standard_normal((16, 16, 8, 8)).astype(np.float32)
    ctx = PassContext(calibration=Dataset({"x": x, "c": np.ones(16, bool)}, frozenset({"c"}), False))
    assert sorted(u.name for u in PASS.units(model, ctx)) == ["fast_c1", "fast_y", "slow_c1", "slow_y"]
    result = PASS(model, ctx)
    assert result.modified and result.stats["layers_quantized"] == 2, reasons(result)
    assert reasons(result).count("in an If branch (slow) that no calibration sample took") == 2, reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    fast, slow = (next(a.g for a in result.model.graph.node[0].attribute if a.name == side)
                  for side in ("then_branch", "else_branch"))
    assert collections.Counter(n.op_type for n in fast.node)["QuantizeLinear"] >= 2
    assert not any(n.op_type == "QuantizeLinear" for n in slow.node)
    for flag in (True, False):
        feed = {"x": x[:4], "c": np.array(flag)}
        want, got = run_ort(model, feed)[0], run_ort(result.model, feed)[0]
        if flag:
            cosine = float(np.sum(want * got) / np.linalg.norm(want) / np.linalg.norm(got))
            assert 0.999 < cosine < 1.0, cosine
        else:
            np.testing.assert_array_equal(want, got)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    branch = next(a.g for a in optimized.graph.node[0].attribute if a.name == "then_branch")
    assert collections.Counter(n.op_type for n in branch.node)["QLinearConv"] == 2, [n.op_type for n in branch.node]


def test_branches_that_share_an_outer_weight_and_a_loop_body(rng: np.random.Generator) -> None:
    """Two branches reading one main-graph weight each get their own int8 copy (a MatMul's grid needs only its
    input, an outer tensor measured on every sample); a layer in a Loop body stays float, with the reason."""
    model = build(
        """g (float[N,64] x, bool c) => (float[N,32] y) {
          y = If (c) <then_branch = t () => (float[N,32] a) { a = MatMul(x, w) },
                      else_branch = e () => (float[N,32] b) { b = MatMul(x, w) }>
        }""",
        w=weight(rng, 64, 32),
    )
    ctx = PassContext(calibration=Dataset({"x": rng.standard_normal((8, 64)).astype(np.float32),
                                           "c": np.ones(8, bool)}, frozenset({"c"}), False))
    result = PASS(model, ctx)
    assert result.modified and result.stats["layers_quantized"] == 2, reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    feed = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    for flag in (True, False):
        want, got = run_ort(model, {**feed, "c": np.array(flag)})[0], run_ort(result.model, {**feed, "c": np.array(flag)})[0]
        assert float(np.sum(want * got) / np.linalg.norm(want) / np.linalg.norm(got)) > 0.999
    looped = build(
        """g (float[N,64] x, int64 n, bool c) => (float[N,64] y) {
          y = Loop (n, c, x) <body = b (int64 i, bool cond, float[N,64] h) => (bool out, float[N,64] next) {
              out = Identity(cond)
              next = MatMul(h, w) }>
        }""",
        w=weight(rng, 64, 64),
    )
    result = PASS(looped, PassContext(calibration=Dataset({"x": rng.standard_normal((8, 64)).astype(np.float32),
                                                           "n": np.full(8, 2, np.int64), "c": np.ones(8, bool)},
                                                          frozenset({"n", "c"}), False)))
    assert not result.modified and "inside a Loop body: its tensors change per iteration" in reasons(result)


def test_units_narrow_to_the_selected_layers(rng: np.random.Generator) -> None:
    model = build(
        "g (float[N,64] x) => (float[N,32] y) { h = MatMul(x, w1)\n y = MatMul(h, w2) }",
        w1=weight(rng, 64, 64), w2=weight(rng, 64, 32),
    )
    model.graph.node[0].name, model.graph.node[1].name = "first", "second"
    ctx = context(model, rng)
    assert [u.name for u in PASS.units(model, ctx)] == ["first", "second"]
    only = PASS(model, ctx.with_units(frozenset({"second"})))
    assert only.stats["layers_quantized"] == 1
    assert {n.op_type for n in only.model.graph.node if n.name == "first"} == {"MatMul"}
    assert dq_of(only.model, next(n.input[1] for n in only.model.graph.node if n.name == "second"))
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] == only.model.graph.node[0].input[1]
                   for n in only.model.graph.node)


def test_opset_11_is_upgraded_for_per_channel_weights(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """Upgraded once: narrowing runs the pass once per trial, and the next run of the same model reuses the
    upgrade (the version converter takes longer than the rest of the rewrite)."""
    import graphopt_passes.qdq_int8 as qdq

    upgrades: list[int] = []
    real = qdq.ensure_opset
    monkeypatch.setattr(qdq, "ensure_opset", lambda model, minimum: upgrades.append(minimum) or real(model, minimum))
    model = build("g (float[N,64] x) => (float[N,32] y) { y = MatMul(x, w) }", opset=11, w=weight(rng, 64, 32))
    pass_, ctx = QdqInt8Pass(QdqInt8Pass.Options(speed_check="off")), context(model, rng)
    result, again = pass_(model, ctx), pass_(model, ctx)
    assert any("opset upgraded from 11 to 13" in note for note in result.notes)
    assert any("opset upgraded from 11 to 13" in note for note in again.notes)
    assert upgrades == [13] and again.model.SerializeToString() == result.model.SerializeToString()
    onnx.checker.check_model(again.model, full_check=True)


def test_needs_calibration_samples() -> None:
    model = build("g (float[N,64] x) => (float[N,32] y) { y = MatMul(x, w) }", w=np.ones((64, 32), np.float32))
    with pytest.raises(PreconditionError, match="calibrat"):
        PASS(model, PassContext())


def test_calibration_memory_does_not_grow_with_samples(rng: np.random.Generator) -> None:
    """Observers reduce each batch at once: ten times the samples, the same peak Python-heap memory."""
    model = build(
        "g (float[N,256] x) => (float[N,256] y) { h = MatMul(x, w)\n r = Relu(h)\n y = MatMul(r, w) }",
        w=weight(rng, 256, 256),
    )
    peaks = []
    for count in (256, 2560):
        data = Dataset({"x": rng.standard_normal((count, 256)).astype(np.float32)}, frozenset(), True)
        tracemalloc.start()
        ranges = activation_ranges(model, ["x", "r"], PassContext(calibration=data), "mse", percentile=99.99,
                                   signed=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert isinstance(ranges, dict) and ranges["r"][0] == 0.0 < ranges["r"][1]
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_digits_model_within_budget_with_accuracy_kept(tmp_path: Path) -> None:
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model))
    result = graphopt.optimize(model, data, passes="qdq-int8{speed_check=note}", output=tmp_path / "int8.onnx")
    record = result.report.record("qdq-int8")
    assert record.name == "qdq-int8" and record.status == "applied", record
    assert record.stats["latency_ratio"] > 0
    labels = np.load(EXAMPLES / "digits_labels.npy")
    _, held_out = data.split(0.5)
    index = split_indices(data.n_samples)[1]  # same split
    accuracy = [float(np.mean(np.argmax(run_ort(m, held_out.arrays)[0], axis=1) == labels[index]))
                for m in (model, result.model)]
    assert accuracy[1] >= accuracy[0] - 0.01, accuracy
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (EXAMPLES / "digits_cnn.onnx").stat().st_size


@pytest.mark.skipif(bool(available()), reason=available() or "")
def test_minilm_embeddings_within_budget_with_every_weight_matmul_in_int8(tmp_path: Path) -> None:
    """The sentence embedder that onnxruntime's static int8 breaks (cosine 0.35 here) stays within the budget, and
    onnxruntime runs all 36 weight MatMuls as int8 kernels."""
    model = onnx.load(str(export_minilm()))
    data = load_data(minilm_dataset(tmp_path, 96), input_specs(model))
    result = graphopt.optimize(model, data, passes="qdq-int8{speed_check=off}")
    record = result.report.record("qdq-int8")
    assert record.status in ("applied", "narrowed"), record
    assert all(v["passed"] for v in record.verifications), record.verifications
    assert fused_ops(result.model, tmp_path)["MatMulIntegerToFloat"] + fused_ops(result.model, tmp_path)["QGemm"] >= 30


def test_bias_correction_removes_the_mean_shift_of_coarse_weights(rng: np.random.Generator) -> None:
    """Depthwise 3×3 kernels (9 weights a channel) on one per-tensor grid: small channels round coarsely and shift
    their mean output; the corrected bias brings the held-out per-channel mean error down."""
    kernel = (rng.standard_normal((32, 1, 3, 3)) * np.geomspace(1.0, 0.01, 32)[:, None, None, None]).astype(np.float32)
    model = build(
        "g (float[N,32,8,8] x) => (float[N,32,6,6] y) { r = Relu(x)\n y = Conv <group = 32> (r, k, b) }",
        k=kernel, b=np.zeros(32, np.float32),
    )
    ctx = context(model, rng, count=256)
    held_out = feeds(model, 256, np.random.default_rng(7))
    want = run_ort(model, held_out)[0]
    shift = {}
    for correct in (False, True):
        options = QdqInt8Pass.Options(weight_bits="7", per_channel=False, min_dim=1, speed_check="off",
                                      bias_correction="on" if correct else "off")
        result = QdqInt8Pass(options)(model, ctx)
        assert result.stats["biases_corrected"] == (1 if correct else 0)
        shift[correct] = np.abs((run_ort(result.model, held_out)[0] - want).mean(axis=(0, 2, 3))).mean()
    assert shift[True] < 0.5 * shift[False], shift
    auto = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", per_channel=False, min_dim=1, speed_check="off"))(model, ctx)
    assert auto.stats["biases_corrected"] == 1 and any("bias correction kept" in n for n in auto.notes), auto.notes


def test_bias_correction_found_to_hurt_is_left_out_of_later_runs_without_building_twice(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bias_correction=auto`` decides once, on calibration samples; a narrowing search then runs the pass once per
    trial, and each of those builds the model it keeps, only: corrected when correction helped, plain when not."""
    import graphopt_passes.qdq_int8 as qdq

    kernel = (rng.standard_normal((32, 1, 3, 3)) * np.geomspace(1.0, 0.01, 32)[:, None, None, None]).astype(np.float32)
    model = build("g (float[N,32,8,8] x) => (float[N,32,6,6] y) { r = Relu(x)\n y = Conv <group = 32> (r, k, b) }",
                  k=kernel, b=np.zeros(32, np.float32))
    ctx = context(model, rng, count=64)
    monkeypatch.setattr(qdq, "_closer", lambda *args: False)  # as if correction brought the outputs further away
    builds: list[bool] = []
    real = QdqInt8Pass._build

    def counted(self: QdqInt8Pass, *args: object, correct: bool) -> object:
        builds.append(correct)
        return real(self, *args, correct=correct)  # type: ignore[arg-type]

    monkeypatch.setattr(QdqInt8Pass, "_build", counted)
    pass_ = QdqInt8Pass(QdqInt8Pass.Options(weight_bits="7", per_channel=False, min_dim=1, speed_check="off"))
    first = pass_(model, ctx)
    assert builds == [True, False] and first.stats["biases_corrected"] == 0
    assert any("bias correction dropped" in n for n in first.notes), first.notes
    builds.clear()
    again = pass_(model, ctx)
    assert builds == [False] and again.stats["biases_corrected"] == 0
    assert again.model.SerializeToString() == first.model.SerializeToString()


@pytest.mark.parametrize("bits", ["7", "8"])  # what weight_bits=auto picks without and with VNNI: both CPU kinds
def test_narrowing_streams_bias_correction_means_once_not_once_per_unit(bits: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrowing places each unit alone next: the first stream measures every layer on its own input's grid too,
    so the search runs one calibration stream for bias correction where it ran one per unit."""
    from helpers import digits

    streams: list[int] = []
    real = calibration.channel_means

    def counted(model: onnx.ModelProto, keys: list, *args: object) -> dict:
        streams.append(len(keys))
        return real(model, keys, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(calibration, "channel_means", counted)
    model, data = digits(400)
    result = graphopt.optimize(model, data, passes=f"qdq-int8{{speed_check=off,weight_bits={bits}}}", normalize=False,
                               tolerance=graphopt.Tolerance(cosine=0.99999, top1=0.99))
    (outcome,) = result.pipeline.outcomes
    assert outcome.trials >= len(outcome.units) >= 2, "every unit measured alone"
    assert len(streams) == 1, streams
