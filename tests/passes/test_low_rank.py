"""low-rank: splits of every layer form, accuracy, refusals with reasons, units, idempotence, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import calibration as context
from helpers import random_feeds as samples
from helpers import run_ort
from helpers import text_model as build
from onnx import numpy_helper

import graphopt
from graphopt.data import Dataset
from graphopt.errors import PreconditionError
from graphopt.pass_base import PassContext, PassResult
from graphopt_passes.low_rank import LowRankPass

PASS = LowRankPass(LowRankPass.Options(min_size=1000))
"""The test layers are 64×48 (3072 weights), below the default ``min_size``."""


def low_rank(rng: np.random.Generator, k: int, n: int, rank: int = 6, noise: float = 1e-3) -> np.ndarray:
    """A genuinely low-rank matrix plus a little full-rank noise."""
    w = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(k * rank)
    return (w + noise * rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)




def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def reasons(result: PassResult) -> str:
    return " | ".join(f"{s.target}: {s.reason}" for s in result.skipped)


def check(model: onnx.ModelProto, ctx: PassContext, pass_: LowRankPass = PASS, tol: float = 0.02) -> PassResult:
    """Run the pass and assert (b) outputs close on held-out inputs, (c) full_check, (e) a second run changes nothing."""
    before = model.SerializeToString()
    result = pass_(model, ctx)
    assert model.SerializeToString() == before, "the input model was mutated"
    assert result.modified
    onnx.checker.check_model(result.model, full_check=True)
    feeds = samples(model, 16, np.random.default_rng(99))
    for want, got in zip(run_ort(model, feeds), run_ort(result.model, feeds)):
        assert got.shape == want.shape
        assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    again = pass_(result.model, ctx)
    assert again.modified is False and again.stats["layers_split"] == 0
    assert "already factored" in reasons(again)
    return result


CASES = {
    "matmul-weight-second": (
        "g (float[N,64] x) => (float[N,48] y) { y = MatMul(x, w) }", (64, 48), ["MatMul", "MatMul"], [(64, 6), (6, 48)]
    ),
    "matmul-weight-first": (
        "g (float[N,64,5] x) => (float[N,48,5] y) { y = MatMul(w, x) }",
        (48, 64),
        ["MatMul", "MatMul"],
        [(6, 64), (48, 6)],
    ),
    "batched-matmul-with-bias-add": (
        "g (float[N,7,64] x) => (float[N,7,48] y) { h = MatMul(x, w)\n y = Add(h, b) }",
        (64, 48),
        ["MatMul", "MatMul", "Add"],
        [(64, 6), (6, 48)],
    ),
    "gemm-transB-alpha-beta-bias": (
        "g (float[N,64] x) => (float[N,48] y) { y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, b) }",
        (48, 64),
        ["MatMul", "Gemm"],
        [(64, 6), (6, 48)],
    ),
    "pointwise-conv": (
        "g (float[N,64,4,4] x) => (float[N,48,4,4] y) { y = Conv(x, w, b) }",
        (48, 64, 1, 1),
        ["Conv", "Conv"],
        [(6, 64, 1, 1), (48, 6, 1, 1)],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_splits_each_layer_form(rng: np.random.Generator, case: str) -> None:
    text, shape, after, factor_shapes = CASES[case]
    w = low_rank(rng, 64, 48)
    w = w.T.reshape(shape) if shape[0] == 48 else w
    model = build('<ir_version: 8, opset_import: ["" : 17]>\n' + text, w=w, b=rng.standard_normal(48).astype(np.float32))
    result = check(model, context(model, rng))
    assert ops(result.model) == after
    layers = [n for n in result.model.graph.node if n.op_type != "Add"]
    arrays = weights(result.model)
    assert [arrays[n.input[0 if "first" in case else 1]].shape for n in layers] == factor_shapes
    assert "w" not in arrays and ("b" in arrays) == (" b)" in text)  # the weight is gone, a bias stays
    assert dict(result.stats) == {"layers_split": 1, "params_removed": 64 * 48 - 6 * 112,
                                  "flops_removed": (7 if "batched" in case else 5 if "first" in case else
                                                    16 if "conv" in case else 1) * (64 * 48 - 6 * 112)}
    assert result.notes and "r=6 (energy 0.99), params 3072→672" in result.notes[0]


def test_refusals_have_reasons(rng: np.random.Generator) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,64] x, float[N,64,4,4] z) => (float[N,64] a, float[N,4] b, float[N,64] c, float[N,N] d,
                                                  float[N,64,2,2] e) {
          a = MatMul(x, full)
          b = MatMul(x, small)
          c0 = MatMul(x, shared)
          c = MatMul(c0, shared)
          at = Transpose(c)
          d = MatMul(a, at)
          e = Conv <kernel_shape = [3, 3]> (z, k3)
        }
        """,
        full=rng.standard_normal((64, 64)).astype(np.float32),
        small=rng.standard_normal((64, 4)).astype(np.float32),
        shared=rng.standard_normal((64, 64)).astype(np.float32),
        k3=rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
    )
    result = PASS(model, context(model, rng))
    assert result.modified is False
    text = reasons(result)
    assert "a: rank 42 of 64 (energy 0.99) would not save params: at most rank 28 removes 10% of 64×64" in text
    assert "b: 64×4 = 256 params < min_size 1000" in text
    assert "c0: weight 'shared' shared by 2 nodes" in text
    assert "d: no constant weight (both inputs are activations)" in text
    assert "e: Conv kernel 3×3 is not pointwise (1×1)" in text
    with pytest.raises(PreconditionError):
        PASS(model, PassContext())


