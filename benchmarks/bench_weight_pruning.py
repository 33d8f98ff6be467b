"""Benchmark the weight-pruning pass: magnitude vs Wanda scores, with and without the least-squares refit.

Usage:
    python benchmarks/bench_weight_pruning.py                         # digits and all-MiniLM-L6-v2
    python benchmarks/bench_weight_pruning.py --models digits --runs 3000
    python benchmarks/bench_weight_pruning.py --targets 0.5,2:4 --levels "" --json weight_pruning.json

Per model, in one run, on the split ``graphopt.optimize`` makes (``Dataset.split(0.5)``): every unverified variant
runs the pass on every eligible layer with the calibration half (``min_size`` 4096), so rows differ only in score,
refit and target; the *verified* rows run ``graphopt.optimize`` (Wanda, refit), whose narrowing keeps the layers the
default budget (cosine ≥ 0.99, top-1 ≥ 0.99) allows; with ``--levels`` one more verified row gives every layer the
highest of those sparsities the budget allows (the pass's ``levels`` option). Fidelity is measured on the held-out half only. Columns: non-zero weights
(initializers and Constant tensors, sparse ones densified) of all params, serialised and zip-deflated size in
bytes, single-thread batch-1 median latency as a ratio to the original (``graphopt.perf.measure_latency``, all
variants of a model interleaved in one call, behind a discarded copy of the original: whichever model runs first
measures up to 15% slower on the 30 µs digits CNN), mean and min per-sample cosine and top-1 agreement of the main output
against the original, task accuracy where there are labels (digits), and the pass's own time. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from workloads import LOADERS, Unavailable, Workload, cell, feed, held_out_indices, machine

import graphopt
from graphopt.pass_base import PassContext
from graphopt.perf import measure_latency
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import error_stats
from graphopt_passes._math.sparse_storage import coo_decode, deflated_size
from graphopt_passes.weight_pruning import WeightPruningPass

Options = WeightPruningPass.Options
DEFAULT_RUNS = {"digits": 3000, "minilm": 100}


@dataclass
class Row:
    variant: str
    verified: bool
    layers: int = 0
    params: int = 0
    nonzero: int = 0
    size: int = 0
    zipped: int = 0
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0
    status: str = ""


def weights(model: onnx.ModelProto) -> list[np.ndarray]:
    found = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for node in (n for n in model.graph.node if n.op_type == "Constant"):
        for a in node.attribute:
            if a.name == "value":
                found.append(numpy_helper.to_array(a.t))
            elif a.name == "sparse_value":
                s = a.sparse_tensor
                found.append(coo_decode(numpy_helper.to_array(s.values), numpy_helper.to_array(s.indices),
                                        tuple(s.dims)))
    return found


def options_for(target: str, score: str, correct: bool) -> Options:
    if ":" in target:
        return Options(pattern=target, score=score, correct=correct)  # type: ignore[arg-type]
    return Options(sparsity=float(target), score=score, correct=correct)  # type: ignore[arg-type]


def bench_model(
    w: Workload, targets: list[str], verified: list[str], levels: str, runs: int
) -> tuple[list[Row], list[str]]:
    calibration, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    reference = run_dataset(create_session(w.model, config), verification, config)[0]
    rows, models, notes = [Row("original", True, status="original")], [w.model], []
    context = PassContext(calibration=calibration, runtime=config)
    for target in targets:
        for score in ("magnitude", "wanda"):
            for correct in (False, True):
                variant = f"{target} {score}{', refit' if correct else ''}"
                print(f"[{w.name}] {variant} …", file=sys.stderr, flush=True)
                start = time.perf_counter()
                result = WeightPruningPass(options_for(target, score, correct)).run(w.model, context)
                rows.append(Row(variant, False, int(result.stats["layers_pruned"]),
                                seconds=time.perf_counter() - start, status="unverified"))
                models.append(result.model)
    runs_verified = [(target, options_for(target, "wanda", True)) for target in verified]
    if levels:
        runs_verified.append((f"levels {levels}", Options(levels=tuple(float(v) for v in levels.split(";")))))
    for target, options in runs_verified:
        print(f"[{w.name}] {target} wanda, refit, verified …", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = graphopt.optimize(w.model, w.data, passes=[WeightPruningPass(options)], normalize=False)
        record, outcome = result.report.passes[-1], result.pipeline.outcomes[-1]
        accepted = outcome.model_after is not outcome.model_before and outcome.result is not None
        layers = int(outcome.result.stats["layers_pruned"]) if accepted and outcome.result else 0
        rows.append(Row(f"{target} wanda, refit", True, layers, seconds=time.perf_counter() - start,
                        status=f"{record.status} ({record.trials} trials)"))
        models.append(result.model)
        notes += [f"verified {target}: {u['name']} {'kept' if u['applied'] else 'left out'}, {u['detail']}"
                  f"{': ' + u['reason'] if u['reason'] else ''}" for u in record.units]
    for row, model in zip(rows, models, strict=True):
        arrays = weights(model)
        row.params, row.nonzero = sum(a.size for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)
        data = model.SerializeToString()
        row.size, row.zipped = len(data), deflated_size(data)
        got = run_dataset(create_session(model, config), verification, config)[0]
        stats = error_stats(reference[w.main_output], got[w.main_output])
        row.cosine, row.cosine_min, row.top1 = stats.cosine, stats.cosine_min, stats.top1
        if labels is not None:
            row.accuracy = float(np.mean(np.argmax(got[w.main_output], axis=-1) == labels))
    print(f"[{w.name}] latency: {runs} interleaved runs of {len(models)} models …", file=sys.stderr, flush=True)
    latencies = measure_latency([w.model, *models], feed(verification), runs=runs)[1:]  # the first runs ~15% slow
    for row, latency in zip(rows, latencies, strict=True):
        row.latency_ratio = latency.median_ms / latencies[0].median_ms
    return rows, notes



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    parser.add_argument("--targets", default="0.3,0.5,0.6,2:4", help="sparsities and n:m patterns, unverified")
    parser.add_argument("--verified", default="0.5,2:4", help="targets also run verified (wanda, refit)")
    parser.add_argument("--levels", default="0.2;0.3;0.4;0.5", help="also run verified with these levels (; separated)")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    verified = [t for t in args.verified.split(",") if t]
    info = machine()
    print(f"`python benchmarks/bench_weight_pruning.py {' '.join(sys.argv[1:])}`: {info['cpu']}, {info['cores']} "
          f"cores, onnxruntime {info['onnxruntime']}\n")
    results = {}
    for name in (n.strip() for n in args.models.split(",") if n.strip()):
        try:
            workload = LOADERS[name]()
        except Unavailable as e:
            print(f"{name}: skipped: {e}\n")
            continue
        rows, notes = bench_model(workload, targets, verified, args.levels, args.runs or DEFAULT_RUNS.get(name, 200))
        results[name] = [asdict(r) for r in rows]
        print(f"## {workload.title}: {workload.data_note}\n")
        print("| variant | verified | layers | non-zero / params | size (bytes) | zipped | latency | cosine | "
              "min cosine | top-1 | accuracy | pass s | status |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r.variant} | {'yes' if r.verified else 'no'} | {r.layers} | {r.nonzero:,} / {r.params:,} | "
                  f"{r.size:,} | {r.zipped:,} | {r.latency_ratio:.3f}× | {cell(r.cosine, 5)} | "
                  f"{cell(r.cosine_min, 5)} | {cell(r.top1, 4)} | {cell(r.accuracy, 4)} | {r.seconds:.1f} | "
                  f"{r.status} |")
        print("\n" + "\n".join(f"- {n}" for n in notes) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "models": results}, indent=2))


if __name__ == "__main__":
    main()
