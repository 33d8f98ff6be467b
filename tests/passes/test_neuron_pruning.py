"""neuron-pruning: the least important channels go, readers are refitted from data (exactly, where the removed
channels are redundant); Conv, Flatten and GELU chains; ratios as units; refusals; digits and MiniLM.

A second run is not a no-op by design (it prunes the smaller layer again), so there is no idempotence test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import DEPTHWISE, EXAMPLES, calibration, random_feeds, run_ort, text_model

import graphopt
import graphopt_zoo as zoo
from graphopt.data import input_specs, load_data
from graphopt.errors import PreconditionError
from graphopt.graph import infer_shapes
from graphopt.pass_base import PassContext, Skip
from graphopt_passes import _channels
from graphopt_passes._math.patches import ConvGeometry, patches
from graphopt_passes.neuron_pruning import _POSITIONS, NeuronPruningPass, _ReaderGram

MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16] x) => (float[N,6] y) { h = Gemm(x, w1, b1)\n r = Relu(h)\n y = Gemm(r, w2, b2) }"""


def prune(**options: object) -> NeuronPruningPass:
    return NeuronPruningPass(NeuronPruningPass.Options(**options))  # type: ignore[arg-type]


def redundant_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """16 hidden ReLUs; the last 4 are half-scaled copies of the first 4 and carry little weight onward, so the
    data score removes them first and a refit can hand their share to the originals exactly."""
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w1[:, 12:], b1[12:] = 0.5 * w1[:, :4], 0.5 * b1[:4]
    w2 = rng.standard_normal((16, 6)).astype(np.float32)
    w2[12:] *= 0.1
    return text_model(MLP, w1=w1, b1=b1, w2=w2, b2=rng.standard_normal(6).astype(np.float32))


def relative_error(model: onnx.ModelProto, original: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    got, expected = run_ort(model, feeds)[0], run_ort(original, feeds)[0]
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_refit_absorbs_redundant_channels_exactly(rng: np.random.Generator) -> None:
    model = redundant_mlp(rng)
    before = model.SerializeToString()
    ctx = calibration(model, rng, count=256)
    held_out = random_feeds(model, 64, np.random.default_rng(7))
    refit = prune(ratio=0.25, steps=1, ridge=0.0)(model, ctx)
    assert model.SerializeToString() == before
    assert refit.modified and refit.stats["channels_removed"] == 4 and refit.stats["layers_pruned"] == 1
    onnx.checker.check_model(refit.model, full_check=True)
    shapes = {t.name: list(t.dims) for t in refit.model.graph.initializer}
    assert sorted(shapes.values()) == sorted([[16, 12], [12], [12, 6], [6]])
    assert relative_error(refit.model, model, held_out) < 1e-5
    dropped = prune(ratio=0.25, steps=1, reconstruct="none")(model, ctx)
    assert relative_error(dropped.model, model, held_out) > 1e-2
    assert "refitted (ls)" in refit.notes[0] and "12 channels" in refit.notes[0]


def test_energy_and_magnitude_scores_disagree_on_a_channel_nobody_reads(rng: np.random.Generator) -> None:
    model = redundant_mlp(rng)
    w1 = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    w2 = onnx.numpy_helper.to_array(model.graph.initializer[2]).copy()
    w1[:, 5] *= 10.0  # the largest producing weights...
    w2[5] = 0.0  # ...reaching nothing
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w1, "w1"))
    model.graph.initializer[2].CopyFrom(onnx.numpy_helper.from_array(w2, "w2"))
    ctx = calibration(model, rng, count=128)
    energy = prune(ratio=0.0625, steps=1)(model, ctx)
    magnitude = prune(ratio=0.0625, steps=1, score="magnitude")(model, ctx)
    kept_energy = onnx.numpy_helper.to_array(energy.model.graph.initializer[0])
    kept_magnitude = onnx.numpy_helper.to_array(magnitude.model.graph.initializer[0])
    assert not np.any(np.all(np.isclose(kept_energy, w1[:, [5]]), axis=0)), "energy removes the unread channel"
    assert np.any(np.all(np.isclose(kept_magnitude, w1[:, [5]]), axis=0)), "magnitude keeps the large one"


