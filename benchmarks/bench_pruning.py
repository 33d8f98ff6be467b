"""Benchmark the pruning passes on real models: params, file size, latency ratio, fidelity and accuracy, in one run.

Usage:
    python benchmarks/bench_pruning.py                              # digits, cnn32, minilm (what is installed)
    python benchmarks/bench_pruning.py --models digits --runs 3000 --out benchmarks/results

Writes ``<out>/pruning-<YYYY-MM-DD>.md`` and ``.json`` and prints the table. Per model, in one run:

- Samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0); every variant fits on the
  calibration half and is measured on the held-out half only.
- Each variant is a pipeline run through ``graphopt.optimize``: *verified* ones under the default budget (cosine
  ≥ 0.99, top-1 ≥ 0.99, narrowed where a pass breaks it), *unverified* ones with no bound, which shows what a
  setting does by itself (for example neuron pruning with and without the least-squares refit, same channels).
  The CNNs' pruning runs after ``dead-neuron-removal``, so its ratio is a share of each layer's live channels;
  ``align=1`` prunes exactly that share, ``align 4`` (the default) rounds Conv channel counts up to a multiple of 4;
  *channels pruned* is the share of the eligible layers' channels neuron pruning removed.
- Columns: channels pruned, params (initializer elements), non-zeros and the zip-deflated size as a ratio to the
  original, then what ``harness.py`` measures for every benchmark (size, latency and fidelity ratios, budget).

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import onnx
from harness import Candidate, Column, Row, graphopt_variant, run_benchmark
from onnx import numpy_helper
from workloads import Workload

from graphopt.data import Dataset
from graphopt.summary import count_params

LIVE = "dead-neuron-removal{align=1}"
LIVE4 = "dead-neuron-removal{align=4}"
_CNN = [
    ("dead-neuron-removal", "dead-neuron-removal", True),
    ("neuron 30%, refit", f"{LIVE},neuron-pruning{{ratio=0.3,steps=1,align=1}}", False),
    ("neuron 30%, mean only", f"{LIVE},neuron-pruning{{ratio=0.3,steps=1,align=1,reconstruct=mean}}", False),
    ("neuron 30%, no refit", f"{LIVE},neuron-pruning{{ratio=0.3,steps=1,align=1,reconstruct=none}}", False),
    ("neuron 30%, magnitude, refit", f"{LIVE},neuron-pruning{{ratio=0.3,steps=1,align=1,score=magnitude}}", False),
    ("neuron 40% align 4, refit", f"{LIVE4},neuron-pruning{{ratio=0.4,steps=1}}", False),
    ("neuron 40% align 4, no refit", f"{LIVE4},neuron-pruning{{ratio=0.4,steps=1,reconstruct=none}}", False),
    ("neuron 50% align 4, refit", f"{LIVE4},neuron-pruning{{ratio=0.5,steps=1}}", False),
    ("neuron 50% align 4, no refit", f"{LIVE4},neuron-pruning{{ratio=0.5,steps=1,reconstruct=none}}", False),
    ("neuron ≤50% align 4, verified", f"{LIVE4},neuron-pruning{{ratio=0.5}}", True),
]
_MINILM = [
    ("neuron FFN 10%, refit", "neuron-pruning{ratio=0.1,steps=1}", False),
    ("neuron FFN 10%, no refit", "neuron-pruning{ratio=0.1,steps=1,reconstruct=none}", False),
    ("neuron FFN 30%, refit", "neuron-pruning{ratio=0.3,steps=1}", False),
    ("neuron FFN 30%, no refit", "neuron-pruning{ratio=0.3,steps=1,reconstruct=none}", False),
    ("neuron FFN ≤30%, verified", "neuron-pruning{ratio=0.3}", True),
]
VARIANTS: dict[str, list[tuple[str, str, bool]]] = {"digits": _CNN, "cnn32": _CNN, "minilm": _MINILM}
DEFAULT_RUNS = {"digits": 3000, "cnn32": 500, "minilm": 200}


def build(w: Workload, calibration: Dataset) -> list[Candidate]:
    found = []
    for label, pipeline, verified in VARIANTS[w.name]:
        record = "neuron-pruning" if "neuron-pruning" in pipeline else "dead-neuron-removal"
        found.append(graphopt_variant(w, label, pipeline, verified=verified, record=record))
    return found


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    return {"params": count_params(model),
            "nonzero": sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in model.graph.initializer),
            "zipped": len(zlib.compress(model.SerializeToString(), 6))}


def _pruned(row: Row, _: Row) -> str:
    eligible = row.stats.get("channels_eligible")
    return f"{row.stats['channels_removed'] / eligible:.0%}" if eligible else "–"


if __name__ == "__main__":
    run_benchmark("pruning", "Pruning benchmark", __doc__, build, models=tuple(VARIANTS), default_runs=DEFAULT_RUNS,
                  describe=describe,
                  extra=[Column("channels pruned", _pruned), Column("params", lambda r, _: f"{r.stats['params']:,}"),
                         Column("non-zero", lambda r, _: f"{r.stats['nonzero']:,}"),
                         Column("zipped", lambda r, original: f"{r.stats['zipped'] / original.stats['zipped']:.3f}")])
