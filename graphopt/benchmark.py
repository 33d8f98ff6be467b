"""``graphopt bench``: models, and what pipelines make of them, measured side by side on this CPU.

Per runtime (onnxruntime's CPU provider; the other CPU providers this onnxruntime has; OpenVINO's CPU plugin when
``openvino`` is installed), every model is timed in one call per thread count and batch size, all models of the
call interleaved (``graphopt.perf``), so their ratios hold even when the machine drifts; compare ratios from one
report, not milliseconds across machines. Latency is per run at batch 1 (median, p90, p99) with one thread and with
more; throughput is samples per second at larger batches with the most threads. Session load time and the peak
memory of a fresh process that loads the model and runs one sample are onnxruntime's (CPU provider). The report
opens with the machine's facts, which decide int8 and bf16 speed: CPU, its features (VNNI, AVX-512, bf16; on Arm dot
product and i8mm), cores and the runtimes' versions.

With ``passes``, each model is first optimised with each pipeline (``graphopt.optimize``, verified against the
original as always) and the results join the table with their fidelity: what a user wants to see before choosing.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from graphopt import openvino, perf
from graphopt._proto import model_size
from graphopt.api import optimize
from graphopt.data import Dataset, data_files, input_specs, load_data
from graphopt.errors import GraphoptError, UsageError, first_line
from graphopt.machine import cpu_features, cpu_model
from graphopt.modelio import check_destinations, read_model, save_bytes
from graphopt.pipeline import build_pipeline
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.report.html import bench_page
from graphopt.report.model import BenchReport, BenchRow, PassRecord, Timing
from graphopt.report.render import bench_json
from graphopt.runtime import ORT_ERRORS, RuntimeConfig
from graphopt.verify.output_kinds import OutputKind
from graphopt.verify.tolerance import Tolerance

__all__ = ["BenchResult", "available_runtimes", "bench", "machine_facts"]

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
CPU_PROVIDERS = ("XnnpackExecutionProvider", "DnnlExecutionProvider", "OpenVINOExecutionProvider",
                 "ACLExecutionProvider", "ArmNNExecutionProvider", "QNNExecutionProvider", "CoreMLExecutionProvider")
"""onnxruntime's execution providers that run on this machine's CPU (or its NPU), benchmarked when installed; the
others it may list (CUDA, Azure) are not this CPU."""

_T = TypeVar("_T")
_FAILURES: tuple[type[BaseException], ...] = (GraphoptError, RuntimeError, OSError, *ORT_ERRORS)


@dataclass(frozen=True)
class BenchResult:
    """The bench report and where it was written (``None`` when not asked for)."""

    report: BenchReport
    report_path: Path | None = None
    html_path: Path | None = None


def available_runtimes() -> list[str]:
    """The runtimes ``bench`` can time here: ``onnxruntime`` (its CPU provider), ``onnxruntime:<provider>`` for each
    other CPU provider installed, and ``openvino`` when it imports."""
    extra = [f"{ONNXRUNTIME}:{p}" for p in ort.get_available_providers() if p in CPU_PROVIDERS]
    return [ONNXRUNTIME, *extra, *([OPENVINO] if openvino.unavailable() is None else [])]


def machine_facts() -> dict[str, object]:
    """What decides the figures: the CPU and its int8/bf16/fp16 features, cores, OS and the runtimes' versions."""
    facts: dict[str, object] = {
        "cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "features": cpu_features(),
        "os": platform.platform(terse=True), "python": platform.python_version(), "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(), "onnx": onnx.__version__, "numpy": np.__version__,
        "graphopt": graphopt.__version__,
    }
    facts["openvino"] = openvino.version() if openvino.unavailable() is None else None
    return facts


@dataclass(frozen=True)
class _Entry:
    """A model to time: its row template and the model itself (``None`` when its pipeline failed)."""

    row: BenchRow
    model: onnx.ModelProto | None


