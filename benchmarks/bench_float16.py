"""Benchmark the float16 pass on real models: file size, latency ratio, fidelity and accuracy, in one run.

Usage:
    python benchmarks/bench_float16.py                          # digits and minilm (what is installed)
    python benchmarks/bench_float16.py --models digits --runs 3000 --out benchmarks/results

Writes ``<out>/float16-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run:

- Samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0); fidelity is measured on
  the held-out half only.
- Variants: ``compute`` with ``kernels=runtime`` (only ops onnxruntime's CPU EP runs in float16), ``compute`` with
  ``kernels=any`` (every op outside the block list; the CPU EP then inserts its own Casts around ops it has no
  float16 kernel for) and ``weights`` (float16 storage + Cast), each *verified* under the default budget (cosine
  ≥ 0.99, top-1 ≥ 0.99) or *unverified* (no bound: what the setting does by itself).
- Columns: the pass's fp16/fp32 node and Cast counts, then what ``harness.py`` measures for every benchmark
  (size, latency and fidelity ratios to the original, budget).

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

from harness import Candidate, Column, graphopt_variant, run_benchmark
from workloads import Workload

from graphopt.data import Dataset
from graphopt_passes.float16 import Float16Pass

VARIANTS: list[tuple[str, dict[str, str], bool]] = [
    ("compute, CPU kernels", {"mode": "compute", "kernels": "runtime"}, True),
    ("compute, CPU kernels", {"mode": "compute", "kernels": "runtime"}, False),
    ("compute, all ops", {"mode": "compute", "kernels": "any"}, True),
    ("compute, all ops", {"mode": "compute", "kernels": "any"}, False),
    ("weights", {"mode": "weights"}, True),
    ("weights", {"mode": "weights"}, False),
]
DEFAULT_RUNS = {"digits": 3000, "minilm": 200}


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    return [graphopt_variant(w, label, [Float16Pass(Float16Pass.Options(**options))],  # type: ignore[arg-type]
                             verified=verified, record="float16")
            for label, options, verified in VARIANTS]


def _stat(key: str) -> Column:
    header = {"nodes_fp16": "fp16 nodes", "nodes_fp32": "fp32 nodes", "casts_inserted": "Casts"}[key]
    return Column(header, lambda row, _: str(row.stats.get(key, "–")))


if __name__ == "__main__":
    run_benchmark("float16", "float16 benchmark", __doc__, build, models=("digits", "minilm"),
                  default_runs=DEFAULT_RUNS, extra=[_stat(k) for k in ("nodes_fp16", "nodes_fp32", "casts_inserted")])
