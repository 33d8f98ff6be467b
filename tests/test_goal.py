"""``--goal latency|size``: graphopt tries a plan per pass setting that serves the goal, each verified under the
budget, compares the results once against the original and keeps the best, or says the original is best."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, RecordedProgress, digits, random_feeds, text_model
from onnx import numpy_helper

import graphopt
import graphopt.api
import graphopt.goal
from graphopt import perf, registry
from graphopt.cli import main
from graphopt.data import Dataset
from graphopt.errors import UsageError
from graphopt.goal import MIN_GAIN, GoalCandidate, choose, frontier
from graphopt.pass_base import Goal, PassBase, PassContext, PassResult, Unit
from graphopt.perf import Latency
from graphopt.provenance import read_provenance
from graphopt.report.html import optimize_page
from graphopt_passes.fast_prelu import FastPReluPass
from graphopt_passes.qdq_int8 import QdqInt8Pass
from graphopt_passes.zero_weight_elimination import ZeroWeightEliminationPass


def _int8(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def _elements(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _timer(int8_ratio: float, other_ratio: float, calls: list[int], smaller: float = 1.0, pruned: int = 0):
    """Fixed latencies: the first model 1 ms, int8 models ``int8_ratio`` ms, any other ``other_ratio`` ms, each times
    ``smaller`` when it has fewer than ``pruned`` weights."""
    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        calls.append(len(models))
        times = [1.0, *((int8_ratio if _int8(m) else other_ratio) * (smaller if _elements(m) < pruned else 1.0)
                        for m in models[1:])]
        return [Latency(t, t, 20) for t in times]
    return timer


def test_latency_keeps_the_plan_that_times_fastest_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 plan times fastest: it wins, the report lists every plan with its ratio from one final timing, and
    the model records the winning plan."""
    calls: list[int] = []
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, calls))
    model, data = digits(400)
    result = graphopt.optimize(model, data, goal="latency")
    goal = result.report.goal
    assert goal is not None and goal["winner"] == "fast-prelu,zero-weight-elimination,qdq-int8", goal["why"]
    assert _int8(result.model)
    provenance = read_provenance(result.model)
    assert provenance is not None and provenance.pipeline == goal["winner"]
    plans = {c["plan"]: c for c in goal["candidates"]}
    assert plans[goal["winner"]]["latency_ratio"] == 0.5 and plans[goal["winner"]]["status"] == "verified"
    verified = [c for c in goal["candidates"] if c["status"] == "verified"]
    assert len(verified) >= 3 and all(c["latency_ratio"] is not None for c in verified)
    assert all(c["latency_ratio"] is None for c in goal["candidates"] if c["status"] != "verified")
    singles = [c for c in verified if "held to" not in c["reason"]]
    structural = [c for c in singles if c["plan"].endswith(("dead-neuron-removal", "low-rank", "}"))]
    assert structural and 1 + len(singles) - len(structural) in calls, (
        "the lossless passes and the plans that change the numbers are timed together, once, with the original")
    assert 2 + len(structural) in calls, "then the structural plans, with the original and the best so far"
    assert "ahead of" in goal["why"]


