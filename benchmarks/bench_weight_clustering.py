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
- Columns: tensors clustered and how many times smaller the file is, then what ``harness.py`` measures for every
  benchmark (size, latency and fidelity ratios to the original, budget). onnxruntime folds the codebook at load,
  so latency should read 1.00×.

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

from harness import Candidate, Column, graphopt_variant, run_benchmark
from workloads import Workload

from graphopt.data import Dataset
from graphopt_passes.weight_clustering import WeightClusteringPass

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


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    return [graphopt_variant(w, label, [WeightClusteringPass(options)], verified=verified, record="weight-clustering")
            for label, options, verified in VARIANTS]


if __name__ == "__main__":
    run_benchmark("weight-clustering", "Weight clustering benchmark", __doc__, build, models=("digits", "minilm"),
                  default_runs=DEFAULT_RUNS,
                  extra=[Column("tensors", lambda row, _: str(row.stats.get("tensors_clustered", 0))),
                         Column("smaller", lambda row, _: f"{1 / row.size_ratio:.2f}×")])
