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
- Columns: params (initializer elements) and non-zeros, serialised size and zip-deflated size as ratios to the
  original, single-thread batch-1 median latency as a ratio to the original (``graphopt.perf.measure_latency``,
  all variants of a model interleaved in one call), mean and min per-sample cosine and top-1 agreement of the main
  output against the original, and task accuracy where there are labels.

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from workloads import ROOT, Workload, cell, feed, held_out_indices, load_workloads, machine, write_results

import graphopt
from graphopt.perf import measure_latency
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.summary import count_params
from graphopt.verify.metrics import error_stats
from graphopt.verify.tolerance import Tolerance

log = logging.getLogger("bench_pruning")

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


@dataclass
class Row:
    model: str
    variant: str
    pipeline: str
    verified: bool
    status: str = ""
    params: int = 0
    nonzero: int = 0
    size_ratio: float = math.nan
    zip_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    pruned_share: float | None = None
    seconds: float = 0.0
    passes: list[dict[str, Any]] = field(default_factory=list)


def _nonzero(model: onnx.ModelProto) -> int:
    return sum(int(np.count_nonzero(numpy_helper.to_array(t))) for t in model.graph.initializer)


def _zipped(model: onnx.ModelProto) -> int:
    return len(zlib.compress(model.SerializeToString(), 6))


def _status(result: graphopt.OptimizeResult) -> tuple[str, list[dict[str, Any]]]:
    records = [r for r in result.report.passes if r.name != "normalize"]
    summary = "; ".join(f"{r.name} {r.status}" for r in records)
    return summary, [{"name": r.name, "status": r.status, "stats": dict(r.stats), "notes": list(r.notes)}
                     for r in records]


def bench_model(w: Workload, runs: int) -> tuple[list[Row], dict[str, Any]]:
    _, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    reference = run_dataset(create_session(w.model, config), verification, config)[0]
    size, zipped = w.model.ByteSize(), _zipped(w.model)
    rows = [Row(w.name, "float", "", True, "original", count_params(w.model), _nonzero(w.model))]
    models = [w.model]
    for variant, pipeline, verified in VARIANTS[w.name]:
        log.warning("[%s] %s: %s …", w.name, variant, pipeline)
        start = time.perf_counter()
        result = graphopt.optimize(w.model, w.data, passes=pipeline, tolerance=None if verified else Tolerance())
        status, records = _status(result)
        pruned = [r["stats"] for r in records if r["name"] == "neuron-pruning" and r["stats"].get("channels_eligible")]
        share = pruned[0]["channels_removed"] / pruned[0]["channels_eligible"] if pruned else None
        rows.append(Row(w.name, variant, pipeline, verified, status, count_params(result.model),
                        _nonzero(result.model), pruned_share=share, seconds=time.perf_counter() - start,
                        passes=records))
        models.append(result.model)
    for row, model in zip(rows, models, strict=True):
        row.size_ratio, row.zip_ratio = model.ByteSize() / size, _zipped(model) / zipped
        got = run_dataset(create_session(model, config), verification, config)[0]
        stats = error_stats(reference[w.main_output], got[w.main_output])
        row.cosine, row.cosine_min, row.top1 = stats.cosine, stats.cosine_min, stats.top1
        if labels is not None:
            row.accuracy = float(np.mean(np.argmax(got[w.main_output], axis=-1) == labels))
    log.warning("[%s] latency: %d interleaved runs of %d models …", w.name, runs, len(models))
    latencies = measure(models, feed(verification), runs)
    for row, latency in zip(rows, latencies, strict=True):
        row.latency_ms, row.latency_ratio = latency, latency / latencies[0]
    info = {"title": w.title, "data": w.data_note, "samples": w.data.n_samples,
            "verification": verification.n_samples, "runs": runs}
    return rows, info


def measure(models: list[onnx.ModelProto], sample: dict[str, np.ndarray], runs: int) -> list[float]:
    return [latency.median_ms for latency in measure_latency(models, sample, runs=runs)]



def render(results: list[tuple[list[Row], dict[str, Any]]], info: dict[str, Any], command: str) -> str:
    lines = [f"# Pruning benchmark, {info['date']}", "",
             (f"`{command}` — {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
              "single-thread batch-1 latency as a ratio to the original in one run."), ""]
    for rows, meta in results:
        lines += [f"## {meta['title']}", "",
                  (f"{meta['data']}; measured on {meta['verification']} held-out samples; latency median of "
                   f"{meta['runs']} interleaved runs."), "",
                  ("| variant | verified | channels pruned | params | non-zero | size | zipped | latency | cosine "
                   "| min cosine | top-1 | accuracy |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            share = "–" if r.pruned_share is None else f"{r.pruned_share:.0%}"
            lines.append(f"| {r.variant} | {'yes' if r.verified else 'no'} | {share} | {r.params:,} | {r.nonzero:,} | "
                         f"{r.size_ratio:.3f} | {r.zip_ratio:.3f} | {r.latency_ratio:.3f}× | {cell(r.cosine, 5)} | "
                         f"{cell(r.cosine_min, 5)} | {cell(r.top1, 4)} | {cell(r.accuracy, 4)} |")
        lines.append("")
        for r in rows:
            for record in r.passes:
                for note in record["notes"]:
                    lines.append(f"- {r.variant} / {record['name']}: {note}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "python benchmarks/bench_pruning.py " + " ".join(sys.argv[1:])
    results = [bench_model(w, args.runs or DEFAULT_RUNS[w.name]) for w in load_workloads(args.models)]
    info = machine()
    text = render(results, info, command.strip())
    print(text)
    write_results(args.out, "pruning", text, {"machine": info, "command": command.strip(),
         "models": [{"info": meta, "rows": [asdict(r) for r in rows]} for rows, meta in results]})


if __name__ == "__main__":
    main()