def test_a_combined_plan_in_sequence_wins_when_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 halves the latency and pruning takes a further fifth: each of the two best structural plans followed by
    int8, in sequence, both judged by the whole budget against the original, beat either alone."""
    calls: list[int] = []
    model, data = digits(400)
    lossless = graphopt.optimize(model, data).model  # zero-weight elimination removes the model's zero channels
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, calls, 0.8, int(0.95 * _elements(lossless))))
    result = graphopt.optimize(model, data, goal="latency")
    goal = result.report.goal
    assert goal is not None and goal["winner"].endswith(",qdq-int8") and goal["winner"].count(",") == 3, goal["why"]
    combined = next(c for c in goal["candidates"] if c["plan"] == goal["winner"])
    assert combined["reason"].startswith("in sequence") and combined["latency_ratio"] == pytest.approx(0.4)
    combinations = [c for c in goal["candidates"] if c["reason"].startswith("in sequence")]
    assert len(combinations) == 2, "each of the two best structural plans is combined with int8"
    verified = [c for c in goal["candidates"] if c["status"] == "verified"
                and (c["reason"].startswith("in sequence") or "held to" in c["reason"])]
    assert calls[-1] == 2 + len(verified), "the combinations, the best single plan and the original in one call"
    assert _int8(result.model) and _elements(result.model) < 0.95 * _elements(lossless)
    first, second = (p for p in result.report.passes if not p.lossless)
    (one,), (other,) = first.verifications, second.verifications
    assert one["against"] == other["against"] == "original" and one["passed"] and other["passed"]
    assert one["tolerance"]["cosine"] == other["tolerance"]["cosine"] == 0.99


def test_plans_continue_the_runs_they_extend_and_give_what_a_fresh_run_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan continues the lossless passes' run, and a combination in sequence its lead's: no pass runs twice,
    the plan's report lists every pass once, and its model is the one the plan gives when run from scratch."""
    calls: list[int] = []
    model, data = digits(400)
    lossless = graphopt.optimize(model, data).model
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, calls, 0.8, int(0.95 * _elements(lossless))))
    progress = RecordedProgress()
    result = graphopt.optimize(model, data, goal="latency", progress=progress)
    goal = result.report.goal
    assert goal is not None and goal["winner"].count(",") == 3, goal["why"]
    names = [p.name for p in result.report.passes]
    assert names == ["normalize", "fast-prelu", "zero-weight-elimination", *goal["winner"].split(",")[2:],
                     "drop-inferred-shapes"]
    structural = next(c for c in goal["candidates"] if c["plan"] == goal["winner"].rsplit(",", 1)[0])
    ran = [label.removeprefix("pass ") for label in progress.labels if label.startswith("pass ")]
    assert ran.count("normalize") == 1, "the lossless passes run once, and every plan continues them"
    assert ran.count(structural["plan"].split(",")[-1].split("{")[0]) == 1, "the sequence continues its lead's run"
    fresh = graphopt.optimize(model, data, passes=goal["winner"]).model
    assert _digest(fresh) == _digest(result.model)


def _digest(model: onnx.ModelProto) -> bytes:
    """The graph, as a fresh run must reproduce it (not the provenance metadata)."""
    return model.graph.SerializeToString(deterministic=True)


def _latency_goal(model: onnx.ModelProto, timer: Callable[..., list[Latency]], monkeypatch: pytest.MonkeyPatch,
                  rng: np.random.Generator) -> tuple[graphopt.OptimizeResult, dict[str, Any], Dataset]:
    """``--goal latency`` on ``model`` fed 200 random samples, every timing by ``timer``: the result, its goal
    verdict and the data."""
    monkeypatch.setattr(perf, "measure_latency", timer)
    data = Dataset(random_feeds(model, 200, rng), frozenset(), True)
    result = graphopt.optimize(model, data, goal="latency")
    assert result.report.goal is not None
    return result, result.report.goal, data


