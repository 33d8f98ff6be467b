"""dead-neuron-removal: dead ReLU channels go from producer and readers with outputs unchanged; alignment; refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import DEPTHWISE, EXAMPLES, calibration, random_feeds, run_ort, text_model

import graphopt
from graphopt.data import input_specs, load_data
from graphopt.errors import PreconditionError
from graphopt.pass_base import PassContext
from graphopt_passes.dead_neuron_removal import DeadNeuronRemovalPass

MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16] x) => (float[N,10] y) { h = Gemm(x, w1, b1)\n r = Relu(h)\n y = Gemm(r, w2, b2) }"""

CNN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,8,6,6] x) => (float[N,4,4,4] y) {
  c = Conv(x, k1, c1)
  r = Relu(c)
  y = Conv(r, k2, c2)
}"""


def mlp(rng: np.random.Generator, dead: int) -> onnx.ModelProto:
    b1 = rng.standard_normal(32).astype(np.float32)
    b1[:dead] = -100.0  # never fires for standard-normal inputs
    return text_model(MLP, w1=(rng.standard_normal((16, 32)) / 4).astype(np.float32), b1=b1,
                      w2=rng.standard_normal((32, 10)).astype(np.float32), b2=rng.standard_normal(10).astype(np.float32))


def test_dead_relu_channels_are_removed_and_outputs_kept(rng: np.random.Generator) -> None:
    model = mlp(rng, dead=5)
    before = model.SerializeToString()
    result = DeadNeuronRemovalPass()(model, calibration(model, rng, count=256))
    assert model.SerializeToString() == before
    assert result.modified and result.stats["channels_removed"] == 5
    onnx.checker.check_model(result.model, full_check=True)
    weights = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert sorted(weights.values()) == sorted([[16, 27], [27], [27, 10], [10]])
    held_out = random_feeds(model, 64, np.random.default_rng(5))
    np.testing.assert_allclose(run_ort(result.model, held_out)[0], run_ort(model, held_out)[0], rtol=1e-5, atol=1e-5)
    assert DeadNeuronRemovalPass()(result.model, calibration(result.model, rng, count=256)).modified is False


def test_conv_channel_counts_stay_aligned(rng: np.random.Generator) -> None:
    bias = rng.standard_normal(16).astype(np.float32)
    bias[:11] = -100.0
    model = text_model(CNN, k1=(rng.standard_normal((16, 8, 1, 1)) / 3).astype(np.float32), c1=bias,
                       k2=rng.standard_normal((4, 16, 3, 3)).astype(np.float32), c2=np.zeros(4, np.float32))
    ctx = calibration(model, rng, count=64)
    aligned = DeadNeuronRemovalPass()(model, ctx)
    assert aligned.stats["channels_removed"] == 8, "16 - 8 keeps a multiple of 8; three dead channels stay"
    free = DeadNeuronRemovalPass(DeadNeuronRemovalPass.Options(align=1))(model, ctx)
    assert free.stats["channels_removed"] == 11
    held_out = random_feeds(model, 16, np.random.default_rng(9))
    for result in (aligned, free):
        np.testing.assert_allclose(run_ort(result.model, held_out)[0], run_ort(model, held_out)[0], rtol=1e-4,
                                   atol=1e-4)


def test_live_model_and_missing_data(rng: np.random.Generator) -> None:
    model = mlp(rng, dead=0)
    result = DeadNeuronRemovalPass()(model, calibration(model, rng, count=256))
    assert not result.modified
    with pytest.raises(PreconditionError, match="calibration"):
        DeadNeuronRemovalPass()(model, PassContext())


def test_units_name_the_layers_with_dead_channels(rng: np.random.Generator) -> None:
    model = mlp(rng, dead=3)
    model.graph.node[0].name = "fc1"
    units = DeadNeuronRemovalPass().units(model, calibration(model, rng, count=128))
    assert [(u.name, u.detail) for u in units] == [("fc1", "3 dead channel(s)")]


def test_digits_model_loses_its_dead_channels_and_keeps_its_accuracy() -> None:
    """The bundled model's group-sparse channels are dead on real digits, and so are a few ReLUs with live weights."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model))
    result = graphopt.optimize(model, data, passes="dead-neuron-removal")
    record = result.report.record("dead-neuron-removal")
    assert record.status == "applied" and record.stats["channels_removed"] > 36, record  # 36: the all-zero ones
    labels = np.load(EXAMPLES / "digits_labels.npy")
    accuracy = [float(np.mean(np.argmax(run_ort(m, data.arrays)[0], axis=1) == labels)) for m in (model, result.model)]
    assert accuracy[1] >= accuracy[0] - 0.005, accuracy



def test_dead_channels_pass_through_a_padded_depthwise_conv(rng: np.random.Generator) -> None:
    """A dead ReLU (0) meets the depthwise filter's zero padding unchanged: its output is the bias, folded on."""
    c1 = rng.standard_normal(8).astype(np.float32)
    c1[[2, 5]] = -100.0
    model = text_model(DEPTHWISE, k1=(rng.standard_normal((8, 4, 1, 1)) / 3).astype(np.float32), c1=c1,
                       kd=rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
                       cd=rng.standard_normal(8).astype(np.float32),
                       k2=rng.standard_normal((5, 8, 1, 1)).astype(np.float32), c2=np.zeros(5, np.float32))
    result = DeadNeuronRemovalPass(DeadNeuronRemovalPass.Options(align=1))(model, calibration(model, rng, count=64))
    assert result.stats["channels_removed"] == 2
    onnx.checker.check_model(result.model, full_check=True)
    held_out = random_feeds(model, 8, np.random.default_rng(1))
    np.testing.assert_allclose(run_ort(result.model, held_out)[0], run_ort(model, held_out)[0], rtol=1e-4, atol=1e-4)
