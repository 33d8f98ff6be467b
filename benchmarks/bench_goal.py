"""``--goal latency`` and ``--goal size`` against the best single pass and onnxruntime's quantizers, on real models,
in one run.

Usage:
    python benchmarks/bench_goal.py                       # every model whose packages are installed
    python benchmarks/bench_goal.py --models cnn32,onet,digits

Per model, on the samples graphopt splits (half calibration, half held out, seed 0), the variants are:

- ``graphopt --goal latency``: ``graphopt.optimize(model, data, goal="latency")``, which tries a plan per pass
  setting and combinations under a split budget, verified, and keeps the fastest in its own timing;
- ``graphopt --goal size``: likewise, keeping the smallest;
- the single passes a user would otherwise pick, each after the lossless passes, verified by graphopt: for
  latency ``qdq-int8`` (static), ``qdq-int8{mode=dynamic}``, ``neuron-pruning``; for size ``weight-clustering``,
  ``int4-weights``, ``float16{mode=weights}`` and static ``qdq-int8`` kept even where it is slower
  (``speed_check=note``), as ``--goal size`` keeps it;
- onnxruntime's ``quantize_static`` (plain and ``reduce_range``) and ``quantize_dynamic`` (``peers.py``).

Every variant is then timed in one interleaved run with the original (single thread, batch 1, the harness's
``latency_ratios``) and judged on the held-out half by graphopt's default budget. The summary gives, per model,
``--goal latency``'s latency against the fastest single pass within budget and against onnxruntime's fastest within
budget, and ``--goal size``'s size against the smallest single size pass within budget, with the geometric means of
best single ÷ goal over the models. Not part of CI: timings belong here.
"""

from __future__ import annotations

import math
import time

from harness import ORIGINAL, Candidate, ModelResult, Row, error_text, graphopt_variant, run_benchmark
from peers import ort_quantizers
from workloads import LATENCY_RUNS, Workload

import graphopt
from graphopt.data import Dataset

MODELS = ("digits", "cnn32", "onet", "silero16k", "silero", "ddddocr", "ddddocr_det", "minilm", "magika",
          "ppocr_det", "ppocr_rec")
GOAL = "graphopt --goal latency"
SIZE_GOAL = "graphopt --goal size"
LOSSLESS = "fast-prelu,zero-weight-elimination"
SINGLES = {"qdq-int8": f"{LOSSLESS},qdq-int8",
           "qdq-int8 dynamic": f"{LOSSLESS},qdq-int8{{mode=dynamic}}",
           "neuron-pruning": f"{LOSSLESS},neuron-pruning"}
SIZE_SINGLES = {"weight-clustering": f"{LOSSLESS},weight-clustering",
                "int4-weights": f"{LOSSLESS},int4-weights",
                "float16 weights": f"{LOSSLESS},float16{{mode=weights}}",
                "qdq-int8 for size": f"{LOSSLESS},qdq-int8{{speed_check=note}}"}
PEERS = ("ort static", "ort static reduce_range", "ort dynamic")


def _goal(w: Workload, goal: str, label: str) -> Candidate:
    start = time.perf_counter()
    try:
        result = graphopt.optimize(w.model, w.data, goal=goal, output_kinds=w.output_kinds)
    except Exception as e:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
        return Candidate(label, None, time.perf_counter() - start, error_text(e))
    verdict = result.report.goal or {}
    return Candidate(label, result.model, time.perf_counter() - start, status=verdict.get("why", ""),
                     notes=[f"{c['plan']}: {c['status']}, {c['reason']}" for c in verdict.get("candidates", [])])


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    singles = [graphopt_variant(w, label, pipeline, record=pipeline.rsplit(",", 1)[1].split("{")[0])
               for label, pipeline in {**SINGLES, **SIZE_SINGLES}.items()]
    return [_goal(w, "latency", GOAL), _goal(w, "size", SIZE_GOAL), *singles, *ort_quantizers(w, calibration)]


def _fastest(rows: list[Row], labels: tuple[str, ...] | list[str], key: str = "latency_ratio") -> Row | None:
    fair = [r for r in rows if r.variant in labels and r.ok and r.within_budget and math.isfinite(getattr(r, key))
            and r.variant != ORIGINAL]
    return min(fair, key=lambda r: getattr(r, key), default=None)


def _geomean(gains: list[float]) -> float:
    return math.exp(sum(math.log(g) for g in gains) / len(gains))


def summary(results: list[ModelResult]) -> list[str]:
    lines = ["## Summary", "",
             ("Latency as a ratio to the original, from the one interleaved run of each model; *within budget*: "
              "graphopt's default budget on the held-out half. *gain*: best single pass ÷ `--goal`."), "",
             "| model | `--goal latency` | its choice | best single pass | gain | onnxruntime's best within budget |",
             "|---|---:|---|---|---:|---|"]
    gains = []
    for r in results:
        goal = r.row(GOAL)
        single = _fastest(r.rows, list(SINGLES))
        peer = _fastest(r.rows, PEERS)
        if goal is None or not goal.ok:
            lines.append(f"| {r.title} | error | | | | |")
            continue
        # a single pass outside the budget or slower than float is no option: the float model (1.0×) is
        best = single.latency_ratio if single is not None and single.latency_ratio < 1.0 else 1.0
        gain = best / goal.latency_ratio
        gains.append(gain)
        choice = goal.status if len(goal.status) <= 90 else goal.status[:89] + "…"
        lines.append(f"| {r.title} | {goal.latency_ratio:.3f}× ({'within budget' if goal.within_budget else '**out**'}) "
                     f"| {choice} | {f'{single.variant} {single.latency_ratio:.3f}×' if single else 'none'} "
                     f"| {gain:.2f}× | {f'{peer.variant} {peer.latency_ratio:.3f}×' if peer else 'none'} |")
    if gains:
        lines += ["", f"Geometric mean of the gain over {len(gains)} models: **{_geomean(gains):.2f}×**."]
    return [*lines, "", *_size_summary(results)]


def _size_summary(results: list[ModelResult]) -> list[str]:
    lines = ["Size as a ratio to the original's serialised model. *gain*: best single size pass ÷ `--goal size`.", "",
             "| model | `--goal size` | its choice | best single size pass | gain |", "|---|---:|---|---|---:|"]
    gains = []
    for r in results:
        goal = r.row(SIZE_GOAL)
        if goal is None or not goal.ok:
            lines.append(f"| {r.title} | error | | | |")
            continue
        single = _fastest(r.rows, list(SIZE_SINGLES), key="size_ratio")
        best = single.size_ratio if single is not None and single.size_ratio < 1.0 else 1.0
        gains.append(best / goal.size_ratio)
        choice = goal.status if len(goal.status) <= 90 else goal.status[:89] + "…"
        lines.append(f"| {r.title} | {goal.size_ratio:.3f} ({'within budget' if goal.within_budget else '**out**'}) "
                     f"| {choice} | {f'{single.variant} {single.size_ratio:.3f}' if single else 'none'} "
                     f"| {gains[-1]:.2f}× |")
    if gains:
        lines += ["", f"Geometric mean of the size gain over {len(gains)} models: **{_geomean(gains):.2f}×**."]
    return [*lines, ""]


if __name__ == "__main__":
    run_benchmark("goal", "graphopt --goal latency|size vs the best single pass and onnxruntime", __doc__, build,
                  models=MODELS, default_runs=LATENCY_RUNS, summary=summary)
