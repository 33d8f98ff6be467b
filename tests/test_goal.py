"""``--goal latency|size``: graphopt tries a plan per pass setting that serves the goal, each verified under the
budget, compares the results once against the original and keeps the best, or says the original is best."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import EXAMPLES, RecordedProgress, digits

import graphopt
from graphopt import perf, registry
from graphopt.cli import main
from graphopt.errors import UsageError
from graphopt.goal import MIN_GAIN, GoalCandidate, choose, frontier
from graphopt.pass_base import Goal
from graphopt.perf import Latency
from graphopt.provenance import read_provenance
from graphopt.report.html import optimize_page
from graphopt_passes.qdq_int8 import QdqInt8Pass


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
    assert 1 + len(singles) in calls, "the single plans are timed together, once, with the original"
    assert "ahead of" in goal["why"]


def test_a_combined_plan_splits_the_budget_and_wins_when_it_is_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 halves the latency and pruning takes a further fifth: the best structural plan and int8 together, the
    first held to its share of the budget, the second to the whole budget against the original, beat both."""
    calls: list[int] = []
    model, data = digits(400)
    lossless = graphopt.optimize(model, data).model  # zero-weight elimination removes the model's zero channels
    monkeypatch.setattr(perf, "measure_latency", _timer(0.5, 0.9, calls, 0.8, int(0.95 * _elements(lossless))))
    result = graphopt.optimize(model, data, goal="latency")
    goal = result.report.goal
    assert goal is not None and goal["winner"].endswith(",qdq-int8") and goal["winner"].count(",") == 3, goal["why"]
    combined = next(c for c in goal["candidates"] if c["plan"] == goal["winner"])
    assert "held to" in combined["reason"] and combined["latency_ratio"] == pytest.approx(0.4)
    combinations = [c for c in goal["candidates"] if "held to" in c["reason"]]
    assert len(combinations) == 2, "each of the two best structural plans is combined with int8"
    verified = [c for c in combinations if c["status"] == "verified"]
    assert calls[-1] == 2 + len(verified), "the combinations, the best single plan and the original in one call"
    assert _int8(result.model) and _elements(result.model) < 0.95 * _elements(lossless)
    first, second = (p for p in result.report.passes if not p.lossless)
    (shared,), (whole,) = first.verifications, second.verifications
    assert shared["against"] == whole["against"] == "original" and shared["passed"] and whole["passed"]
    assert shared["tolerance"]["cosine"] > 0.99 and whole["tolerance"]["cosine"] == 0.99


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
