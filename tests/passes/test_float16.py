"""float16: fp16 regions with float32 IO and Casts only at their borders, the block list, kernels the runtime lacks,
overflowing constants and activations kept float32, dtype attributes, weights mode; digits and MiniLM verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, calibration, random_feeds, run_ort, text_model

import graphopt
import graphopt_zoo as zoo
from graphopt.data import Dataset, input_specs, load_data
from graphopt.pass_base import PassContext
from graphopt_passes.float16 import Float16Pass, fp16_kernels

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

BLOCK = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8] x) => (float[N,8] y) {
  h = MatMul(x, w)\n a = Add(h, b)\n r = Relu(a)
  n = LayerNormalization <axis = -1> (r, scale, bias)\n y = Softmax <axis = -1> (n) }"""


def half(**options: object) -> Float16Pass:
    return Float16Pass(Float16Pass.Options(**options))  # type: ignore[arg-type]


def block_model(rng: np.random.Generator) -> onnx.ModelProto:
    return text_model(BLOCK, w=rng.standard_normal((8, 8)).astype(np.float32),
                      b=rng.standard_normal(8).astype(np.float32), scale=np.ones(8, np.float32) * 1.5,
                      bias=rng.standard_normal(8).astype(np.float32))


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def assert_casts_only_at_borders(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The float-to-float Casts: each joins a float32 tensor and a float16 one (none is float16 → float16)."""
    types = elem_types(model)
    floats = {FLOAT, HALF}
    casts = [n for n in model.graph.node if n.op_type == "Cast" and types[n.input[0]] in floats]
    for cast in casts:
        assert {types[cast.input[0]], types[cast.output[0]]} == floats, cast
    assert all(v.type.tensor_type.elem_type != HALF for v in [*model.graph.input, *model.graph.output])
    return casts


def test_fp16_region_with_casts_only_at_its_borders(rng: np.random.Generator) -> None:
    model = block_model(rng)
    before = model.SerializeToString()
    result = half(kernels="any")(model, calibration(model, rng))
    assert model.SerializeToString() == before
    assert result.modified and result.stats["nodes_fp16"] == 4 and result.stats["nodes_fp32"] == 1
    onnx.checker.check_model(result.model, full_check=True)
    casts = assert_casts_only_at_borders(result.model)
    assert len(casts) == result.stats["casts_inserted"] == 2  # x into the region, LayerNorm's output out of it
    types = elem_types(result.model)
    ops = {n.op_type: n for n in result.model.graph.node}
    assert types[ops["MatMul"].output[0]] == HALF and types[ops["Softmax"].input[0]] == FLOAT
    assert all(t.data_type == HALF for t in result.model.graph.initializer)
    assert result.stats["bytes_after"] * 2 == result.stats["bytes_before"]
    assert any(s.target == "y" or "Softmax" in s.reason for s in result.skipped)
    feeds = random_feeds(model, 16, rng)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], atol=5e-3)
    again = half(kernels="any")(result.model, calibration(result.model, rng))
    assert not again.modified


def test_ops_without_a_cpu_fp16_kernel_stay_float32(rng: np.random.Generator) -> None:
    kernels = {op for domain, op, _ in fp16_kernels() if domain == ""}
    assert "LayerNormalization" in kernels and "MatMul" not in kernels  # onnxruntime's x86 CPU EP
    model = block_model(rng)
    result = half()(model, calibration(model, rng))
    reasons = {s.target: s.reason for s in result.skipped}
    assert "no float16 MatMul kernel" in reasons["h"] and "no float16 Relu kernel" in reasons["r"]
    assert result.stats["nodes_fp16"] == 1  # the LayerNorm, between two Casts
    assert len(assert_casts_only_at_borders(result.model)) == 2
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, 16, rng)
    np.testing.assert_allclose(run_ort(result.model, feeds, optimize=True)[0], run_ort(model, feeds)[0], atol=5e-3)


def test_overflowing_constant_and_activation_stay_float32(rng: np.random.Generator) -> None:
    model = text_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { big = Mul(x, c)\n m = Mul(x, k)\n s = Mul(m, k)\n y = Add(big, s) }""",
                       c=np.full(4, 1e6, np.float32), k=np.full(4, 100.0, np.float32))
    result = half(kernels="any")(model, calibration(model, rng))
    reasons = {s.target: s.reason for s in result.skipped}
    assert "constant 'c'" in reasons["big"] and "overflow" in reasons["big"]
    assert "exceeds float16's max" in reasons["s"]  # |x|·10⁴ × margin 4 > 65504 on calibration samples
    assert result.modified and result.stats["nodes_fp16"] == 1  # m = x·100 alone
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, 8, rng)
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=2e-3)


