"""int4-weights: exact on-grid weights in both forms, Gemm and Gather, refusals with reasons, idempotence, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, calibration, random_feeds, run_ort, text_model

import graphopt
import graphopt_zoo as zoo
from graphopt.activations import reduce_activations
from graphopt.data import input_specs, load_data
from graphopt.errors import PreconditionError
from graphopt.pass_base import PassContext, PassResult
from graphopt.verify.metrics import error_stats
from graphopt_passes import int4_weights
from graphopt_passes._math import low_rank
from graphopt_passes.int4_weights import Int4WeightsPass

Options = Int4WeightsPass.Options


def on_grid(rng: np.random.Generator, k: int, n: int, symmetric: bool, block: int = 32) -> np.ndarray:
    """A K×N weight that int4 block quantisation represents exactly (every block reaches its range's ends)."""
    ints = rng.integers(-7, 8, (k, n)) if symmetric else rng.integers(-5, 11, (k, n))
    ints[::block] = 7 if symmetric else 10
    if not symmetric:
        ints[1::block] = -5
    return (ints * np.repeat(rng.uniform(0.01, 0.1, (k // block, n)), block, axis=0)).astype(np.float32)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def reasons(result: PassResult) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in result.skipped)


def apply(model: onnx.ModelProto, ctx: PassContext, **options: object) -> PassResult:
    """Run the pass; check the input is untouched, (c) full_check, ORT loads it, (e) a second run changes nothing."""
    before = model.SerializeToString()
    pass_ = Int4WeightsPass(Options(**options))  # type: ignore[arg-type]
    result = pass_(model, ctx)
    assert model.SerializeToString() == before, "the input model was mutated"
    assert result.modified, reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    run_ort(result.model, random_feeds(model, 2, np.random.default_rng(5)), optimize=True)
    again = pass_(result.model, ctx)
    assert again.modified is False and again.stats["layers_quantized"] == 0
    return result


MATMUL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,5,128] x) => (float[N,5,48] y) { h = MatMul(x, w)\n y = Add(h, b) }"""


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("form", ["dq", "nbits"])
def test_weights_on_the_int4_grid_are_reproduced_exactly(rng: np.random.Generator, form: str, symmetric: bool) -> None:
    w = on_grid(rng, 128, 48, symmetric)
    model = text_model(MATMUL, w=w, b=rng.standard_normal(48).astype(np.float32))
    ctx = calibration(model, rng, 16)
    result = apply(model, ctx, form=form, symmetric=symmetric, accuracy_level=0, min_size=0)
    assert ops(result.model) == (["DequantizeLinear", "MatMul", "Add"] if form == "dq" else ["MatMulNBits", "Add"])
    assert result.stats["bytes_before"] == 128 * 48 * 4
    assert result.stats["bytes_after"] == 128 * 48 // 2 + 4 * 48 * 4 + (0 if symmetric else 4 * 48 // 2)
    if form == "dq":
        assert [o.version for o in result.model.opset_import if o.domain == ""] == [21]
        stored = {t.name: t.data_type for t in result.model.graph.initializer}
        assert (onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4) in stored.values()
    feeds = random_feeds(model, 3, np.random.default_rng(1))
    want = run_ort(model, feeds)[0]
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("symmetric", [True, False])
def test_both_forms_compute_the_same_layer(rng: np.random.Generator, symmetric: bool) -> None:
    w = rng.standard_normal((256, 64)).astype(np.float32) / 16
    model = text_model(MATMUL.replace("128", "256").replace("48", "64"), w=w, b=np.zeros(64, np.float32))
    ctx = calibration(model, rng, 32)
    dq = apply(model, ctx, form="dq", symmetric=symmetric, min_size=0).model
    nbits = apply(model, ctx, form="nbits", symmetric=symmetric, accuracy_level=0, min_size=0).model
    feeds = random_feeds(model, 4, np.random.default_rng(2))
    want, got_dq, got_nbits = (run_ort(m, feeds)[0] for m in (model, dq, nbits))
    np.testing.assert_allclose(got_nbits, got_dq, rtol=1e-4, atol=1e-4)
    error = np.linalg.norm(got_dq - want) / np.linalg.norm(want)
    assert 1e-3 < error < 0.15  # really quantised, and not broken


GEMM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,64] x) => (float[N,40] y) { y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, c) }"""


@pytest.mark.parametrize("form", ["dq", "nbits"])
def test_gemm_with_transb_alpha_beta_and_bias(rng: np.random.Generator, form: str) -> None:
    w = on_grid(rng, 64, 40, True).T.copy()  # stored N×K
    model = text_model(GEMM, w=w, c=rng.standard_normal(40).astype(np.float32))
    result = apply(model, calibration(model, rng, 16), form=form, accuracy_level=0, min_size=0)
    assert ops(result.model) == (["DequantizeLinear", "Gemm"] if form == "dq" else ["MatMulNBits"])
    if form == "dq":
        dq = result.model.graph.node[0]
        assert {a.name: a.i for a in dq.attribute} == {"axis": 1, "block_size": 32}
    feeds = random_feeds(model, 3, np.random.default_rng(3))
    np.testing.assert_allclose(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0], rtol=1e-5, atol=1e-4)


EMBEDDING = """<ir_version: 8, opset_import: ["" : 17]>
g (int64[N,6] ids, float[N,6,64] x) => (float[N,6,64] y) { e = Gather(table, ids)\n y = Add(e, x) }"""


@pytest.mark.parametrize("form", ["dq", "nbits"])
def test_gather_embeddings_block_along_the_hidden_axis(rng: np.random.Generator, form: str) -> None:
    table = on_grid(rng, 64, 300, False).T.copy()  # 300 rows of 64, blocks along the 64
    model = text_model(EMBEDDING, table=table)
    ctx = PassContext(calibration=calibration(model, rng, 8).calibration)
    feeds = {"ids": rng.integers(0, 300, (4, 6)), "x": np.zeros((4, 6, 64), np.float32)}
    result = Int4WeightsPass(Options(form=form, symmetric=False, min_size=0))(model, ctx)
    assert result.modified and result.stats["layers_quantized"] == 1, reasons(result)
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model)[:2] == (["DequantizeLinear", "Gather"] if form == "dq" else ["GatherBlockQuantized", "Add"])
    np.testing.assert_allclose(run_ort(result.model, feeds, optimize=True)[0], table[feeds["ids"]], rtol=1e-6, atol=1e-6)
    off = Int4WeightsPass(Options(embeddings=False, min_size=0))(model, ctx)
    assert off.modified is False


REFUSALS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,64] x) => (float[N,48] a, float[N,48] b, float[N,48] c, float[48,N] d, float[N,48] e, float[N,8] f) {
  xt = Transpose(x)
  a = MatMul(x, shared)
  b = MatMul(x, shared)
  c = MatMul(x, odd_k)
  d = MatMul(left, xt)
  e = Gemm <transA = 1> (xt, w2)
  f = MatMul(x, small)
}"""


def test_refusals_carry_reasons(rng: np.random.Generator) -> None:
    arrays = {"shared": (64, 48), "odd_k": (64, 48), "left": (48, 64), "w2": (64, 48), "small": (64, 8)}
    model = text_model(REFUSALS, **{k: rng.standard_normal(s).astype(np.float32) for k, s in arrays.items()})
    result = Int4WeightsPass(Options(block=64, min_size=1000))(model, calibration(model, rng, 8))
    text = reasons(result)
    assert "shared by 2 nodes" in text and "first input (W·X)" in text and "transA=1" in text
    assert "64×8 = 512 weights < min_size 1000" in text
    assert result.stats["layers_quantized"] == 1  # odd_k: K=64 is one block of 64
    blocked = Int4WeightsPass(Options(block=128, min_size=1000))(model, calibration(model, rng, 8))
    assert "K=64 is not a multiple of block 128" in reasons(blocked) and blocked.modified is False


def test_subgraph_readers_and_missing_data_are_refused(rng: np.random.Generator) -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,64] x, bool c) => (float[N,32] y) {
  h = MatMul(x, w)
  y = If(c) <then_branch = t () => (float[N,32] o) { o = Identity(h) },
             else_branch = e () => (float[N,32] o) { o = MatMul(x, w) }>
}"""
    model = text_model(text, w=rng.standard_normal((64, 32)).astype(np.float32))
    ctx = PassContext(calibration=calibration(model, rng, 8).calibration)
    assert "read inside a subgraph" in reasons(Int4WeightsPass(Options(min_size=0))(model, ctx))
    with pytest.raises(PreconditionError, match="calibration"):
        Int4WeightsPass()(model, PassContext())