def _conv_then_lstm(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N,16,8] → Conv (static int8's) → [8,N,32] → LSTM (dynamic int8's) → y."""
    return text_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[N,16,8] x) => (float[8,1,N,32] y) { c = Conv(x, k)\n t = Transpose <perm = [2, 0, 1]> (c)\n"
        " y = LSTM <hidden_size = 32> (t, w, r) }",
        k=(rng.standard_normal((32, 16, 1)) / 4).astype(np.float32),
        w=(rng.standard_normal((1, 128, 32)) / 6).astype(np.float32),
        r=(rng.standard_normal((1, 128, 32)) / 6).astype(np.float32))


def test_int8_where_static_ranges_hold_then_dynamic_int8_for_the_lstm(monkeypatch: pytest.MonkeyPatch,
                                                                       rng: np.random.Generator) -> None:
    """Static int8 runs the Conv, dynamic int8 the LSTM (which has no static kernel): the best plan that changes the
    numbers, then the next best for what it left float, in sequence under the one budget, beat either alone."""
    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        def time_of(model: onnx.ModelProto) -> float:
            kinds = {n.op_type for n in model.graph.node}
            return {(True, True): 0.5, (True, False): 0.7, (False, True): 0.8}.get(
                ("QuantizeLinear" in kinds, "DynamicQuantizeLSTM" in kinds), 1.0)
        return [Latency(t, t, 20) for t in [1.0, *map(time_of, models[1:])]]

    result, goal, _ = _latency_goal(_conv_then_lstm(rng), timer, monkeypatch, rng)
    assert goal["winner"] == "fast-prelu,zero-weight-elimination,qdq-int8,qdq-int8{mode=dynamic}", goal["why"]
    winner = next(c for c in goal["candidates"] if c["plan"] == goal["winner"])
    assert winner["latency_ratio"] == 0.5 and winner["reason"].startswith("in sequence")
    kinds = {n.op_type for n in result.model.graph.node}
    assert {"QuantizeLinear", "DynamicQuantizeLSTM"} <= kinds and "LSTM" not in kinds
    static, dynamic = (p for p in result.report.passes if p.name == "qdq-int8")
    assert static.status == dynamic.status == "applied" and "lstms_quantized" in dynamic.stats
    (first,), (second,) = static.verifications, dynamic.verifications
    assert first["passed"] and second["passed"] and first["tolerance"] == second["tolerance"]


def _conv_prelu_conv(rng: np.random.Generator) -> onnx.ModelProto:
    """x[N,16,10,10] → Conv → PRelu → Conv → y."""
    return text_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[N,16,10,10] x) => (float[N,32,10,10] y) {\n"
        " a = Conv <pads = [1, 1, 1, 1]> (x, k)\n p = PRelu(a, slope)\n y = Conv <pads = [1, 1, 1, 1]> (p, k2) }",
        k=(rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32),
        slope=np.full((32, 1, 1), 0.25, np.float32),
        k2=(rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32))


def test_a_lossless_rewrite_declined_alone_is_tried_again_under_int8(monkeypatch: pytest.MonkeyPatch,
                                                                      rng: np.random.Generator) -> None:
    """fast-prelu is slower alone, so its speed gate declines it; after static int8 it pays (the PRelu is what int8
    left float): the plans that change the numbers run after both forms of the lossless passes, and the one that
    keeps the rewrite wins, named so that ``--passes`` repeats it."""
    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        def time_of(model: onnx.ModelProto) -> float:
            kinds = {n.op_type for n in model.graph.node}
            return {(False, True): 1.0, (False, False): 1.05, (True, True): 0.9, (True, False): 0.5}[
                ("QuantizeLinear" in kinds, "PRelu" in kinds)]
        return [Latency(t, t, 20) for t in map(time_of, models)]

    model = _conv_prelu_conv(rng)
    result, goal, data = _latency_goal(model, timer, monkeypatch, rng)
    kept = "fast-prelu{speed_check=note},zero-weight-elimination"
    assert goal["winner"] == f"{kept},qdq-int8", goal["why"]
    plans = {c["plan"]: c for c in goal["candidates"]}
    assert "fast-prelu declined" in plans["fast-prelu,zero-weight-elimination"]["reason"]
    assert plans[kept]["status"] == "verified" and plans[kept]["latency_ratio"] == 1.05
    assert plans["fast-prelu,zero-weight-elimination,qdq-int8"]["latency_ratio"] == 0.9
    assert plans[goal["winner"]]["latency_ratio"] == 0.5
    structural = [c["plan"] for c in goal["candidates"] if c["plan"].endswith(("dead-neuron-removal", "low-rank"))]
    assert structural and all(p.startswith(f"{kept},") for p in structural), "structure after the winner's form"
    assert "PRelu" not in {n.op_type for n in result.model.graph.node}
    fresh = graphopt.optimize(model, data, passes=goal["winner"]).model
    assert _digest(fresh) == _digest(result.model)


def test_only_a_pass_with_a_speed_check_option_can_be_kept_whatever_its_speed() -> None:
    assert repr(FastPReluPass().ungated()) == "fast-prelu{speed_check=note}"
    assert repr(QdqInt8Pass().ungated()) == "qdq-int8{speed_check=note}"
    assert ZeroWeightEliminationPass().ungated() is None


class _Perturbing(PassBase):
    """A toy lossy pass for the search's budget logic: each of ``UNITS`` units adds its own fixed noise, of relative
    size ``SCALE``, to the weight ``w``, and records in the model how many it applied (the fake timer reads it)."""

    lossless = False
    UNITS = 1
    SCALE = 0.0
    SEED = 0

    @dataclass(frozen=True)
    class Options:
        pass

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[PassBase, ...]:
        return (cls(),) if goal == "latency" else ()

    def serves(self) -> frozenset[Goal]:
        return frozenset({"latency"})

    def units(self, model: onnx.ModelProto, context: PassContext) -> tuple[Unit, ...]:
        return tuple(Unit(f"{self.name}-{k}", None) for k in range(self.UNITS))

    def run(self, model: onnx.ModelProto, context: PassContext) -> PassResult:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        weight = numpy_helper.to_array(out.graph.initializer[0])
        chosen = [k for k in range(self.UNITS) if context.selects(f"{self.name}-{k}")]
        noise = np.random.default_rng(self.SEED).standard_normal((self.UNITS, *weight.shape)).astype(np.float32)
        weight = weight + self.SCALE * np.abs(weight).mean() * noise[chosen].sum(axis=0)
        out.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), "w"))
        onnx.helper.set_model_props(out, {**{p.key: p.value for p in model.metadata_props}, self.name: str(len(chosen))})
        return PassResult(out, bool(chosen), {"units": len(chosen)})


class _ManySmall(_Perturbing):
    """Eight units of about an eighth of the budget each: narrowing stops at the budget's edge."""

    name = "many-small"
    goal_stage = 0
    UNITS, SCALE, SEED = 8, 0.065, 1