def test_dtype_attributes_follow(rng: np.random.Generator) -> None:
    model = text_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x, int64[N,4] i) => (float[N,4] y) {
  shape = Shape(x)\n ones = ConstantOfShape <value = float[1] {2.0}> (shape)\n f = Cast <to = 1> (i)
  a = Add(x, ones)\n y = Mul(a, f) }""")
    result = half(kernels="any")(model, calibration(model, rng))
    onnx.checker.check_model(result.model, full_check=True)
    ops = {n.op_type: n for n in result.model.graph.node if n.op_type != "Cast" or n.input[0] == "i"}
    assert onnx.helper.get_attribute_value(ops["Cast"].attribute[0]) == HALF
    assert ops["ConstantOfShape"].attribute[0].t.data_type == HALF
    assert len(assert_casts_only_at_borders(result.model)) == result.stats["casts_inserted"] == 2  # x in, y out
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32), "i": rng.integers(-5, 5, (3, 4))}
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=2e-3)


def test_subgraph_left_float32(rng: np.random.Generator) -> None:
    model = text_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x, bool c) => (float[N,4] y) {
  t = Relu(x)
  y = If(c) <then_branch = g1 () => (float[N,4] o) { o = Add(t, t) },
             else_branch = g2 () => (float[N,4] o) { o = Neg(t) }> }""")
    result = half(kernels="any")(model, calibration(model, rng))
    reasons = {s.target: s.reason for s in result.skipped}
    assert "subgraph" in reasons["y"]
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"x": rng.standard_normal((2, 4)).astype(np.float32), "c": np.array(True)}
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=2e-3)


def test_weights_mode_halves_initializers(rng: np.random.Generator) -> None:
    model = block_model(rng)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(4, dtype=np.int64), "unused_ints"))
    result = half(mode="weights", min_size=8)(model, PassContext())
    assert result.modified and result.stats["casts_inserted"] == 4
    sizes = {t.name: t.data_type for t in result.model.graph.initializer}
    assert sorted(sizes.values()) == [onnx.TensorProto.INT64] + [HALF] * 4
    assert result.stats["bytes_after"] - 32 == (result.stats["bytes_before"] - 32) // 2
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, 8, rng)
    np.testing.assert_allclose(run_ort(result.model, feeds, optimize=True)[0], run_ort(model, feeds)[0], atol=2e-3)
    assert not half(mode="weights", min_size=8)(result.model, PassContext()).modified
    big = block_model(rng)
    big.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.full((8, 8), 1e5, np.float32), "w"))
    kept = half(mode="weights", min_size=8)(big, PassContext())
    assert any(s.target == "w" and "overflow" in s.reason for s in kept.skipped)
    assert {t.name for t in kept.model.graph.initializer if t.data_type == FLOAT} == {"w"}


def test_digits_verified() -> None:
    data = EXAMPLES / "digits.npz"
    compute = graphopt.optimize(EXAMPLES / "digits_cnn.onnx", data, passes=[half(kernels="any")])
    record = compute.report.record("float16")
    assert record.status == "applied", record.reason
    assert record.stats["nodes_fp16"] == 9 and record.size_after < 0.52 * record.size_before
    assert record.worst is not None and record.worst["cosine"] >= 0.99
    runtime = graphopt.optimize(EXAMPLES / "digits_cnn.onnx", data, passes=[half()]).report.record("float16")
    assert runtime.status != "applied" and any("no float16 Conv kernel" in s["reason"] for s in runtime.skipped)


@pytest.mark.skipif(bool(zoo.available()), reason=zoo.available() or "")
def test_minilm_both_modes_verified(tmp_path: Path) -> None:
    model = onnx.load(str(zoo.export_minilm()))
    data = load_data(zoo.minilm_dataset(tmp_path, n=64), input_specs(model))
    result = graphopt.optimize(model, data, passes=[half(samples=8), half(mode="weights")])
    compute, weights = (p for p in result.report.passes if p.name == "float16")
    for record in (compute, weights):
        assert record.status == "applied", record.reason
        assert record.worst is not None and record.worst["cosine"] >= 0.999
        print(record.name, record.stats, "cosine", record.worst["cosine"])
    assert compute.stats["nodes_fp16"] > 0
    assert any("no float16 MatMul kernel" in s["reason"] for s in compute.skipped)
    assert result.model.ByteSize() < 0.51 * model.ByteSize()
    onnx.checker.check_model(result.model, full_check=True)


def test_bitcast_and_scatter_reductions_stay_float32(rng: np.random.Generator) -> None:
    """onnx's ``test_bitcast_*`` and ``test_scatternd_add`` (robustness corpus): a float16 BitCast input fails the
    full check (16 bits cannot become int32), and onnxruntime registers float16 ScatterND/ScatterElements kernels
    but refuses them at run time with a reduction; both candidates were rolled back, losing every other node."""
    model = text_model("""<ir_version: 13, opset_import: ["" : 26]>
g (float[N,4] x, int64[2,1] i, float[2,4] u) => (int32[N,4] y, float[N,4] z) {
  n = LayerNormalization <axis = -1> (x, scale, bias)\n y = BitCast <to = 6> (n)
  s = ScatterND <reduction = "add"> (x, i, u)\n z = LayerNormalization <axis = -1> (s, scale, bias) }""",
                       scale=np.ones(4, np.float32), bias=np.zeros(4, np.float32))
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32), "i": np.array([[0], [2]]),
             "u": rng.standard_normal((2, 4)).astype(np.float32)}
    context = PassContext(calibration=Dataset({k: v[None] for k, v in feeds.items()}, frozenset(feeds), False))
    result = half()(model, context)
    reasons = {s.target: s.reason for s in result.skipped}
    assert "reinterprets the bits" in reasons["y"] and "reduction 'add'" in reasons["s"]
    assert result.modified and result.stats["nodes_fp16"] == 2 and not result.notes  # the two LayerNorms
    onnx.checker.check_model(result.model, full_check=True)
    got, want = run_ort(result.model, feeds), run_ort(model, feeds)
    assert got[0].dtype == np.int32
    np.testing.assert_allclose(got[1], want[1], atol=5e-3)
    assert not half()(result.model, context).modified
