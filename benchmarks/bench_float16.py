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
- Columns: serialised size as a ratio to the original, single-thread batch-1 median latency as a ratio to the
  original (``workloads.latency_ratios``:
  a small model's variants interleaved in one call, a large one's each against the original in its own pair), mean and min
  per-sample cosine and top-1 agreement of the main output against the original, task accuracy where there are
  labels, and the pass's fp16/fp32 node and Cast counts.

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
from graphopt_passes.float16 import Float16Pass

log = logging.getLogger("bench_float16")

VARIANTS: list[tuple[str, dict[str, str], bool]] = [
    ("compute, CPU kernels", {"mode": "compute", "kernels": "runtime"}, True),
    ("compute, CPU kernels", {"mode": "compute", "kernels": "runtime"}, False),
    ("compute, all ops", {"mode": "compute", "kernels": "any"}, True),
    ("compute, all ops", {"mode": "compute", "kernels": "any"}, False),
    ("weights", {"mode": "weights"}, True),
    ("weights", {"mode": "weights"}, False),
]
DEFAULT_RUNS = {"digits": 3000, "minilm": 200}


@dataclass
class Row:
    model: str
    variant: str
    options: dict[str, str]
    verified: bool
    status: str = ""
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def bench_model(w: Workload, runs: int) -> tuple[list[Row], dict[str, Any]]:
    _, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    reference = run_dataset(create_session(w.model, config), verification, config)[0]
    rows, models = [Row(w.name, "float32", {}, True, "original")], [w.model]
    for variant, options, verified in VARIANTS:
        log.warning("[%s] %s (%s) …", w.name, variant, "verified" if verified else "unverified")
        start = time.perf_counter()
        pass_ = Float16Pass(Float16Pass.Options(**options))  # type: ignore[arg-type]
        result = graphopt.optimize(w.model, w.data, passes=[pass_], tolerance=None if verified else Tolerance())
        record = result.report.record("float16")
        status = record.status + (f" ({record.reason})" if record.reason and record.status != "applied" else "")
        rows.append(Row(w.name, variant, options, verified, status, stats=dict(record.stats),
                        seconds=time.perf_counter() - start, notes=list(record.notes)))
        models.append(result.model)
    size = w.model.ByteSize()
    for row, model in zip(rows, models, strict=True):
        row.size_ratio = model.ByteSize() / size
        got = run_dataset(create_session(model, config), verification, config)[0]
        stats = error_stats(reference[w.main_output], got[w.main_output])
        row.cosine, row.cosine_min, row.top1 = stats.cosine, stats.cosine_min, stats.top1
        if labels is not None:
            row.accuracy = float(np.mean(np.argmax(got[w.main_output], axis=-1) == labels))
    log.warning("[%s] latency: %d interleaved runs of %d models …", w.name, runs, len(models))
    for row, (latency, ratio) in zip(rows, latency_ratios(models, feed(verification), runs), strict=True):
        row.latency_ms, row.latency_ratio = latency, ratio
    info = {"title": w.title, "data": w.data_note, "samples": w.data.n_samples,
            "verification": verification.n_samples, "runs": runs}
    return rows, info



def render(results: list[tuple[list[Row], dict[str, Any]]], info: dict[str, Any], command: str) -> str:
    lines = [f"# float16 benchmark, {info['date']}", "",
             (f"`{command}` — {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
              "single-thread batch-1 latency as a ratio to the original in one run."), ""]
    for rows, meta in results:
        lines += [f"## {meta['title']}", "",
                  (f"{meta['data']}; measured on {meta['verification']} held-out samples; latency median of "
                   f"{meta['runs']} interleaved runs (in pairs with the original above 20 MB)."), "",
                  ("| variant | verified | status | fp16 nodes | fp32 nodes | Casts | size | latency | cosine "
                   "| min cosine | top-1 | accuracy |"), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            s = r.stats
            lines.append(f"| {r.variant} | {'yes' if r.verified else 'no'} | {r.status} | {s.get('nodes_fp16', '–')} "
                         f"| {s.get('nodes_fp32', '–')} | {s.get('casts_inserted', '–')} | {r.size_ratio:.3f} | "
                         f"{r.latency_ratio:.3f}× | {cell(r.cosine, 6)} | {cell(r.cosine_min, 6)} | "
                         f"{cell(r.top1, 4)} | {cell(r.accuracy, 4)} |")
        lines.append("")
        lines += [f"- {r.variant}: {note}" for r in rows if r.verified for note in r.notes]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="digits,minilm", help="comma-separated: digits, minilm")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = ("python benchmarks/bench_float16.py " + " ".join(sys.argv[1:])).strip()
    results = [bench_model(w, args.runs or DEFAULT_RUNS.get(w.name, 300)) for w in load_workloads(args.models)]
    info = machine()
    text = render(results, info, command)
    print(text)
    write_results(args.out, "float16", text, {"machine": info, "command": command,
         "models": [{"info": meta, "rows": [asdict(r) for r in rows]} for rows, meta in results]})


if __name__ == "__main__":
    main()