class _OneLarge(_Perturbing):
    """One unit of about a third of the budget that halves the latency: it gains more per share of the budget."""

    name = "one-large"
    UNITS, SCALE, SEED = 1, 0.1, 2


def test_two_passes_that_only_fit_together_with_a_split_budget(monkeypatch: pytest.MonkeyPatch,
                                                                rng: np.random.Generator) -> None:
    """In sequence the structural pass narrows to the budget's edge and the one after it is rolled back; the split
    gives the second the share it used alone (it gains more per share) and holds the first to the rest: both fit,
    within the budget, and the combination wins."""
    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        def time_of(model: onnx.ModelProto) -> float:
            props = {p.key: int(p.value) for p in model.metadata_props if p.key in ("many-small", "one-large")}
            return (1.0 - 0.05 * props.get("many-small", 0)) * (0.5 if props.get("one-large") else 1.0)
        return [Latency(t, t, 20) for t in [1.0, *map(time_of, models[1:])]]

    monkeypatch.setattr(perf, "measure_latency", timer)
    monkeypatch.setattr(graphopt.api, "available_passes", lambda: {"many-small": _ManySmall, "one-large": _OneLarge})
    model = text_model('<ir_version: 8, opset_import: ["" : 17]>\ng (float[N,32] x) => (float[N,32] y) '
                       "{ y = MatMul(x, w) }", w=rng.standard_normal((32, 32)).astype(np.float32))
    data = Dataset(random_feeds(model, 400, rng), frozenset(), True)
    result = graphopt.optimize(model, data, goal="latency", output_kinds={"y": "values"})
    goal = result.report.goal
    assert goal is not None
    plans = {c["plan"].removeprefix("fast-prelu,zero-weight-elimination,"): c for c in goal["candidates"]}
    small, large = plans["many-small"], plans["one-large"]
    assert "narrowed" in small["reason"] and small["budget_used"] > 0.85, small
    assert "applied" in large["reason"] and 0.2 < large["budget_used"] < 0.5, large
    chain = plans["many-small,one-large"]
    assert chain["status"] == "unchanged" and "one-large rolled back" in chain["reason"], chain
    split = next(c for p, c in plans.items() if p.startswith("many-small,one-large (budget split "))
    share = 1 - large["budget_used"]
    assert f"many-small held to {share:.0%} of the budget" in split["reason"], split
    assert split["status"] == "verified" and split["budget_used"] <= 1.0, split
    assert goal["winner"] == f"fast-prelu,zero-weight-elimination,{split['plan'].split(',', 2)[2]}", goal["why"]
    props = {p.key: int(p.value) for p in result.model.metadata_props if p.key in ("many-small", "one-large")}
    assert props["one-large"] == 1 and 0 < props["many-small"] < _ManySmall.UNITS
    last = result.report.passes[-2]
    assert last.name == "one-large" and last.verifications[-1]["passed"]


