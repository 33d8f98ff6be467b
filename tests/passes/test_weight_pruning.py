"""weight-pruning: sparsity reached per layer form, refusals, idempotence, scores, refit, storage, units, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, run_ort
from helpers import calibration as context
from helpers import random_feeds as samples
from helpers import text_model as build
from onnx import numpy_helper

import graphopt
from graphopt.data import Dataset, input_specs, load_data, split_indices
from graphopt.errors import PreconditionError
from graphopt.pass_base import PassContext, PassResult
from graphopt_passes._math.sparse_storage import coo_decode
from graphopt_passes.weight_pruning import WeightPruningPass

Options = WeightPruningPass.Options
HEAD = '<ir_version: 8, opset_import: ["" : 17]>\n'


def pruner(**options: object) -> WeightPruningPass:
    return WeightPruningPass(Options(**{"min_size": 1000, **options}))  # type: ignore[arg-type]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every weight, initializers and Constant nodes (dense or sparse) alike."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        for a in node.attribute if node.op_type == "Constant" else []:
            if a.name == "value":
                found[node.output[0]] = numpy_helper.to_array(a.t)
            elif a.name == "sparse_value":
                s = a.sparse_tensor
                found[node.output[0]] = coo_decode(numpy_helper.to_array(s.values), numpy_helper.to_array(s.indices),
                                                   tuple(s.dims))
    return found


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def reasons(result: PassResult) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in result.skipped)


def zeros_per_output(matrix: np.ndarray) -> np.ndarray:
    """Zeros in each column of a K×N matrix."""
    return np.count_nonzero(matrix == 0, axis=0)


def checked(model: onnx.ModelProto, ctx: PassContext, pass_: WeightPruningPass) -> PassResult:
    """Run the pass; the input is untouched, the output passes the full check and loads; a second run does nothing."""
    before = model.SerializeToString()
    result = pass_(model, ctx)
    assert model.SerializeToString() == before, "the input model was mutated"
    assert result.modified
    onnx.checker.check_model(result.model, full_check=True)
    run_ort(result.model, samples(model, 2, np.random.default_rng(1)), optimize=True)
    again = pass_(result.model, ctx)
    assert again.modified is False and again.stats["layers_pruned"] == 0
    assert "already" in reasons(again) and "sparse in every output" in reasons(again)
    return result


# (text, weight shape, how the weight reads as K×N, how the output is computed from x and the weight)
CASES = {
    "matmul": ("g (float[N,64] x) => (float[N,48] y) { y = MatMul(x, w) }", (64, 48), lambda w: w),
    "matmul-weight-first": ("g (float[N,64,5] x) => (float[N,48,5] y) { y = MatMul(w, x) }", (48, 64), lambda w: w.T),
    "batched-matmul": ("g (float[N,7,64] x) => (float[N,7,48] y) { y = MatMul(x, w) }", (64, 48), lambda w: w),
    "gemm-transB-alpha-bias": (
        "g (float[N,64] x) => (float[N,48] y) { y = Gemm <transB = 1, alpha = 0.5> (x, w, b) }",
        (48, 64),
        lambda w: w.T,
    ),
    "conv3x3": (
        "g (float[N,16,6,6] x) => (float[N,48,6,6] y) { y = Conv <pads = [1, 1, 1, 1]> (x, w, b) }",
        (48, 16, 3, 3),
        lambda w: w.reshape(48, -1).T,
    ),
    "grouped-conv": (
        "g (float[N,32,6,6] x) => (float[N,48,6,6] y) { y = Conv <pads = [1, 1, 1, 1], group = 4> (x, w) }",
        (48, 8, 3, 3),
        lambda w: w.reshape(48, -1).T,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_output_reaches_the_sparsity_and_onnxruntime_runs_the_pruned_weight(
    rng: np.random.Generator, case: str, pattern: str
) -> None:
    text, shape, as_kn = CASES[case]
    w = rng.standard_normal(shape).astype(np.float32)
    model = build(HEAD + text, w=w, b=rng.standard_normal(48).astype(np.float32))
    result = checked(model, context(model, rng), pruner(sparsity=0.5, pattern=pattern))
    assert ops(result.model) == ops(model)
    new = weights(result.model)["w"]
    matrix, original = as_kn(new), as_kn(w)
    k = matrix.shape[0]
    if pattern == "2:4":
        positions = 9 if "conv" in case else 1
        groups = matrix.reshape(k // positions, positions, -1).swapaxes(0, 1).reshape(k // 4, 4, -1)
        assert np.all(np.count_nonzero(groups, axis=1) == 2)
    else:
        assert np.all(zeros_per_output(matrix) == k // 2)
    assert result.stats["layers_pruned"] == 1 and result.stats["weights_pruned"] == matrix.size // 2
    assert "(refit)" in result.notes[0] and not np.array_equal(matrix[matrix != 0], original[matrix != 0])
    feeds = samples(model, 3, np.random.default_rng(2))
    pruned_only = build(HEAD + text, w=new, b=weights(model)["b"])  # the same graph with the pruned weight
    for want, got in zip(run_ort(pruned_only, feeds), run_ort(result.model, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def test_layers_it_leaves_alone_are_named_with_the_reason(rng: np.random.Generator) -> None:
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    model = build(
        HEAD + """
        g (float[N,64] x, bool c, float[64,64] over) => (float[N,64] a, float[N,4] b, float[N,64] s, float[N,N] d,
                                                         float[N,64] i, float[N,64] t, float[N,64] o, float[N,64] q,
                                                         float[N,32] u) {
          a = MatMul(x, full)
          b = MatMul(x, small)
          s0 = MatMul(x, shared)
          s = MatMul(s0, shared)
          xt = Transpose(x)
          d = MatMul(x, xt)
          i = If (c) <then_branch = th () => (float[N,64] p) { p = MatMul(x, inner) },
                      else_branch = el () => (float[N,64] e) { e = MatMul(x, inner2) }>
          t = MatMul(x, read_inside)
          o = MatMul(x, over)
          q = Gemm <transA = 1> (xt, full2)
          u = MatMul(x, odd)
        }
        """,
        full=f(64, 64), small=f(64, 4), shared=f(64, 64), inner=f(64, 64), inner2=f(64, 64), full2=f(64, 64),
        read_inside=f(64, 64), over=f(64, 64), odd=f(64, 32),
    )
    model.graph.node[6].attribute[0].g.node[0].input[1] = "read_inside"  # the then-branch reads an outer weight
    ctx = PassContext(calibration=Dataset({"x": f(16, 64), "c": np.ones(16, bool)}, frozenset({"c"}), False))
    result = pruner(min_size=1024)(model, ctx)
    text = reasons(result)
    assert "b: 64×4 = 256 weights < min_size 1024" in text
    assert "s0: weight 'shared' shared by 2 nodes" in text
    assert "d: no constant weight (both inputs are activations)" in text
    assert "p: inside a subgraph of If 'i': its inputs are not observed" in text
    assert "e: inside a subgraph of If 'i'" in text
    assert "t: weight 'read_inside' is read inside a subgraph" in text
    assert "o: weight 'over' is also a graph input (overridable)" in text
    assert "q: Gemm with transA=1" in text
    assert result.modified and sorted(result.notes[i].split(":")[0] for i in range(2)) == ["a", "u"]
    nm = pruner(min_size=1024, pattern="3:8")(model, ctx)
    assert nm.stats["layers_pruned"] == 2  # 64 inputs split into groups of 8
    odd = build(HEAD + "g (float[N,60] x) => (float[N,32] y) { y = MatMul(x, w) }", w=f(60, 32))
    assert "y: 3:8 needs input channels in multiples of 8, the layer has 60" in reasons(
        pruner(pattern="3:8")(odd, context(odd, rng)))
    assert "y: sparsity 0.01 of 60 inputs per output prunes nothing" in reasons(
        pruner(sparsity=0.01)(odd, context(odd, rng)))
    with pytest.raises(PreconditionError):
        pruner()(model, PassContext())


@pytest.mark.parametrize(
    ("options", "message"),
    [({"sparsity": 0.0}, "sparsity"), ({"sparsity": 1.0}, "sparsity"), ({"pattern": "2-4"}, "pattern"),
     ({"pattern": "4:4"}, "0 < n < m"), ({"score": "taylor"}, "score"), ({"storage": "zip"}, "storage"),
     ({"ridge": -1.0}, "ridge"), ({"min_size": -1}, "min_size")],
)
def test_options_are_validated(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Options(**options)


def scaled_inputs(rng: np.random.Generator, count: int) -> np.ndarray:
    """64 input channels whose scales span four decades, so magnitude and input-aware scores disagree."""
    return (rng.standard_normal((count, 64)) * np.geomspace(100.0, 0.01, 64)).astype(np.float32)


def test_wanda_keeps_the_weights_on_loud_inputs_and_beats_magnitude(rng: np.random.Generator) -> None:
    """Weights grow as inputs shrink (the product is what matters): magnitude keeps the useless ones."""
    w = (rng.standard_normal((64, 32)) * np.geomspace(0.1, 10.0, 64)[:, None]).astype(np.float32)
    model = build(HEAD + "g (float[N,64] x) => (float[N,32] y) { y = MatMul(x, w) }", w=w)
    ctx = PassContext(calibration=Dataset({"x": scaled_inputs(rng, 256)}, frozenset(), False))
    held_out = {"x": scaled_inputs(rng, 64)}
    (want,) = run_ort(model, held_out)
    kept, errors = {}, {}
    for score in ("wanda", "magnitude"):
        result = pruner(score=score, correct=False)(model, ctx)
        kept[score] = weights(result.model)["w"] != 0
        (got,) = run_ort(result.model, held_out)
        errors[score] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert kept["wanda"][:16].mean() > 0.9 and kept["magnitude"][:16].mean() < 0.1  # the 16 loudest inputs
    assert kept["magnitude"][-16:].mean() > 0.9
    assert errors["wanda"] < 0.1 and errors["magnitude"] > 0.5


def correlated(rng: np.random.Generator, count: int) -> np.ndarray:
    mix = np.random.default_rng(5).standard_normal((12, 64))
    x = (rng.standard_normal((count, 12)) * np.geomspace(10.0, 0.3, 12)) @ mix + 0.05 * rng.standard_normal((count, 64))
    return x.astype(np.float32)


def test_the_refit_lowers_the_layer_output_error_on_calibration_and_held_out_data(rng: np.random.Generator) -> None:
    model = build(HEAD + "g (float[N,64] x) => (float[N,48] y) { y = MatMul(x, w) }",
                  w=rng.standard_normal((64, 48)).astype(np.float32))
    calibration = {"x": correlated(rng, 512)}
    ctx = PassContext(calibration=Dataset(calibration, frozenset(), False))
    held_out = {"x": correlated(rng, 128)}
    errors: dict[tuple[bool, str], float] = {}
    masks = {}
    for correct in (True, False):
        result = pruner(correct=correct, ridge=1e-4)(model, ctx)
        masks[correct] = weights(result.model)["w"] != 0
        for name, feeds in (("calibration", calibration), ("held-out", held_out)):
            (want,), (got,) = run_ort(model, feeds), run_ort(result.model, feeds)
            errors[(correct, name)] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        if correct:
            pruned, applied = (float(v) for v in result.notes[0].split("output error ")[1].split(" applied")[0]
                               .split(" pruned → "))
            assert applied < pruned and math.isclose(applied, errors[(True, "calibration")], rel_tol=1e-2)
    np.testing.assert_array_equal(masks[True], masks[False])  # the same weights go; only the kept ones move
    assert errors[(True, "calibration")] < 0.2 * errors[(False, "calibration")]
    assert errors[(True, "held-out")] < 0.2 * errors[(False, "held-out")]


def test_storage_is_sparse_only_where_smaller_and_loads_either_way(rng: np.random.Generator) -> None:
    text = HEAD + "g (float[N,64] x) => (float[N,48] y) { h = MatMul(x, w1)\n y = MatMul(h, w2) }"
    model = build(text, w1=rng.standard_normal((64, 64)).astype(np.float32),
                  w2=rng.standard_normal((64, 48)).astype(np.float32))
    ctx = context(model, rng)
    feeds = samples(model, 4, np.random.default_rng(3))
    half = checked(model, ctx, pruner(sparsity=0.5))
    assert [t.name for t in half.model.graph.initializer] == ["w1", "w2"] and "Constant" not in ops(half.model)
    assert half.stats["bytes_before"] == half.stats["bytes_after"] == (64 * 64 + 64 * 48) * 4
    assert any("file shrinks only once compressed" in n for n in half.notes)
    sparse = checked(model, ctx, pruner(sparsity=0.8))  # auto: 20% density is smaller as COO
    assert ops(sparse.model) == ["Constant", "Constant", "MatMul", "MatMul"] and not sparse.model.graph.initializer
    kept = 64 * (64 - 51) + 48 * (64 - 51)
    assert sparse.stats["layers_stored_sparse"] == 2 and sparse.stats["bytes_after"] == kept * (4 + 8)
    saved = sparse.stats["bytes_before"] - sparse.stats["bytes_after"]
    assert saved - 200 < model.ByteSize() - sparse.model.ByteSize() <= saved  # the file shrinks by what stats say
    dense = pruner(sparsity=0.8, storage="dense")(model, ctx)
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(weights(sparse.model)[name], weights(dense.model)[name])
    np.testing.assert_array_equal(run_ort(sparse.model, feeds)[0], run_ort(dense.model, feeds)[0])
    forced = checked(model, ctx, pruner(sparsity=0.5, storage="sparse"))
    assert forced.stats["bytes_after"] > forced.stats["bytes_before"]
    denser = pruner(sparsity=0.9)(sparse.model, ctx)  # a sparse Constant is read and pruned further
    assert denser.modified and ops(denser.model) == ops(sparse.model)
    assert np.all(zeros_per_output(weights(denser.model)["w2"]) == 57)


def test_units_and_only_units(rng: np.random.Generator) -> None:
    model = build(
        HEAD + "g (float[N,64] x) => (float[N,48] y) { h = MatMul(x, w1)\n r = Relu(h)\n y = Gemm(r, w2) }",
        w1=rng.standard_normal((64, 64)).astype(np.float32), w2=rng.standard_normal((64, 48)).astype(np.float32),
    )
    ctx = context(model, rng)
    pass_ = pruner()
    units = {u.name: u for u in pass_.units(model, ctx)}
    assert sorted(units) == ["h", "y"] and units["h"].detail.startswith("64×64, sparsity 0.50, output error ")
    assert all(0 < (u.sensitivity or 0) < 1 for u in units.values())
    only = pass_(model, ctx.with_units(frozenset({"y"})))
    assert only.stats["layers_pruned"] == 1
    np.testing.assert_array_equal(weights(only.model)["w1"], weights(model)["w1"])
    assert np.all(zeros_per_output(weights(only.model)["w2"]) == 32)
    assert pass_(model, ctx.with_units(frozenset())).modified is False


def test_end_to_end_saved_and_reloaded_with_sparse_weights(tmp_path: Path, rng: np.random.Generator) -> None:
    model = build(
        HEAD + "g (float[N,64] x) => (float[N,10] y) { h = MatMul(x, w1)\n r = Tanh(h)\n y = MatMul(r, w2) }",
        w1=(rng.standard_normal((64, 96)) / 8).astype(np.float32), w2=(rng.standard_normal((96, 10)) / 10).astype(np.float32),
    )
    data = Dataset({"x": correlated(rng, 128)}, frozenset(), False)
    result = graphopt.optimize(model, data, passes=[pruner(sparsity=0.7)], output=tmp_path / "pruned.onnx")
    record = result.report.record("weight-pruning")
    assert record.status == "applied" and record.stats["layers_stored_sparse"] == 1, record  # w2: 960 < min_size
    reloaded = onnx.load(str(tmp_path / "pruned.onnx"))
    onnx.checker.check_model(reloaded, full_check=True)
    feeds = {"x": correlated(rng, 8)}
    np.testing.assert_array_equal(run_ort(reloaded, feeds)[0], run_ort(result.model, feeds)[0])
    assert np.all(zeros_per_output(weights(reloaded)["w1"]) == 44)
    saved = record.stats["bytes_before"] - record.stats["bytes_after"]
    assert (tmp_path / "pruned.onnx").stat().st_size == reloaded.ByteSize()
    del reloaded.metadata_props[:]  # graphopt's provenance record: pipeline, data digest, split
    assert saved - 200 < model.ByteSize() - reloaded.ByteSize() <= saved


def test_digits_model_keeps_its_accuracy_at_80_percent_sparsity() -> None:
    """conv2 and fc1 at 80% (stored sparse: COO is smaller there); the refit keeps held-out accuracy."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    data = load_data(EXAMPLES / "digits.npz", input_specs(model))
    pass_ = WeightPruningPass(Options(sparsity=0.8))
    result = graphopt.optimize(model, data, passes=[pass_])
    record = result.report.record("weight-pruning")
    assert record.status == "applied" and record.stats["layers_pruned"] == 2, record  # conv2 and fc1
    assert {"target": "conv1", "reason": "9×16 = 144 weights < min_size 4096"} in record.skipped
    pruned = weights(result.model)
    assert np.all(zeros_per_output(pruned["conv2.weight"].reshape(32, -1).T) >= math.floor(0.8 * 144))
    assert np.all(zeros_per_output(pruned["fc1.weight"].T) >= math.floor(0.8 * 512))
    assert record.stats["layers_stored_sparse"] == 2 and record.size_after < 0.4 * record.size_before
    labels = np.load(EXAMPLES / "digits_labels.npy")
    _, held_out = data.split(0.5)
    index = split_indices(data.n_samples)[1]  # same split
    accuracy = [float(np.mean(np.argmax(run_ort(m, held_out.arrays)[0], axis=1) == labels[index]))
                for m in (model, result.model)]
    assert accuracy[1] >= accuracy[0] - 0.01, accuracy


