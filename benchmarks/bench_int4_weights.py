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
- Columns: layers quantised, serialised size as a ratio to the original, single-thread batch-1 median latency as a
  ratio to the original (``workloads.latency_ratios``:
  a small model's variants interleaved in one call, a large one's each against the original in its own pair), mean
  and min per-sample cosine and top-1 agreement of the main output against the original, task accuracy where
  there are labels.

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
from graphopt_passes.int4_weights import Int4WeightsPass

log = logging.getLogger("bench_int4_weights")


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


@dataclass
class Row:
    model: str
    variant: str
    pipeline: str
    verified: bool
    status: str = ""
    layers: int = 0
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0
    passes: list[dict[str, Any]] = field(default_factory=list)


def bench_model(w: Workload, runs: int) -> tuple[list[Row], dict[str, Any]]:
    _, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    config = RuntimeConfig()
    reference = run_dataset(create_session(w.model, config), verification, config)[0]
    rows, models = [Row(w.name, "float", "", True, "original")], [w.model]
    for variant, options, verified in VARIANTS[w.name]:
        pass_ = Int4WeightsPass(Int4WeightsPass.Options(min_size=MIN_SIZE[w.name], **options))
        pipeline = repr(pass_)
        log.warning("[%s] %s: %s …", w.name, variant, pipeline)
        start = time.perf_counter()
        result = graphopt.optimize(w.model, w.data, passes=[pass_], tolerance=None if verified else Tolerance())
        records = [r for r in result.report.passes if r.name != "normalize"]
        status = "; ".join(f"{r.name} {r.status}" for r in records)
        layers = sum(int(r.stats.get("layers_quantized", 0)) for r in records if r.status in ("applied", "narrowed"))
        rows.append(Row(w.name, variant, pipeline, verified, status, layers, seconds=time.perf_counter() - start,
                        passes=[{"name": r.name, "status": r.status, "reason": r.reason, "stats": dict(r.stats),
                                 "notes": list(r.notes)} for r in records]))
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
    info = {"title": w.title, "data": w.data_note, "samples": w.data.n_samples,
            "verification": verification.n_samples, "runs": runs}
    return rows, info



def render(results: list[tuple[list[Row], dict[str, Any]]], info: dict[str, Any], command: str) -> str:
    lines = [f"# int4 weights benchmark, {info['date']}", "",
             (f"`{command}` — {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
              "single-thread batch-1 latency as a ratio to the original in one run."), ""]
    for rows, meta in results:
        lines += [f"## {meta['title']}", "",
                  (f"{meta['data']}; measured on {meta['verification']} held-out samples; latency median of "
                   f"{meta['runs']} interleaved runs (in pairs with the original above 20 MB)."), "",
                  "| variant | verified | status | layers | size | latency | cosine | min cosine | top-1 | accuracy |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r.variant} | {'yes' if r.verified else 'no'} | {r.status} | {r.layers} | "
                         f"{r.size_ratio:.3f} | {r.latency_ratio:.3f}× | {cell(r.cosine, 5)} | "
                         f"{cell(r.cosine_min, 5)} | {cell(r.top1, 4)} | {cell(r.accuracy, 4)} |")
        lines.append("")
        for r in rows:
            for record in r.passes:
                if record["reason"]:
                    lines.append(f"- {r.variant} / {record['name']}: {record['reason']}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "python benchmarks/bench_int4_weights.py " + " ".join(sys.argv[1:])
    results = [bench_model(w, args.runs or DEFAULT_RUNS[w.name]) for w in load_workloads(args.models)]
    info = machine()
    text = render(results, info, command.strip())
    print(text)
    write_results(args.out, "int4-weights", text, {"machine": info, "command": command.strip(),
         "models": [{"info": meta, "rows": [asdict(r) for r in rows]} for rows, meta in results]})


if __name__ == "__main__":
    main()