def bench(
    models: Sequence[str | Path | onnx.ModelProto],
    data: str | Path | Dataset = "random",
    *,
    passes: str | Sequence[str] | None = None,
    threads: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    runtimes: Sequence[str] | None = None,
    runs: int = 300,
    budget_s: float = 10.0,
    memory: bool = True,
    labels: str | Path | None = None,
    tolerance: Tolerance | None = None,
    output_kinds: Mapping[str, OutputKind | str] | None = None,
    report: str | Path | None = None,
    html: str | Path | None = None,
    progress: Progress = NULL_PROGRESS,
) -> BenchResult:
    """Benchmark ``models`` (paths or loaded models, never modified) on ``data``, and with ``passes`` what each
    pipeline makes of them, in every runtime of ``runtimes`` (default: all of ``available_runtimes``).

    Args:
        data: samples the models read (``.npz`` file or folder, a ``Dataset``, or ``random`` when no pipeline is
            lossy); the first sample is the batch-1 feed, the first ``b`` samples the batch of ``b``.
        passes: pipelines separated by ``;`` (or a list of them): each model is optimised with each, verified.
        threads: intra-op thread counts for batch-1 latency (default: 1 and all cores).
        batch_sizes: batches for throughput, timed with the most threads (1 is the latency run itself).
        runs, budget_s: timed runs per call, and about how long a call may take (at least 20 runs).
        memory: measure each model's peak memory in a fresh process (onnxruntime, CPU provider).
        labels, tolerance, output_kinds: passed to ``optimize`` for the pipelines.
        report, html: where to write the JSON report (``graphopt.bench/1``) and an HTML page with bar plots.
    """
    threads = sorted(set(threads or (1, os.cpu_count() or 1)))
    batches = sorted(set(batch_sizes) | {1})
    pipelines = [p.strip() for p in (passes.split(";") if isinstance(passes, str) else passes or ()) if p.strip()]
    chosen = _runtimes(runtimes)
    if not models:
        raise UsageError("bench needs at least one model")
    if min(threads) < 1 or min(batches) < 1 or runs < 1 or budget_s <= 0:
        raise UsageError("threads, batch sizes and runs must be at least 1, and the budget positive")
    for pipeline in pipelines:
        build_pipeline(pipeline)  # an unknown pass or option fails here, before any work
    read = [m if isinstance(m, onnx.ModelProto) else read_model(m) for m in models]
    loaded = [(r, None) if isinstance(r, onnx.ModelProto) else (r.model, r.files[0]) for r in read]
    inputs = [("a model", f) for r in read if not isinstance(r, onnx.ModelProto) for f in r.files]  # external data too
    if not isinstance(data, Dataset):
        inputs += [("a data file", f) for f in data_files(data, labels)]
    outputs = [(label, Path(p)) for label, p in (("the report", report), ("the HTML page", html)) if p is not None]
    check_destinations(outputs, inputs)
    specs = input_specs(loaded[0][0])
    for model, path in loaded[1:]:
        if input_specs(model) != specs:
            raise UsageError(f"bench times models on one set of samples: {path or 'a model'} takes other inputs "
                             "than the first model")
    dataset = data if isinstance(data, Dataset) else load_data(data, specs, labels)
    names = _names([p for _, p in loaded])
    entries: list[_Entry] = []
    for (model, _), name in zip(loaded, names, strict=True):
        entries.append(_Entry(BenchRow(name, "original", "", model_size(model), "reference"), model))
        for pipeline in pipelines:
            entries.append(_variant(name, model, dataset, pipeline, tolerance, output_kinds, progress))
    feeds, notes = _feeds(dataset, batches)
    record = BenchReport(graphopt.__version__, machine_facts(),
                         {"threads": threads, "batch_sizes": sorted(feeds), "runs": runs, "budget_s": budget_s,
                          "runtimes": chosen, "data": dataset.source, "samples": dataset.n_samples,
                          "passes": pipelines}, notes=notes)
    for runtime in chosen:
        record.rows += _measure(runtime, entries, feeds, threads, runs, budget_s, memory and runtime == ONNXRUNTIME,
                                progress)
    protect = [p for _, p in inputs]  # the outputs were checked distinct from each other above
    report_path = save_bytes(bench_json(record).encode(), report, protect=protect) if report else None
    html_path = save_bytes(bench_page(record).encode(), html, protect=protect) if html else None
    return BenchResult(record, report_path, html_path)


def _runtimes(asked: Sequence[str] | None) -> list[str]:
    available = available_runtimes()
    if asked is None:
        return available
    for name in asked:
        if name == OPENVINO and name not in available:
            raise UsageError(f"runtime openvino: {openvino.unavailable()}")
        if name not in available:
            raise UsageError(f"unknown runtime {name!r}; available here: {', '.join(available)}")
    return list(dict.fromkeys(asked))


def _names(paths: Sequence[Path | None]) -> list[str]:
    """A short name per model: its file's stem (``model2`` for a loaded one), made unique with ``#2``."""
    names: list[str] = []
    for i, path in enumerate(paths):
        base = path.stem if path is not None else f"model{i + 1}"
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def _variant(name: str, model: onnx.ModelProto, data: Dataset, pipeline: str, tolerance: Tolerance | None,
             output_kinds: Mapping[str, OutputKind | str] | None, progress: Progress) -> _Entry:
    """``model`` optimised with ``pipeline`` (verified as ``optimize`` verifies), or the reason it could not be."""
    try:
        result = optimize(model, data, passes=pipeline, tolerance=tolerance, output_kinds=output_kinds,
                          progress=progress)
    except GraphoptError as e:
        return _Entry(BenchRow(name, pipeline, "", status="failed", error=first_line(e)), None)
    passes = [p for p in result.report.passes if p.name not in ("normalize", "drop-inferred-shapes")]
    kept = [p for p in passes if p.status in ("applied", "narrowed")]
    worst = next((p.worst for p in reversed(kept) if p.worst), None)
    row = BenchRow(name, pipeline, "", model_size(result.model), _status(passes, kept),
                   cosine=worst.get("cosine") if worst else 1.0, top1=worst.get("top1") if worst else None)
    return _Entry(row, result.model)


