"""Performance: what the optimisation bought, measured the same way for both models. Informational only: a
slower or larger model is a trade-off for the user to judge, not a failure.

Latency is single-thread, batch 1, the two models interleaved (``graphopt.perf``); compare the ratio, not the
milliseconds, which depend on the machine. Peak memory is measured in a fresh process per model, so that neither
model's allocations (nor this process's) inflate the other's.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt._proto import model_size, save_model_file
from graphopt.errors import GraphoptError, first_line
from graphopt.machine import cpu_model
from graphopt.perf import measure_latency
from graphopt.runtime import GRAPH_OPTIMIZATION_LEVELS, ORT_ERRORS, RuntimeConfig, create_session
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section

__all__ = ["check_performance", "load_ms", "peak_memory_bytes"]

_FAILURES: tuple[type[Exception], ...] = (GraphoptError, *ORT_ERRORS)

_LOADS = 6
"""Session creations timed per model: even, so that alternating turns put each model first equally often."""
_MEMORY_TIMEOUT_S = 300

# Runs in a fresh interpreter: peak RSS after load + one run, minus the RSS after the imports and the feed. Linux's
# VmHWM is used rather than ru_maxrss, which a child inherits from its parent across fork and exec (a big parent
# would hide a small model's growth); ru_maxrss is the fallback where /proc is missing.
_PEAK_SCRIPT = """
import resource, sys
import numpy as np
import onnxruntime as ort

def rss(field):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

with np.load(sys.argv[2], allow_pickle=False) as archive:
    feed = {name: archive[name] for name in archive.files}
options = ort.SessionOptions()
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, sys.argv[3])
options.intra_op_num_threads = 1
options.log_severity_level = 3
before = rss("VmRSS")
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, feed)
print(rss("VmHWM") - before)
"""

Figures = tuple[float | None, float | None]


def load_ms(models: Sequence[onnx.ModelProto], runtime: RuntimeConfig, loads: int = _LOADS) -> list[float]:
    """Median wall time of creating an onnxruntime session for each model, in milliseconds, after one untimed
    load each (onnxruntime's first session pays for its environment); the models take turns, in alternating
    order, so that neither a drift of the machine nor a cost that falls on the first load of a turn lands on one of
    them (in a full test run, of two identical models the one loaded first in every turn took 6.7 ms, the other
    1.3). Python's garbage collector is off while they load (as ``timeit`` does): a full collection in a process
    holding many objects takes longer than loading a small model."""
    for model in models:
        create_session(model, runtime)
    times: list[list[float]] = [[] for _ in models]
    collecting = gc.isenabled()
    gc.disable()
    try:
        for turn in range(loads):
            pairs = list(zip(models, times, strict=True))
            for model, spent in pairs if turn % 2 == 0 else reversed(pairs):
                start = time.perf_counter()
                create_session(model, runtime)
                spent.append((time.perf_counter() - start) * 1e3)
    finally:
        if collecting:
            gc.enable()
    return [statistics.median(t) for t in times]


def peak_memory_bytes(model: onnx.ModelProto, feed: Mapping[str, Any], graph_optimization: str = "all") -> int:
    """How far the peak resident memory of a fresh Python process rises above its resident memory after importing
    onnxruntime, to load ``model`` and run ``feed`` once (one thread).

    Raises:
        RuntimeError: the measuring process failed (its last line of stderr says why) or printed no number.
    """
    with tempfile.TemporaryDirectory(prefix="graphopt-memory-") as folder:
        path = Path(folder) / "model.onnx"
        save_model_file(model, path)
        arrays: dict[str, Any] = {name: np.asarray(value) for name, value in feed.items()}
        np.savez(Path(folder) / "feed.npz", **arrays)
        level = GRAPH_OPTIMIZATION_LEVELS[graph_optimization].name
        try:
            done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path), str(Path(folder) / "feed.npz"), level],
                                  capture_output=True, text=True, timeout=_MEMORY_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"measuring peak memory took over {_MEMORY_TIMEOUT_S} s") from e
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].lstrip("-").isdigit():
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise RuntimeError(f"the measuring process failed: {reason[:300]}")
    return int(lines[-1])


def _ratio(original: float | None, optimized: float | None) -> float | None:
    return optimized / original if original and optimized is not None else None


def _informational(name: str, figures: Figures, detail: str = "") -> Check:
    original, optimized = figures
    return Check(name, None, {"original": original, "optimized": optimized, "ratio": _ratio(original, optimized)},
                 detail)


def _each(ctx: ValidationContext, measure: str, what: Callable[[onnx.ModelProto], float]) -> tuple[Figures, str]:
    """``what(model)`` for the original then the optimised model; a failure gives ``None`` and its reason."""
    figures: list[float | None] = []
    reasons: list[str] = []
    for which, model in (("original", ctx.original), ("optimized", ctx.optimized)):
        try:
            figures.append(float(what(model)))
        except (GraphoptError, RuntimeError, OSError) as e:
            figures.append(None)
            reasons.append(f"{which}: {measure} failed: {first_line(e)}")
    return (figures[0], figures[1]), "; ".join(reasons)


def check_performance(ctx: ValidationContext, runs: int = 200, budget_s: float = 10.0) -> Section:
    """File size, session load time, latency (median and p90) and peak memory of both models, with their ratio."""
    section = Section("performance", "Performance")
    feed, _ = next(ctx.held_out.batches(1))
    level = ctx.runtime.graph_optimization
    section.checks.append(_informational("size_bytes", (float(model_size(ctx.original)), float(model_size(ctx.optimized))),
                                         "serialised ModelProto, external data included"))
    try:
        before, after = load_ms([ctx.original, ctx.optimized], ctx.runtime)
        loads: Figures = (before, after)
        detail = f"median of {_LOADS} session creations, the models taking turns in alternating order"
    except _FAILURES as e:
        loads, detail = (None, None), f"not measured: {first_line(e)}"
    section.checks.append(_informational("load_ms", loads, detail))
    try:
        first, second = measure_latency([ctx.original, ctx.optimized], feed, runs=runs, budget_s=budget_s,
                                        graph_optimization=level)
        medians: Figures = (first.median_ms, second.median_ms)
        p90s: Figures = (first.p90_ms, second.p90_ms)
        detail = f"{first.runs} interleaved runs"
    except _FAILURES as e:
        medians = p90s = (None, None)
        detail = f"latency not measured: {first_line(e)}"
    section.checks.append(_informational("latency_median_ms", medians, detail))
    section.checks.append(_informational("latency_p90_ms", p90s, detail))
    memory, detail = _each(ctx, "peak memory", lambda m: peak_memory_bytes(m, feed, level))
    section.checks.append(_informational("peak_memory_bytes", memory, detail or "growth of peak RSS to load the "
                                         "model and run one sample, in a fresh process (1 thread)"))
    section.notes.append(f"CPU: {cpu_model()}")
    section.notes.append(f"latency: single thread, batch 1 (the first held-out sample), the two models interleaved, "
                         f"graph optimisation '{level}'; compare the ratio (optimised / original), not the times")
    return section