def test_levels_give_one_unit_per_layer_and_level_and_apply_the_deepest_selected(rng: np.random.Generator) -> None:
    model = build(HEAD + "g (float[N,64] x) => (float[N,48] y) { y = MatMul(x, w) }",
                  w=rng.standard_normal((64, 48)).astype(np.float32))
    ctx = context(model, rng)
    pass_ = pruner(levels=(0.5, 0.25, 0.75))
    units = pass_.units(model, ctx)
    assert [u.name for u in units] == ["y@25%", "y@50%", "y@75%"]
    errors = [u.sensitivity or 0.0 for u in units]
    assert 0 < errors[0] < errors[1] < errors[2], "milder levels rank first"
    for chosen, zeros in ((["y@25%"], 16), (["y@25%", "y@50%"], 32), (["y@50%"], 32), ([u.name for u in units], 48)):
        result = pass_(model, ctx.with_units(frozenset(chosen)))
        assert result.stats["layers_pruned"] == 1 and np.all(zeros_per_output(weights(result.model)["w"]) == zeros)
    half = pass_(model, ctx.with_units(frozenset({"y@50%"}))).model
    again = pass_(half, ctx)
    assert "y@25%: already 25% sparse in every output | y@50%: already 50% sparse in every output" in reasons(again)
    assert [u.name for u in pass_.units(half, ctx)] == ["y@75%"]
    with pytest.raises(ValueError, match="levels"):
        Options(levels=(0.5,), pattern="2:4")


def test_end_to_end_narrowing_keeps_each_layer_at_the_level_the_budget_allows(rng: np.random.Generator) -> None:
    """Inputs on 12 latent directions let the first layer keep its outputs at 75% sparsity after the refit; the
    second layer reads 64 independent channels, where 75% breaks the budget."""
    model = build(
        HEAD + "g (float[N,64] x) => (float[N,64] y) { h = MatMul(x, w1)\n r = Tanh(h)\n y = MatMul(r, w2) }",
        w1=(rng.standard_normal((64, 64)) / 16).astype(np.float32), w2=rng.standard_normal((64, 64)).astype(np.float32),
    )
    data = Dataset({"x": correlated(rng, 256)}, frozenset(), False)
    result = graphopt.optimize(model, data, passes=[pruner(levels=(0.1, 0.75))])
    record = result.report.record("weight-pruning")
    assert record.status == "narrowed", record
    applied = {u["name"] for u in record.units if u["applied"]}
    assert {"h@75%", "y@10%"} <= applied and "y@75%" not in applied, record.units
    assert np.all(zeros_per_output(weights(result.model)["w1"]) == 48)
    assert np.all(zeros_per_output(weights(result.model)["w2"]) == 6)