def test_latency_says_float_is_best_when_nothing_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan within 3% of the original (timing noise) or slower: the original is best, and no lossy pass is in
    the model."""
    monkeypatch.setattr(perf, "measure_latency", _timer(1.2, 0.98, []))
    model, data = digits(400)
    result = graphopt.optimize(model, data, goal="latency")
    goal = result.report.goal
    assert goal is not None and goal["winner"] is None
    assert goal["why"].startswith("float is best: no verified plan was 3% or more faster than the original")
    assert not _int8(result.model)
    assert [p.name for p in result.report.passes if not p.lossless] == []


def test_size_is_compared_exactly_without_the_speed_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """For size the smallest verified model wins; int8 that is slower still counts (no speed gate)."""
    monkeypatch.setattr(perf, "measure_latency", _timer(1.5, 1.5, []))
    model, data = digits(400)
    result = graphopt.optimize(model, data, goal="size")
    goal = result.report.goal
    assert goal is not None and goal["winner"]
    verified = [c for c in goal["candidates"] if c["status"] == "verified"]
    assert min(verified, key=lambda c: c["size_ratio"])["plan"] == goal["winner"]
    assert result.model.ByteSize() / model.ByteSize() == pytest.approx(
        next(c["size_ratio"] for c in verified if c["plan"] == goal["winner"]), abs=0.005)  # + provenance
    assert next(c for c in verified if c["plan"].endswith(",qdq-int8"))["size_ratio"] < 0.5


def test_the_time_budget_stops_starting_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.5, []))
    model, data = digits(400)
    result = graphopt.optimize(model, data, goal="latency", time_budget=0)
    goal = result.report.goal
    assert goal is not None
    first, *rest = goal["candidates"]
    assert first["plan"] == "fast-prelu,zero-weight-elimination" and first["status"] == "verified"
    assert rest and all(c["status"] == "not run" and "time budget (0 s)" in c["reason"] for c in rest)
    assert goal["winner"] == first["plan"]


def test_no_plan_starts_that_the_time_left_cannot_cover(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each plan takes 30 s on a clock that runs only while plans do: with 100 s, the third plan starts at 60 s
    (the quickest so far took 30 s); at 90 s none is expected to fit, so the search ends within its budget."""
    class Clock:
        now = 0.0

        @staticmethod
        def monotonic() -> float:
            return Clock.now

    class Ticking(RecordedProgress):
        @contextlib.contextmanager
        def task(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
            with super().task(label, total) as advance:
                Clock.now += 30.0 if label.startswith("--goal") else 0.0
                yield advance

    monkeypatch.setattr(graphopt.goal, "time", Clock)
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, []))
    model, data = digits(400)
    goal = graphopt.optimize(model, data, goal="latency", time_budget=100, progress=Ticking()).report.goal
    assert goal is not None and Clock.now == 90.0
    ran = [c for c in goal["candidates"] if c["status"] != "not run"]
    assert len(ran) == 3 and goal["winner"] == "fast-prelu,zero-weight-elimination,qdq-int8", goal["why"]
    assert all(c["reason"] == "too little of the time budget (100 s) was left for it"
               for c in goal["candidates"][3:])