CNN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,9,9] x) => (float[N,5,5,5] y) {
  c = Conv <kernel_shape: ints = [1, 1]> (x, k1, c1)
  r = Relu(c)
  y = Conv <kernel_shape: ints = [3, 3], strides: ints = [2, 2], pads: ints = [1, 1, 1, 1]> (r, k2, c2)
}"""

FLAT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,3,3] x) => (float[N,6] y) {
  c = Conv <kernel_shape: ints = [1, 1]> (x, k1, c1)
  r = Relu(c)
  f = Flatten(r)
  y = Gemm <transB: int = 1> (f, w2, b2)
}"""


@pytest.mark.parametrize("text", [CNN, FLAT], ids=["conv-reader", "flatten-gemm-reader"])
def test_conv_and_flattened_readers_are_refitted_exactly(rng: np.random.Generator, text: str) -> None:
    k1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    c1 = rng.standard_normal(8).astype(np.float32)
    k1[6:], c1[6:] = 0.5 * k1[:2], 0.5 * c1[:2]  # channels 6, 7 are copies of 0, 1
    if text is CNN:
        reader = {"k2": rng.standard_normal((5, 8, 3, 3)).astype(np.float32), "c2": np.ones(5, np.float32)}
        reader["k2"][:, 6:] *= 0.05
    else:
        w2 = rng.standard_normal((6, 8, 9)).astype(np.float32)
        w2[:, 6:] *= 0.05
        reader = {"w2": w2.reshape(6, 72), "b2": np.ones(6, np.float32)}
    model = infer_shapes(text_model(text, k1=k1, c1=c1, **reader))  # the pipeline's normalisation does this
    ctx = calibration(model, rng, count=128)
    result = prune(ratio=0.25, steps=1, ridge=0.0, align=1)(model, ctx)
    assert result.stats["channels_removed"] == 2
    onnx.checker.check_model(result.model, full_check=True)
    held_out = random_feeds(model, 16, np.random.default_rng(3))
    assert relative_error(result.model, model, held_out) < 1e-4
    assert relative_error(prune(ratio=0.25, steps=1, reconstruct="none", align=1)(model, ctx).model, model,
                          held_out) > 1e-2
    assert not prune(ratio=0.25, steps=1)(model, ctx).modified, "8 - 2 channels is not a multiple of align=4"


GELU = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,5,8] x) => (float[N,5,8] y) {
  m = MatMul(x, w1)
  a = Add(b1, m)
  d = Div(a, sqrt2)
  e = Erf(d)
  p = Add(e, one)
  q = Mul(a, p)
  h = Mul(q, half)
  y = MatMul(h, w2)
}"""


def test_decomposed_gelu_chains_are_followed_and_pruned(rng: np.random.Generator) -> None:
    w1 = rng.standard_normal((8, 12)).astype(np.float32)
    b1 = rng.standard_normal(12).astype(np.float32)
    w1[:, 9:], b1[9:] = w1[:, :3], b1[:3]  # GELU is not homogeneous: exact copies
    w2 = rng.standard_normal((12, 8)).astype(np.float32)
    w2[9:] *= 0.05
    constants = {"sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    model = text_model(GELU, w1=w1, b1=b1, w2=w2, **constants)
    found = _channels.find_channel_groups(gs.import_onnx(model))
    (group,) = [g for g in found if isinstance(g, _channels.ChannelGroup)]
    assert [(link.node.op, link.index) for link in group.ops][-2] == ("Mul", _channels.BOTH)
    ctx = calibration(model, rng, count=64)
    result = prune(ratio=0.25, steps=1, ridge=0.0)(model, ctx)
    assert result.stats["channels_removed"] == 3
    onnx.checker.check_model(result.model, full_check=True)
    assert relative_error(result.model, model, random_feeds(model, 8, np.random.default_rng(4))) < 1e-4


def test_ratios_are_units_and_the_largest_selected_ratio_applies(rng: np.random.Generator) -> None:
    model = redundant_mlp(rng)
    model.graph.node[0].name = "fc1"
    ctx = calibration(model, rng, count=128)
    pruner = prune(ratio=0.5, steps=2)
    units = pruner.units(model, ctx)
    assert [u.name for u in units] == ["fc1@50%", "fc1@25%"]
    assert units[0].sensitivity > units[1].sensitivity  # type: ignore[operator]
    assert [pruner(model, ctx.with_units(frozenset(chosen))).stats["channels_removed"]
            for chosen in (["fc1@25%"], ["fc1@25%", "fc1@50%"], [])] == [4, 8, 0]


def test_a_later_run_reuses_the_refit_and_rewrites_the_same_model(rng: np.random.Generator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrowing runs the pass once per trial: each layer's refit is solved once per model, not once per run, and
    the runs that reuse it rewrite exactly what a fresh pass writes."""
    from graphopt_passes._math import pruning

    model = redundant_mlp(rng)
    model.graph.node[0].name = "fc1"
    ctx = calibration(model, rng, count=128)
    solves: list[int] = []
    solve = pruning.reconstruct
    monkeypatch.setattr(pruning, "reconstruct", lambda *a, **k: solves.append(1) or solve(*a, **k))
    pruner = prune(ratio=0.5, steps=2)
    pruner.units(model, ctx)
    planned = len(solves)
    first, again = (pruner(model, ctx.with_units(frozenset(["fc1@25%"]))).model for _ in range(2))
    assert planned == 2 and len(solves) == planned, "the plan's two refits serve every later run"
    fresh = prune(ratio=0.5, steps=2)(model, ctx.with_units(frozenset(["fc1@25%"]))).model
    assert first.SerializeToString() == again.SerializeToString() == fresh.SerializeToString()


