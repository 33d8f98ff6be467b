"""Benchmark the weight-pruning pass: magnitude vs Wanda scores, with and without the least-squares refit.

Usage:
    python benchmarks/bench_weight_pruning.py                         # digits and all-MiniLM-L6-v2
    python benchmarks/bench_weight_pruning.py --models digits --runs 3000 --out benchmarks/results

Writes ``<out>/weight-pruning-<YYYY-MM-DD>.md`` and ``.json``. Per model, in one run, on the split
``graphopt.optimize`` makes (``Dataset.split(0.5)``): every unverified variant runs the pass on every eligible layer
(``min_size`` 4096) with no bound, so rows differ only in score, refit and target (``TARGETS``); the *verified*
rows (Wanda, refit) keep the layers the default budget (cosine ≥ 0.99, top-1 ≥ 0.99) allows, and the ``levels`` row
gives every layer the highest of those sparsities the budget allows (the pass's ``levels`` option). Columns: layers
pruned, non-zero weights (initializers and Constant tensors, sparse ones densified) of all params and the
zip-deflated size as a ratio to the original, then what ``harness.py`` measures for every benchmark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from harness import Candidate, Column, Row, graphopt_variant, run_benchmark
from onnx import numpy_helper
from workloads import Workload

from graphopt.data import Dataset
from graphopt_passes._math.sparse_storage import coo_decode, deflated_size
from graphopt_passes.weight_pruning import WeightPruningPass

Options = WeightPruningPass.Options
DEFAULT_RUNS = {"digits": 3000, "minilm": 100}
TARGETS = ("0.3", "0.5", "0.6", "2:4")
VERIFIED = ("0.5", "2:4")
LEVELS = (0.2, 0.3, 0.4, 0.5)


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


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    runs = [(f"{target} {score}{', refit' if correct else ''}", options_for(target, score, correct), False)
            for target in TARGETS for score in ("magnitude", "wanda") for correct in (False, True)]
    runs += [(f"{target} wanda, refit", options_for(target, "wanda", True), True) for target in VERIFIED]
    runs.append((f"levels {';'.join(map(str, LEVELS))}", Options(levels=LEVELS), True))
    return [graphopt_variant(w, label, [WeightPruningPass(options)], verified=verified, record="weight-pruning")
            for label, options, verified in runs]


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    arrays = weights(model)
    return {"params": sum(a.size for a in arrays), "nonzero": sum(int(np.count_nonzero(a)) for a in arrays),
            "zipped": deflated_size(model.SerializeToString())}


def _nonzero(row: Row, _: Row) -> str:
    return f"{row.stats['nonzero']:,} / {row.stats['params']:,}"


if __name__ == "__main__":
    run_benchmark("weight-pruning", "Weight pruning benchmark", __doc__, build, models=("digits", "minilm"),
                  default_runs=DEFAULT_RUNS, describe=describe,
                  extra=[Column("layers", lambda row, _: str(row.stats.get("layers_pruned", "–"))),
                         Column("non-zero / params", _nonzero),
                         Column("zipped", lambda row, original: f"{row.stats['zipped'] / original.stats['zipped']:.3f}")])