def test_goal_and_passes_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = digits(400)
    with pytest.raises(UsageError, match="give --goal or --passes, not both"):
        graphopt.optimize(model, data, goal="latency", passes="qdq-int8")
    with pytest.raises(UsageError, match="--goal takes one of latency, size"):
        graphopt.optimize(model, data, goal="speed")
    code = main(["optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(EXAMPLES / "digits.npz"), "-o",
                 str(tmp_path / "o.onnx"), "--goal", "latency", "--passes", "qdq-int8"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "not both" in err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_goal_prints_the_plans_and_writes_them_in_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.99, []))
    out = tmp_path / "o.onnx"
    code = main(["optimize", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(EXAMPLES / "digits.npz"), "-o",
                 str(out), "--goal", "latency"])
    stdout = capsys.readouterr().out
    assert code == 0 and "goal latency: fast-prelu,zero-weight-elimination,qdq-int8: 0.500×" in stdout
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["goal"]["winner"] == "fast-prelu,zero-weight-elimination,qdq-int8"
    int8 = next(c for c in report["goal"]["candidates"] if c["plan"] == report["goal"]["winner"])
    assert 0 <= int8["budget_used"] < 1, "within the budget, and the share it used is said"
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("plan ") and " budget " in line)
    row = next(line for line in lines[header:] if line.startswith("qdq-int8 "))
    assert f" {100 * int8['budget_used']:.0f}% " in row, row
    onnx.checker.check_model(str(out), full_check=True)


def test_latency_and_size_trade_off_by_the_product_and_mark_the_frontier(monkeypatch: pytest.MonkeyPatch) -> None:
    """``latency,size`` tries the plans of both goals (each setting once), times and sizes them, and keeps the
    smallest product of the two ratios; the frontier holds exactly the plans no other plan (nor the original)
    matches in both."""
    monkeypatch.setattr(perf, "measure_latency", _timer(0.9, 0.95, []))
    model, data = digits(400)
    result = graphopt.optimize(model, data, goal="latency,size")
    goal = result.report.goal
    assert goal is not None and goal["goal"] == "latency,size"
    plans = [c["plan"] for c in goal["candidates"]]
    assert len(plans) == len(set(plans)), "a setting serving both goals is tried once"
    assert any("weight-clustering" in p for p in plans) and any(",neuron-pruning{" in p for p in plans)
    measured = [c for c in goal["candidates"] if c["latency_ratio"] is not None]
    products = {c["plan"]: c["latency_ratio"] * c["size_ratio"] for c in measured}
    cosines = {c["plan"]: c["cosine"] for c in measured}
    ties = [p for p, v in products.items() if v <= min(products.values()) * (1 + MIN_GAIN)]  # the latency's noise
    assert goal["winner"] == max(ties, key=lambda p: (cosines[p], -products[p]))
    assert "its size (product" in goal["why"]
    for c in measured:
        beaten = any(o["latency_ratio"] <= c["latency_ratio"] and o["size_ratio"] <= c["size_ratio"]
                     and (o["latency_ratio"], o["size_ratio"]) != (c["latency_ratio"], c["size_ratio"])
                     for o in measured)
        assert c["frontier"] == (not beaten), c
    page = optimize_page(result.report)
    assert 'aria-label="Plans tried: latency and size against the original"' in page
    assert page.count("<circle") >= len(measured)