def test_units_and_only_units(rng: np.random.Generator) -> None:
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,64] x) => (float[N,48] y) {
          h = MatMul(x, w1)
          r = Relu(h)
          y = Gemm(r, w2)
        }
        """,
        w1=low_rank(rng, 64, 64, rank=4),
        w2=low_rank(rng, 64, 48, rank=10),
    )
    ctx = context(model, rng)
    units = {u.name: u for u in PASS.units(model, ctx)}
    assert sorted(units) == ["h", "y"]
    assert units["h"].detail == "r=4 of 64, params 0.12×" and units["y"].detail.startswith("r=")
    sensitivity = {name: unit.sensitivity or 0.0 for name, unit in units.items()}  # layer-output errors
    assert 0 < sensitivity["h"] < 0.01 < sensitivity["y"] <= np.sqrt(1 - 0.99) + 1e-3  # rank 4 exact; rank 10 cut
    only = check(model, ctx.with_units(frozenset({"y"})), tol=0.1)
    assert ops(only.model) == ["MatMul", "Relu", "MatMul", "Gemm"] and only.stats["layers_split"] == 1
    assert PASS(model, ctx.with_units(frozenset())).modified is False
    assert check(model, ctx, tol=0.1).stats["layers_split"] == 2


def test_levels_give_one_unit_per_layer_and_level_and_apply_the_deepest_selected(rng: np.random.Generator) -> None:
    model = build(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[N,64] x) => (float[N,64] y) { y = MatMul(x, w) }',
        w=low_rank(rng, 64, 64, rank=30, noise=0.1),
    )
    ctx = context(model, rng)
    pass_ = LowRankPass(LowRankPass.Options(min_size=1000, levels=(0.25, 0.5, 0.75)))
    units = pass_.units(model, ctx)
    assert [u.name for u in units] == ["y@75%", "y@50%", "y@25%"]
    errors = [u.sensitivity or 0.0 for u in units]
    assert errors == sorted(errors) and errors[0] < errors[-1], "milder levels rank first"
    ranks = {}
    for chosen in (["y@75%"], ["y@75%", "y@50%"], ["y@50%"], ["y@75%", "y@50%", "y@25%"]):
        result = pass_(model, ctx.with_units(frozenset(chosen)))
        first = next(t for t in result.model.graph.initializer if "low_rank_a" in t.name)
        ranks[tuple(chosen)] = first.dims[1]
    assert ranks[("y@75%",)] == 24 > ranks[("y@75%", "y@50%")] == ranks[("y@50%",)] == 16
    assert ranks[("y@75%", "y@50%", "y@25%")] == 8
    assert next(t for t in pass_(model, ctx).model.graph.initializer if "low_rank_a" in t.name).dims[1] == 8


def correlated(rng: np.random.Generator, count: int) -> np.ndarray:
    scales = np.geomspace(10.0, 0.3, 12)
    mix = np.random.default_rng(5).standard_normal((12, 64))
    x = (rng.standard_normal((count, 12)) * scales) @ mix + 0.01 * rng.standard_normal((count, 64))
    return x.astype(np.float32)


@pytest.mark.parametrize("options", [{"ratio": 0.5}, {"max_error": 0.02}])
def test_data_aware_beats_plain_svd_on_correlated_inputs(rng: np.random.Generator, options: dict) -> None:
    """A full-rank layer whose inputs span few directions: fitting to them keeps the output, plain SVD does not."""
    model = build(
        '<ir_version: 8, opset_import: ["" : 17]>\ng (float[N,64] x) => (float[N,48] y) { y = MatMul(x, w) }',
        w=rng.standard_normal((64, 48)).astype(np.float32),
    )
    ctx = PassContext(calibration=Dataset({"x": correlated(rng, 256)}, frozenset(), True))
    held_out = {"x": correlated(rng, 64)}
    (want,) = run_ort(model, held_out)
    errors, removed = {}, {}
    for method in ("data-aware", "svd"):
        result = LowRankPass(LowRankPass.Options(min_size=1000, method=method, **options))(model, ctx)
        if result.modified:
            (got,) = run_ort(result.model, held_out)
            errors[method] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
            removed[method] = result.stats["params_removed"]
    assert errors["data-aware"] < 0.03
    if "ratio" in options:  # the same rank (13) for both: svd even with its B refitted is far worse
        assert errors["svd"] > 5 * errors["data-aware"]
    else:  # plain SVD needs a higher rank for the same bound on the calibration inputs
        assert removed["data-aware"] > removed.get("svd", 0)


def test_end_to_end_applies_or_narrows(tmp_path: Path, rng: np.random.Generator) -> None:
    """Two low-rank layers are split and verified; forcing a low rank on the full-rank one narrows it out."""
    model = build(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,64] x) => (float[N,10] y) {
          h1 = MatMul(x, w1)
          r1 = Tanh(h1)
          h2 = MatMul(r1, w2)
          r2 = Tanh(h2)
          h3 = MatMul(r2, w3)
          r3 = Tanh(h3)
          y = MatMul(r3, w4)
        }
        """,
        w1=(rng.standard_normal((64, 96)) / 8).astype(np.float32),
        w2=low_rank(rng, 96, 96, rank=5) * 4,
        w3=low_rank(rng, 96, 96, rank=5) * 4,
        w4=rng.standard_normal((96, 10)).astype(np.float32),
    )
    onnx.save(model, tmp_path / "mlp.onnx")
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((128, 64)).astype(np.float32))

    def run(**options: float) -> dict:
        pass_ = LowRankPass(LowRankPass.Options(min_size=1000, **options))  # type: ignore[arg-type]
        result = graphopt.optimize(tmp_path / "mlp.onnx", tmp_path / "data.npz", passes=[pass_])
        record = result.report.record("low-rank")
        assert record.stats["layers_split"] == 2 and all(v["passed"] for v in record.verifications)
        return {"status": record.status, "units": {u["name"]: u["applied"] for u in record.units},
                "skipped": " | ".join(f"{s['target']}: {s['reason']}" for s in record.skipped)}

    gentle = run(energy=0.999)
    assert gentle["status"] == "applied" and "h1: rank" in gentle["skipped"]
    assert "y: 96×10 = 960 params < min_size 1000" in gentle["skipped"]
    forced = run(ratio=0.15)  # rank 5 of 64 for h1: far outside the budget
    assert forced["status"] == "narrowed"
    assert forced["units"] == {"h1": False, "h2": True, "h3": True}
