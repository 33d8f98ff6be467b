"""Benchmark weight clustering on real models: file size, latency ratio, fidelity and accuracy, in one run.

Usage:
    python benchmarks/bench_weight_clustering.py                      # digits and minilm
    python benchmarks/bench_weight_clustering.py --models digits --runs 3000 --out benchmarks/results

Writes ``<out>/weight-clustering-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run:

- Samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0): the data-aware weights
  come from the calibration half, every figure from the held-out half.
- Each variant is a pipeline through ``graphopt.optimize``: *unverified* ones (no bound) show what k clusters do
  to every eligible tensor; *verified* ones run under the default budget (cosine ≥ 0.99, top-1 ≥ 0.99), narrowed
  to the tensors that keep it; ``levels=16;64`` lets narrowing give each tensor 16 (4-bit) or 64 (8-bit) values.
- Columns: serialised file size as a ratio to the original (smaller is better: 0.125 = 8× smaller), single-thread
  batch-1 median latency as a ratio to the original (``workloads.latency_ratios``: a small model's variants
  interleaved in one call, a large one's each against the original in its own pair; onnxruntime folds the
  codebook at load, so it should be 1.00×), mean and min per-sample cosine and top-1 agreement of the main output against the original, task accuracy where labelled.

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from workloads import (
    ROOT,
    Workload,
    cell,
    feed,
    held_out_indices,
    latency_ratios,
    load_workloads,
    machine,
    write_results,
)

import graphopt
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance
from graphopt_passes.weight_clustering import WeightClusteringPass

log = logging.getLogger("bench_weight_clustering")

_OPTIONS = WeightClusteringPass.Options
VARIANTS: list[tuple[str, WeightClusteringPass.Options, bool]] = [
    ("k=8", _OPTIONS(clusters=8), False),
    ("k=16", _OPTIONS(clusters=16), False),
    ("k=16, not compensated", _OPTIONS(clusters=16, compensate=False), False),
    ("k=16, not data-aware", _OPTIONS(clusters=16, data_aware=False, compensate=False), False),
    ("k=32 (8-bit indices)", _OPTIONS(clusters=32), False),
    ("k=16, verified", _OPTIONS(clusters=16), True),
    ("levels 16;64, verified", _OPTIONS(levels=(16, 64)), True),
    ("levels 16;64, verified, not compensated", _OPTIONS(levels=(16, 64), compensate=False), True),
]
DEFAULT_RUNS = {"digits": 3000, "minilm": 200}


@dataclass
class Row:
    model: str
    variant: str
    verified: bool
    status: str = ""
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def bench_model(w: Workload, runs: int, variants: list[tuple[str, WeightClusteringPass.Options, bool]] | None = None
                ) -> tuple[list[Row], dict[str, Any]]:
    _, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    reference = run_dataset(create_session(w.model, config), verification, config)[0]
    rows, models = [Row(w.name, "float", True, "original")], [w.model]
    for variant, options, verified in variants or VARIANTS:
        log.warning("[%s] %s …", w.name, variant)
        start = time.perf_counter()
        result = graphopt.optimize(w.model, w.data, passes=[WeightClusteringPass(options)],
                                   tolerance=None if verified else Tolerance())
        record = next(r for r in result.report.passes if r.name == WeightClusteringPass.name)
        rows.append(Row(w.name, variant, verified, record.status, seconds=time.perf_counter() - start,
                        stats=dict(record.stats), notes=list(record.notes)))
        models.append(result.model)
    for row, model in zip(rows, models, strict=True):
        row.size_ratio = model.ByteSize() / w.model.ByteSize()
        got = run_dataset(create_session(model, config), verification, config)[0]
        stats = error_stats(reference[w.main_output], got[w.main_output])
        row.cosine, row.cosine_min, row.top1 = stats.cosine, stats.cosine_min, stats.top1
        if labels is not None:
            row.accuracy = float(np.mean(np.argmax(got[w.main_output], axis=-1) == labels))
    log.warning("[%s] latency: %d interleaved runs of %d models …", w.name, runs, len(models))
    for row, (latency, ratio) in zip(rows, latency_ratios(models, feed(verification), runs), strict=True):
        row.latency_ms, row.latency_ratio = latency, ratio
    info = {"title": w.title, "data": w.data_note, "samples": w.data.n_samples, "bytes": w.model.ByteSize(),
            "verification": verification.n_samples, "runs": runs}
    return rows, info



def render(results: list[tuple[list[Row], dict[str, Any]]], info: dict[str, Any], command: str) -> str:
    lines = [f"# Weight clustering benchmark, {info['date']}", "",
             (f"`{command}` — {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
              "single-thread batch-1 latency as a ratio to the original in one run."), ""]
    for rows, meta in results:
        lines += [f"## {meta['title']}", "",
                  (f"{meta['data']}; float file {meta['bytes']:,} bytes; measured on {meta['verification']} "
                   f"held-out samples; latency median of {meta['runs']} interleaved runs "
                   "(in pairs with the original above 20 MB)."), "",
                  ("| variant | verified | status | tensors | size | smaller | latency | cosine | min cosine | top-1 "
                   "| accuracy |"), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r.variant} | {'yes' if r.verified else 'no'} | {r.status} | "
                         f"{r.stats.get('tensors_clustered', 0)} | {r.size_ratio:.3f} | {1 / r.size_ratio:.2f}× | "
                         f"{r.latency_ratio:.3f}× | {cell(r.cosine, 5)} | {cell(r.cosine_min, 5)} | "
                         f"{cell(r.top1, 4)} | {cell(r.accuracy, 4)} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model)")
    parser.add_argument("--variants", default="", help="comma-separated variant numbers to run (0-based, default all): "
                        + "; ".join(f"{i}: {v[0]}" for i, v in enumerate(VARIANTS)))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "python benchmarks/bench_weight_clustering.py " + " ".join(sys.argv[1:])
    variants = [VARIANTS[int(i)] for i in args.variants.split(",") if i.strip()] or VARIANTS
    results = [bench_model(w, args.runs or DEFAULT_RUNS.get(w.name, 500), variants)
               for w in load_workloads(args.models)]
    info = machine()
    text = render(results, info, command.strip())
    print(text)
    write_results(args.out, "weight-clustering", text, {"machine": info, "command": command.strip(),
         "models": [{"info": meta, "rows": [asdict(r) for r in rows]} for rows, meta in results]})


if __name__ == "__main__":
    main()