def test_the_frontier_leaves_out_what_the_original_or_another_plan_beats() -> None:
    def plan(name: str, latency: float | None, size: float | None) -> GoalCandidate:
        return GoalCandidate(name, "verified", latency_ratio=latency, size_ratio=size)

    marked = frontier([plan("fast", 0.5, 0.9), plan("small", 0.8, 0.3), plan("worse", 0.8, 0.95),
                       plan("slower than float", 1.2, 0.2), plan("bigger than float", 0.4, 1.1),
                       plan("unmeasured", None, 0.1), plan("same as float", 1.0, 1.0)])
    assert {c.plan for c in marked if c.frontier} == {"fast", "small", "slower than float", "bigger than float"}


class VendorInt8(QdqInt8Pass):
    """A third party's pass: it joins ``--goal`` through its entry point by naming its settings for a goal."""

    name = "vendor-int8"

    @classmethod
    def goal_variants(cls, goal: Goal) -> tuple[QdqInt8Pass, ...]:
        return (cls(cls.Options(min_dim=8)),) if goal == "latency" else ()


@pytest.fixture
def vendor_pass(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    installed = registry.entry_points(group=registry.ENTRY_POINT_GROUP)
    vendor = EntryPoint("vendor-int8", f"{__name__}:VendorInt8", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed, vendor])
    registry.available_passes.cache_clear()
    yield
    registry.available_passes.cache_clear()


@pytest.mark.usefixtures("vendor_pass")
def test_a_third_party_pass_joins_the_search_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's setting is one more plan, verified like the others; it wins when it times fastest (here: the
    only int8 model whose first layer, too small for qdq-int8's default, reads int8)."""
    def first_layer_int8(model: onnx.ModelProto) -> bool:
        inputs = {i.name for i in model.graph.input}
        return any(n.op_type == "QuantizeLinear" and n.input[0] in inputs for n in model.graph.node)

    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        times = [1.0, *(0.4 if first_layer_int8(m) else 0.9 for m in models[1:])]
        return [Latency(t, t, 20) for t in times]

    monkeypatch.setattr(perf, "measure_latency", timer)
    model, data = digits(400)
    goal = graphopt.optimize(model, data, goal="latency").report.goal
    assert goal is not None
    vendor = next(c for c in goal["candidates"] if c["plan"].endswith(",vendor-int8{min_dim=8}"))
    assert vendor["status"] == "verified", vendor
    assert goal["winner"] == vendor["plan"], goal["why"]


def test_progress_names_each_plan_as_it_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, []))
    progress = RecordedProgress()
    model, data = digits(400)
    goal = graphopt.optimize(model, data, goal="latency", progress=progress).report.goal
    assert goal is not None
    named = [label for label in progress.labels if label.startswith("--goal latency, plan ")]
    run = [c["plan"] for c in goal["candidates"] if c["status"] != "not run"]
    assert [label.split(": ", 1)[1] for label in named] == run


def test_plans_timed_within_the_noise_are_a_tie_won_by_the_closest_outputs() -> None:
    """0.590× and 0.600× are one speed to a timing that puts identical models 3% apart: of the two, the plan whose
    outputs stay closer to the original's wins; a plan clearly slower (0.700×) does not, however faithful."""
    model, _ = digits(1)
    finals = [(GoalCandidate("pruned+int8", "verified", cosine=0.995), model),
              (GoalCandidate("int8", "verified", cosine=0.999), model),
              (GoalCandidate("float16", "verified", cosine=0.99999), model)]

    def timer(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        return [Latency(t, t, 20) for t in (1.0, 0.59, 0.60, 0.70)]

    verdict, best = choose("latency", model, finals, {}, timer=timer)
    assert best == 1 and verdict.winner == "int8" and "a tie the timing cannot break" in verdict.why
    clear = [(finals[0][0], model), (finals[1][0], model)]

    def faster(models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], **_: object) -> list[Latency]:
        return [Latency(t, t, 20) for t in (1.0, 0.50, 0.60)]

    verdict, best = choose("latency", model, clear, {}, timer=faster)
    assert best == 0 and "tie" not in verdict.why, "10% is a gain, not a tie"
