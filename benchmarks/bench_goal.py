"""``--goal latency`` against the best single pass and onnxruntime's quantizers, on real models, in one run.

Usage:
    python benchmarks/bench_goal.py                       # every model whose packages are installed
    python benchmarks/bench_goal.py --models cnn32,onet,digits

Per model, on the samples graphopt splits (half calibration, half held out, seed 0), the variants are:

- ``graphopt --goal latency``: ``graphopt.optimize(model, data, goal="latency")``, which tries a plan per pass
  setting and one combination under a split budget, verified, and keeps the fastest in its own timing;
- the single passes a user would otherwise pick, each after the lossless passes, verified by graphopt:
  ``qdq-int8`` (static), ``qdq-int8{mode=dynamic}``, ``neuron-pruning``;
- onnxruntime's ``quantize_static`` (plain and ``reduce_range``) and ``quantize_dynamic`` (``peers.py``).

Every variant is then timed in one interleaved run with the original (single thread, batch 1, the harness's
``latency_ratios``) and judged on the held-out half by graphopt's default budget. The summary gives, per model,
``--goal``'s latency against the fastest single pass within budget and against onnxruntime's fastest within budget,
and the geometric mean of best single ÷ goal over the models. Not part of CI: timings belong here.
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
SINGLES = {"qdq-int8": "fast-prelu,zero-weight-elimination,qdq-int8",
           "qdq-int8 dynamic": "fast-prelu,zero-weight-elimination,qdq-int8{mode=dynamic}",
           "neuron-pruning": "fast-prelu,zero-weight-elimination,neuron-pruning"}
PEERS = ("ort static", "ort static reduce_range", "ort dynamic")


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    start = time.perf_counter()
    try:
        result = graphopt.optimize(w.model, w.data, goal="latency", output_kinds=w.output_kinds)
    except Exception as e:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
        goal = Candidate(GOAL, None, time.perf_counter() - start, error_text(e))
    else:
        verdict = result.report.goal or {}
        goal = Candidate(GOAL, result.model, time.perf_counter() - start, status=verdict.get("why", ""),
                         notes=[f"{c['plan']}: {c['status']}, {c['reason']}" for c in verdict.get("candidates", [])])
    singles = [graphopt_variant(w, label, pipeline, record=pipeline.rsplit(",", 1)[1].split("{")[0])
               for label, pipeline in SINGLES.items()]
    return [goal, *singles, *ort_quantizers(w, calibration)]


def _fastest(rows: list[Row], labels: tuple[str, ...] | list[str]) -> Row | None:
    fair = [r for r in rows if r.variant in labels and r.ok and r.within_budget and math.isfinite(r.latency_ratio)
            and r.variant != ORIGINAL]
    return min(fair, key=lambda r: r.latency_ratio, default=None)


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
        geomean = math.exp(sum(math.log(g) for g in gains) / len(gains))
        lines += ["", f"Geometric mean of the gain over {len(gains)} models: **{geomean:.2f}×**."]
    return [*lines, ""]


if __name__ == "__main__":
    run_benchmark("goal", "graphopt --goal latency vs the best single pass and onnxruntime", __doc__, build,
                  models=MODELS, default_runs=LATENCY_RUNS, summary=summary)