def test_units_rank_layers_by_output_error(rng: np.random.Generator) -> None:
    w = rng.standard_normal((128, 48)).astype(np.float32)
    model = text_model(MATMUL, w=w, b=np.zeros(48, np.float32))
    ctx = calibration(model, rng, 16)
    pass_ = Int4WeightsPass(Options(min_size=0))
    (unit,) = pass_.units(model, ctx)
    assert unit.sensitivity is not None and 0.01 < unit.sensitivity < 0.2
    result = pass_(model, ctx.with_units(frozenset()))
    assert result.modified is False
    grid = Int4WeightsPass(Options(min_size=0, search="none")).units(model, ctx)[0]
    assert unit.sensitivity <= grid.sensitivity  # type: ignore[operator]


def test_digits_verified_through_optimize() -> None:
    result = graphopt.optimize(EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits.npz",
                               passes=[Int4WeightsPass(Options(min_size=512))])
    record = next(r for r in result.report.passes if r.name == "int4-weights")
    assert record.status == "applied", record
    assert record.stats["layers_quantized"] == 2 and record.stats["bytes_after"] < record.stats["bytes_before"] / 6
    onnx.checker.check_model(result.model, full_check=True)
    assert "MatMulNBits" in ops(result.model)
    assert result.model.ByteSize() < 0.3 * onnx.load(str(EXAMPLES / "digits_cnn.onnx")).ByteSize()