def _status(passes: Sequence[PassRecord], kept: Sequence[PassRecord]) -> str:
    """What the pipeline did, in a few words: the passes it kept, or why none was."""
    if kept:
        return "kept " + ", ".join(p.name if p.status == "applied" else f"{p.name} (narrowed)" for p in kept)
    reasons = [f"{p.name} {p.status}: {p.reason}" for p in passes if p.reason]
    return "unchanged" + (f" ({reasons[-1]})" if reasons else "")


def _feeds(data: Dataset, batches: Sequence[int]) -> tuple[dict[int, dict[str, np.ndarray]], list[str]]:
    """The first ``b`` samples as one feed per batch size, and why a size was left out."""
    feeds, notes = {}, []
    for batch in batches:
        if batch > 1 and not data.batchable:
            notes.append(f"batch {batch} not timed: the samples do not stack into batches")
        elif batch > data.n_samples:
            notes.append(f"batch {batch} not timed: the data holds {data.n_samples} samples")
        else:
            feeds[batch] = next(data.batches(batch))[0]
    return feeds, notes


def _measure(runtime: str, entries: Sequence[_Entry], feeds: Mapping[int, Mapping[str, np.ndarray]],
             threads: Sequence[int], runs: int, budget_s: float, memory: bool, progress: Progress) -> list[BenchRow]:
    """Every entry's figures in ``runtime``: one interleaved call per thread count at batch 1, and one per larger
    batch at the most threads; load time and peak memory for onnxruntime."""
    rows = [replace(e.row, runtime=runtime, timings=[]) for e in entries]
    live = [(row, e.model) for row, e in zip(rows, entries, strict=True) if e.model is not None]
    calls = [(t, 1) for t in threads] + [(max(threads), b) for b in feeds if b > 1]
    with progress.task(f"bench: timing in {runtime}", len(calls) + memory) as advance:
        for count, batch in calls:
            for (row, _), timing in zip(live, _timings(runtime, [m for _, m in live], feeds[batch], count, batch,
                                                       runs, budget_s), strict=True):
                row.timings.append(timing[0])
                row.error = row.error or timing[1]
            advance(1)
        if runtime == ONNXRUNTIME:
            for (row, _), load in zip(live, _each([m for _, m in live], lambda ms: perf.load_ms(
                    ms, RuntimeConfig(intra_op_threads=1))), strict=True):
                row.load_ms = load[0]
        if memory:
            for row, model in live:
                try:
                    row.peak_memory_bytes = perf.peak_memory_bytes(model, feeds[1])
                except _FAILURES as e:
                    row.error = row.error or f"peak memory: {first_line(e)}"
            advance(1)
    return rows


def _timings(runtime: str, models: Sequence[onnx.ModelProto], feed: Mapping[str, np.ndarray], threads: int,
             batch: int, runs: int, budget_s: float) -> list[tuple[Timing, str]]:
    """Each model's timing in one interleaved call; a model that cannot run there gets no figure and its reason,
    and the others are timed without it."""
    def measure(group: Sequence[onnx.ModelProto]) -> list[perf.Latency]:
        if runtime == OPENVINO:
            return openvino.measure_latency(group, feed, runs=runs, budget_s=budget_s, threads=threads)
        providers = (runtime.partition(":")[2], "CPUExecutionProvider") if ":" in runtime else ("CPUExecutionProvider",)
        return perf.measure_latency(group, feed, runs=runs, budget_s=budget_s, threads=threads, providers=providers)

    return [(Timing(threads, batch, None), error) if latency is None else
            (Timing(threads, batch, latency.median_ms, latency.p90_ms, latency.p99_ms, latency.runs), "")
            for latency, error in _each(models, measure)]


def _each(models: Sequence[onnx.ModelProto], measure: Callable[[Sequence[onnx.ModelProto]], Sequence[_T]]
             ) -> list[tuple[_T | None, str]]:
    """``measure`` of all models in one call; when that fails, of each alone, so that one model that cannot run
    costs only its own figure (with its reason)."""
    if not models:
        return []
    try:
        return [(figure, "") for figure in measure(models)]
    except _FAILURES:
        pass
    found: list[tuple[_T | None, str]] = []
    for model in models:
        try:
            found.append((measure([model])[0], ""))
        except _FAILURES as e:
            reason = openvino.openvino_reason(e) if "openvino" in type(e).__module__ else first_line(e)
            found.append((None, reason))
    return found
