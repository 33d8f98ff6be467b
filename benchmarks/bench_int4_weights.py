"""Benchmark block-wise int4 weights on real models: file size, latency ratio, fidelity and accuracy, in one run.

Usage:
    python benchmarks/bench_int4_weights.py                         # digits and minilm (what is installed)
    python benchmarks/bench_int4_weights.py --models digits --runs 3000 --out benchmarks/results

Writes ``<out>/int4-weights-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run:

- Samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0); every variant fits its
  scales on the calibration half and is measured on the held-out half only.
- Variants are ``int4-weights`` pipelines through ``graphopt.optimize``: block 32/64/128, symmetric (int4) or
  asymmetric (uint4 + zero point), round to nearest vs the weight-MSE and data-aware clip search, the DQ form (opset
  21 ``DequantizeLinear``) vs ``MatMulNBits``/``GatherBlockQuantized`` at accuracy levels 0 (float) and 4 (int8);
  *unverified* ones (no bound) show what a setting does to every eligible layer, *verified* ones are held to the
  default budget (cosine ≥ 0.99, top-1 ≥ 0.99) and narrowed.
- Columns: layers quantised, then what ``harness.py`` measures for every benchmark (size, latency and fidelity
  ratios to the original, budget).

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

from typing import Any

from harness import Candidate, Column, graphopt_variant, run_benchmark
from workloads import Workload

from graphopt.data import Dataset
from graphopt_passes.int4_weights import Int4WeightsPass


def _variants(min_size: int) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, options, verified); options go to ``Int4WeightsPass.Options`` (the pass runs as an instance, so
    the benchmark works before the entry point is registered)."""
    return [
        ("b32 sym data nbits4", {"block": 32}, False),
        ("b32 sym data nbits0", {"block": 32, "accuracy_level": 0}, False),
        ("b32 sym data dq", {"block": 32, "form": "dq"}, False),
        ("b32 sym data dq, no embeddings", {"block": 32, "form": "dq", "embeddings": False}, False),
        ("b32 sym rtn", {"block": 32, "search": "none"}, False),
        ("b32 sym weight-mse", {"block": 32, "search": "weight"}, False),
        ("b32 asym data", {"block": 32, "symmetric": False}, False),
        ("b64 sym data", {"block": 64}, False),
        ("b128 sym data", {"block": 128}, False),
        ("b128 asym data", {"block": 128, "symmetric": False}, False),
        ("b32 sym data, verified", {"block": 32}, True),
        ("b32 asym data, verified", {"block": 32, "symmetric": False}, True),
    ]


VARIANTS: dict[str, list[tuple[str, dict[str, Any], bool]]] = {"digits": _variants(512), "minilm": _variants(4096)}
MIN_SIZE = {"digits": 512, "minilm": 4096}
DEFAULT_RUNS = {"digits": 3000, "minilm": 100}


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    return [graphopt_variant(w, label, [Int4WeightsPass(Int4WeightsPass.Options(min_size=MIN_SIZE[w.name], **options))],
                             verified=verified, record="int4-weights")
            for label, options, verified in VARIANTS[w.name]]


if __name__ == "__main__":
    run_benchmark("int4-weights", "int4 weights benchmark", __doc__, build, models=tuple(VARIANTS),
                  default_runs=DEFAULT_RUNS,
                  extra=[Column("layers", lambda row, _: str(row.stats.get("layers_quantized", 0)))])