@pytest.mark.skipif(bool(zoo.available()), reason=zoo.available() or "")
def test_minilm_word_embeddings_verified_within_budget(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2's 30522×384 word-embedding table (half the file) in int4 through ``GatherBlockQuantized``,
    verified under the default budget on real sentences: the file shrinks to less than 0.6× (0.56×)."""
    model = onnx.load(str(zoo.export_minilm()))
    data = load_data(zoo.minilm_dataset(tmp_path, n=64), input_specs(model))
    result = graphopt.optimize(model, data, passes=[Int4WeightsPass(Options(min_size=1_000_000))])
    record = next(r for r in result.report.passes if r.name == "int4-weights")
    assert record.status == "applied", record
    assert record.stats["layers_quantized"] == 1 and "GatherBlockQuantized" in ops(result.model)
    assert result.model.ByteSize() < 0.6 * model.ByteSize()
    onnx.checker.check_model(result.model, full_check=True)
    _, held_out = data.split(0.5)
    stats = error_stats(run_ort(model, held_out.arrays)[0], run_ort(result.model, held_out.arrays, optimize=True)[0])
    assert stats.cosine >= 0.99


def test_calibration_in_groups_under_a_gram_budget_gives_the_same_model(rng: np.random.Generator,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose layer inputs' Grams exceed the budget is calibrated in groups, one run each, and comes out
    the same as calibrated at once: the digits CNN with a budget of one byte (each input its own group)."""
    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    ctx = calibration(model, rng, 16)
    whole = apply(model, ctx, min_size=512)
    runs: list[int] = []
    monkeypatch.setattr(low_rank, "GRAM_BUDGET", 1)
    monkeypatch.setattr(low_rank, "GRAM_FLOOR", 1)
    monkeypatch.setattr(int4_weights, "reduce_activations",
                        lambda *a, **k: (runs.append(1), reduce_activations(*a, **k))[1])
    grouped = apply(model, ctx, min_size=512)
    assert len(runs) == whole.stats["layers_quantized"] == 2
    assert grouped.model.graph == whole.model.graph


@pytest.mark.parametrize("case", ["digits", "embedding"])
def test_planning_a_few_columns_at_a_time_gives_the_same_model_and_errors(rng: np.random.Generator,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          case: str) -> None:
    """A weight is quantised in chunks of columns (bounding the search's temporaries): its blocks run along K, so the
    grid is the same, and the error terms add up to the whole matrix's (Gemms of the digits CNN with their Grams,
    and an embedding weighted by how often each row was gathered)."""
    if case == "digits":
        model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
        options = Options(min_size=512)
    else:
        model = text_model(EMBEDDING, table=rng.standard_normal((300, 64)).astype(np.float32))
        options = Options(min_size=0, symmetric=False)
    ctx = calibration(model, rng, 16)
    whole_pass = Int4WeightsPass(options)
    whole, units = whole_pass(model, ctx), whole_pass.units(model, ctx)
    monkeypatch.setattr(int4_weights, "_CHUNK", 64 * 3)  # three columns of K=64, one of the digits' K=1024
    chunked_pass = Int4WeightsPass(options)
    chunked = chunked_pass(model, ctx)
    assert whole.modified and chunked.model.graph == whole.model.graph
    for got, expected in zip(chunked_pass.units(model, ctx), units, strict=True):
        assert got.name == expected.name and got.sensitivity == pytest.approx(expected.sensitivity, rel=1e-9)