RESIDUAL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16] x) => (float[N,16] y) { h = Gemm(x, w1)\n r = Relu(h)\n s = Add(r, x)\n y = Gemm(s, w2) }"""
DECONV = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4,5,5] x) => (float[N,3,7,7] y) { c = Conv <kernel_shape: ints = [1, 1]> (x, k1)
  r = Relu(c)\n y = ConvTranspose <kernel_shape: ints = [3, 3]> (r, k2) }"""


def test_residual_and_transposed_readers_are_skipped_with_the_reason(rng: np.random.Generator) -> None:
    residual = text_model(RESIDUAL, w1=rng.standard_normal((16, 16)).astype(np.float32),
                          w2=rng.standard_normal((16, 16)).astype(np.float32))
    result = prune()(residual, calibration(residual, rng))
    assert not result.modified
    assert "Add 's' adds the channels to 'x', which no layer computes" in [s.reason for s in result.skipped]
    alone = prune(residual=False)(residual, calibration(residual, rng))
    assert any("not a per-channel constant" in s.reason for s in alone.skipped), alone.skipped
    deconv = text_model(DECONV, k1=rng.standard_normal((8, 4, 1, 1)).astype(np.float32),
                        k2=rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    result = prune()(deconv, calibration(deconv, rng))
    assert not result.modified
    assert any("ConvTranspose cannot be refitted" in s.reason for s in result.skipped), result.skipped
    with pytest.raises(PreconditionError, match="calibration"):
        prune()(residual, PassContext())
    with pytest.raises(ValueError, match="ratio"):
        prune(ratio=1.0)


def test_digits_keeps_its_accuracy_at_30_percent_of_live_channels_only_with_the_refit() -> None:
    """Dead channels go first (pruning them is free); 30% of the live ones are then pruned, verified."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model))
    labels = np.load(EXAMPLES / "digits_labels.npy")
    fitting, held_out = data.split(0.5)  # as graphopt.optimize splits: accuracy is measured on unseen samples
    index = np.sort(np.random.default_rng(0).permutation(data.n_samples)[fitting.n_samples:])
    np.testing.assert_array_equal(held_out.arrays["image"], data.arrays["image"][index])
    images = held_out.to_arrays()
    live = graphopt.optimize(model, data, passes="dead-neuron-removal{align=1}").model
    live_channels = sum(t.dims[0] for t in live.graph.initializer if len(t.dims) == 1 and t.name != "fc2.bias")
    verified = graphopt.optimize(live, data, passes="neuron-pruning{ratio=0.3,steps=1,align=1}")
    record = verified.report.record("neuron-pruning")
    assert record.status == "applied", record
    assert record.stats["channels_removed"] >= int(0.25 * live_channels), (record.stats, live_channels)

    def accuracy(m: onnx.ModelProto) -> float:
        return float(np.mean(np.argmax(run_ort(m, images)[0], axis=1) == labels[index]))

    assert accuracy(verified.model) >= accuracy(model) - 0.01
    reference = run_ort(model, images)[0]
    errors = {}
    for recon in ("ls", "none"):
        pruned = prune(ratio=0.3, steps=1, align=1, reconstruct=recon)(live, PassContext(calibration=fitting)).model
        errors[recon] = float(np.linalg.norm(run_ort(pruned, images)[0] - reference))
    assert errors["ls"] < 0.7 * errors["none"], errors


@pytest.mark.skipif(bool(zoo.available()), reason=zoo.available() or "")
def test_minilm_feed_forward_neurons_pruned_with_the_refit_keep_the_embeddings(tmp_path: Path) -> None:
    """10% of the 6×1536 GELU neurons of all-MiniLM-L6-v2, on real sentences: the refit keeps cosine ≥ 0.98
    (unverified, every layer), dropping them alone does measurably worse."""
    model = onnx.load(str(zoo.export_minilm()))
    data = load_data(zoo.minilm_dataset(tmp_path, n=160), input_specs(model))
    fitting, held_out = data.split(0.6)
    reference = run_ort(model, held_out.arrays)[0]
    cosines = {}
    for recon in ("ls", "none"):
        result = prune(ratio=0.1, steps=1, reconstruct=recon)(model, PassContext(calibration=fitting))
        assert result.stats["layers_pruned"] == 6 and result.stats["channels_removed"] == 6 * 153, result.stats
        got = run_ort(result.model, held_out.arrays)[0]
        cosines[recon] = float(np.mean(np.sum(got * reference, axis=-1)
                                       / np.linalg.norm(got, axis=-1) / np.linalg.norm(reference, axis=-1)))
    assert cosines["ls"] >= 0.98 and cosines["ls"] > cosines["none"] + 0.01, cosines



def test_depthwise_convs_are_part_of_the_chain(rng: np.random.Generator) -> None:
    k1, c1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    kd, cd = rng.standard_normal((8, 1, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    k1[4:], c1[4:], kd[4:], cd[4:] = 0.5 * k1[:4], 0.5 * c1[:4], kd[:4], 0.5 * cd[:4]  # 4..7: half of 0..3
    k2 = rng.standard_normal((5, 8, 1, 1)).astype(np.float32)
    k2[:, 4:] *= 0.05
    model = text_model(DEPTHWISE, k1=k1, c1=c1, kd=kd, cd=cd, k2=k2, c2=np.zeros(5, np.float32))
    result = prune(ratio=0.5, steps=1, ridge=0.0)(model, calibration(model, rng, count=64))
    assert result.stats["channels_removed"] == 4
    onnx.checker.check_model(result.model, full_check=True)
    depthwise = [n for n in result.model.graph.node if n.op_type == "Conv"][1]
    assert [a.i for a in depthwise.attribute if a.name == "group"] == [4]
    assert relative_error(result.model, model, random_feeds(model, 8, np.random.default_rng(2))) < 1e-4


RESIDUAL_STREAM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,5] y) {
  s = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w0, b0)
  r0 = Relu(s)
  a = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (r0, wa, ba)
  ar = Relu(a)
  a2 = Conv <kernel_shape = [1, 1]> (ar, wa2, ba2)
  s1 = Add(r0, a2)
  r1 = Relu(s1)
  b = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (r1, wb, bb)
  br = Relu(b)
  b2 = Conv <kernel_shape = [1, 1]> (br, wb2, bb2)
  s2 = Add(b2, r1)
  r2 = Relu(s2)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  y = Gemm(f, wg, bg)
}"""


def residual_net(rng: np.random.Generator) -> onnx.ModelProto:
    """Two residual blocks on an 8-channel stream written by the stem and both blocks' last Conv. Stream channels
    4–7 are half-scaled copies of 0–3 in all three writers (ReLU keeps the relation through each Add), and every
    reader gives them little weight: the stream can lose them, and the readers' refit takes their share exactly."""
    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {"w0": normal(8, 3, 3, 3), "b0": normal(8), "wa": normal(6, 8, 3, 3), "ba": normal(6),
              "wa2": normal(8, 6, 1, 1), "ba2": normal(8), "wb": normal(6, 8, 3, 3), "bb": normal(6),
              "wb2": normal(8, 6, 1, 1), "bb2": normal(8), "wg": normal(8, 5), "bg": normal(5)}
    for writer in ("w0", "b0", "wa2", "ba2", "wb2", "bb2"):
        arrays[writer][4:] = 0.5 * arrays[writer][:4]
    for reader in ("wa", "wb"):
        arrays[reader][:, 4:] *= 0.1
    arrays["wg"][4:] *= 0.1
    return infer_shapes(text_model(RESIDUAL_STREAM, **arrays))


def test_residual_streams_are_one_group_pruned_in_every_writer(rng: np.random.Generator) -> None:
    model = residual_net(rng)
    graph = gs.import_onnx(model)
    alone = {g.target: g.reason for g in _channels.find_channel_groups(graph) if isinstance(g, Skip)}
    assert alone["s"] == "Add 's1' combines the channels with a tensor that is not a per-channel constant"
    found = {g.name: g for g in _channels.find_channel_groups(graph, residual=True)
             if isinstance(g, _channels.ChannelGroup)}
    stream = found["s"]
    assert [p.node.outputs[0].name for p in stream.producers] == ["s", "a2", "b2"]
    assert sorted(link.node.outputs[0].name for link in stream.consumers) == ["a", "b", "y"]
    assert "a2" not in found and "b2" not in found, "a writer of the stream is in its group only"
    with pytest.raises(ValueError, match="no single value"):
        _channels.remove_channels(graph, [(stream, {7: 0.0})])

    ctx = calibration(model, rng, count=128)
    pruner = prune(ratio=0.5, steps=1, ridge=0.0)
    units = {u.name: u for u in pruner.units(model, ctx)}
    assert units["s"].detail == "8 → 4 channels of a residual stream written by 3 layers"
    result = pruner(model, ctx.with_units(frozenset({"s"})))
    assert result.stats["channels_removed"] == 4 and result.stats["layers_pruned"] == 1
    onnx.checker.check_model(result.model, full_check=True)
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert [shapes[n][:2] for n in ("w0", "wa2", "wb2", "wa", "wb")] == [(4, 3), (4, 6), (4, 6), (6, 4), (6, 4)]
    assert shapes["wg"] == (4, 5) and shapes["b0"] == shapes["ba2"] == shapes["bb2"] == (4,)
    assert relative_error(result.model, model, random_feeds(model, 16, np.random.default_rng(5))) < 1e-4
    assert {u.name for u in prune(ratio=0.5, steps=1, residual=False).units(model, ctx)} == {"a", "b"}


def test_a_large_feature_map_gives_its_gram_a_random_subset_of_positions_per_sample(rng: np.random.Generator) -> None:
    """A Conv reader of a 72×72 map (5184 positions, over the 4096 taken) sums a different random subset of each
    sample's positions: the same means and second moments as every position, within sampling error."""
    x = (rng.standard_normal((3, 4, 72, 72)) + np.arange(4)[None, :, None, None]).astype(np.float32)
    geometry = ConvGeometry((3, 3), pads=(1, 1, 1, 1))
    reader = _ReaderGram(1, geometry)
    reader.update(x)
    assert reader.gram is not None and reader.gram.count == 3 * _POSITIONS
    every = patches(x, geometry).astype(np.float64)
    np.testing.assert_allclose(reader.gram.mean_square, np.mean(every**2, axis=0), rtol=0.03)
    sampled_means = reader.gram.matrix[-1, :-1] / reader.gram.count
    np.testing.assert_allclose(sampled_means, every.mean(axis=0), rtol=0.03, atol=0.02)
    again = _ReaderGram(1, geometry)
    again.update(x)
    assert again.gram is not None and np.array_equal(again.gram.matrix, reader.gram.matrix), "deterministic"
