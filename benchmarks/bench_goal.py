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
    latency, latency_gains = _comparison(results, GOAL, list(SINGLES), "latency_ratio", "×", PEERS)
    size, size_gains = _comparison(results, SIZE_GOAL, list(SIZE_SINGLES), "size_ratio", "")
    lines = ["## Summary", "",
             ("Latency as a ratio to the original, from the one interleaved run of each model; *within budget*: "
              "graphopt's default budget on the held-out half. *gain*: best single pass ÷ `--goal`."), "",
             "| model | `--goal latency` | its choice | best single pass | gain | onnxruntime's best within budget |",
             "|---|---:|---|---|---:|---|", *latency]
    if latency_gains:
        lines += ["", f"Geometric mean of the gain over {len(latency_gains)} models: **{_geomean(latency_gains):.2f}×**."]
    lines += ["", "Size as a ratio to the original's serialised model. *gain*: best single size pass ÷ `--goal size`.",
              "", "| model | `--goal size` | its choice | best single size pass | gain |", "|---|---:|---|---|---:|",
              *size]
    if size_gains:
        lines += ["", f"Geometric mean of the size gain over {len(size_gains)} models: **{_geomean(size_gains):.2f}×**."]
    return [*lines, ""]


def _comparison(results: list[ModelResult], label: str, singles: list[str], key: str, unit: str,
                peers: tuple[str, ...] = ()) -> tuple[list[str], list[float]]:
    """A table row per model: the ``label`` variant's ``key`` figure and choice, the best of ``singles`` within
    budget (none, or one no better than the original, counts as the original: 1.0), the gain, and with ``peers``
    their best within budget; and the gains."""
    rows, gains = [], []
    for r in results:
        goal = r.row(label)
        if goal is None or not goal.ok:
            rows.append(f"| {r.title} | error | | | |" + (" |" if peers else ""))
            continue
        single = _fastest(r.rows, singles, key)
        figure = getattr(goal, key)
        best = getattr(single, key) if single is not None and getattr(single, key) < 1.0 else 1.0
        gains.append(best / figure)
        choice = goal.status if len(goal.status) <= 90 else goal.status[:89] + "…"
        row = (f"| {r.title} | {figure:.3f}{unit} ({'within budget' if goal.within_budget else '**out**'}) "
               f"| {choice} | {f'{single.variant} {getattr(single, key):.3f}{unit}' if single else 'none'} "
               f"| {gains[-1]:.2f}× |")
        if peers:
            peer = _fastest(r.rows, peers, key)
            row += f" {f'{peer.variant} {getattr(peer, key):.3f}{unit}' if peer else 'none'} |"
        rows.append(row)
    return rows, gains


if __name__ == "__main__":
    run_benchmark("goal", "graphopt --goal latency|size vs the best single pass and onnxruntime", __doc__, build,
                  models=MODELS, default_runs=LATENCY_RUNS, summary=summary)
