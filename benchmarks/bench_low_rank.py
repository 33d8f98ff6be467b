"""Benchmark the low-rank pass: data-aware vs plain SVD at the same rank budget, unverified and verified.

Usage:
    python benchmarks/bench_low_rank.py                           # all-MiniLM-L6-v2 (needs the test extra)
    python benchmarks/bench_low_rank.py --models digits,minilm --runs 300 --out benchmarks/results

Writes ``<out>/low-rank-<YYYY-MM-DD>.md`` and ``.json``. For each rank budget (``ratio``: the share of each layer's
params kept), the pass runs twice on every eligible layer without verification, once per method, so the two rows
differ only in how the factors are fitted; then the data-aware pass runs verified, narrowed to the layers the
budget (cosine ≥ 0.99, top-1 ≥ 0.99) allows, and once more with per-layer ``levels``. *removed* is the share of the
params of the layers the pass could split (constant MatMul/Gemm/Conv weights; for MiniLM the encoder's 36 weight
MatMuls). The other columns are what ``harness.py`` measures for every benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from harness import Candidate, Column, Row, graphopt_variant, run_benchmark
from workloads import Workload

from graphopt.data import Dataset
from graphopt_passes.low_rank import LowRankPass

RATIOS = (0.9, 0.8, 0.6)
LEVELS = (0.9, 0.8, 0.7, 0.6, 0.5)
DEFAULT_RUNS = {"digits": 3000, "minilm": 200}


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    runs = []
    for ratio in RATIOS:
        runs += [(f"ratio {ratio:g} {method}", LowRankPass.Options(ratio=ratio, method=method), False)
                 for method in ("data-aware", "svd")]
        runs.append((f"ratio {ratio:g} data-aware, verified", LowRankPass.Options(ratio=ratio), True))
    runs.append((f"levels {';'.join(map(str, LEVELS))}, verified", LowRankPass.Options(levels=LEVELS), True))
    return [graphopt_variant(w, label, [LowRankPass(options)], verified=verified, record="low-rank")  # type: ignore[arg-type]
            for label, options, verified in runs]


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """Params of constant weights feeding MatMul/Gemm/Conv: what the pass can split."""
    weights = {t.name: t for t in model.graph.initializer}
    total = sum(int(np.prod(weights[name].dims)) for node in model.graph.node
                if node.op_type in ("MatMul", "Gemm", "Conv") for name in node.input[:2] if name in weights)
    return {"splittable_params": total}


def _removed(row: Row, original: Row) -> str:
    before = original.stats["splittable_params"]
    return f"{(before - row.stats['splittable_params']) / before:.1%}"


if __name__ == "__main__":
    run_benchmark("low-rank", "Low-rank benchmark", __doc__, build, models=("minilm",), default_runs=DEFAULT_RUNS,
                  describe=describe,
                  extra=[Column("layers split", lambda row, _: str(row.stats.get("layers_split", "–"))),
                         Column("removed", _removed)])
