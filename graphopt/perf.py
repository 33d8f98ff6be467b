"""Latency measurement as the brief defines it: single thread, batch 1, median of many runs after warm-up.

Models are measured interleaved (one run of each per round, in a new seeded random order every round, so that no
model always runs first or after the same other one) so that drifts of the machine hit all of them alike; compare
them as ratios from one call, never across calls. ``time_interleaved`` is that loop for any runtime
(``graphopt.openvino`` times OpenVINO with it).

Also here, for ``validate``'s performance section and ``graphopt bench`` alike: session load time (``load_ms``) and
the peak memory of loading and running a model in a fresh process (``peak_memory_bytes``).
"""

from __future__ import annotations

import gc
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import onnx
import onnxruntime as ort

from graphopt._proto import model_size, save_model_file
from graphopt.runtime import GRAPH_OPTIMIZATION_LEVELS, RuntimeConfig, create_session

__all__ = ["LOADS", "LOAD_BUDGET_S", "MAX_LOADS", "Latency", "creation_order", "load_ms", "measure_latency",
           "peak_memory_bytes", "pooled_latencies", "time_interleaved"]


@dataclass(frozen=True)
class Latency:
    """Per-run wall time in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int
    p99_ms: float = math.nan


def measure_latency(
    models: Sequence[onnx.ModelProto],
    feed: Mapping[str, np.ndarray],
    *,
    runs: int = 300,
    warmup: int = 30,
    graph_optimization: str = "all",
    budget_s: float | None = None,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> list[Latency]:
    """Median, p90 and p99 latency of each model on the same ``feed`` (one sample), interleaved; single-threaded
    on onnxruntime's CPU provider unless ``threads`` and ``providers`` say otherwise.

    ``budget_s`` caps the timed runs so that they take about that long (at least 20 rounds), judged from warm-up.

    A session's speed depends on when it was made: sessions of one model made one after another and timed
    interleaved ran at different, stable speeds, so a model listed later could look faster. Up to
    ``BALANCED_BYTES`` of models, each model therefore runs in two sessions, made in list order and then in reverse
    (every model's mean creation rank the same), and its times are the two sessions' runs pooled. Four copies of
    silero-vad 16 kHz then measure 1.6% apart, where one session each made in a row spread by 4.1%
    (``benchmarks/bench_timing.py``).
    """
    config = RuntimeConfig(tuple(providers), intra_op_threads=threads, graph_optimization=graph_optimization)
    order = creation_order(models)
    sessions = [create_session(models[i], config) for i in order]
    feeds = dict(feed)

    def runner(session: ort.InferenceSession) -> Callable[[], object]:
        outputs = [o.name for o in session.get_outputs()]
        return lambda: session.run(outputs, feeds)

    times = time_interleaved([runner(s) for s in sessions], runs=runs, warmup=warmup, budget_s=budget_s, raw=True)
    return pooled_latencies(order, times, len(models))


BALANCED_BYTES = 512 * 2**20
"""Models up to this size in all are timed in two sessions each (``measure_latency``)."""


def creation_order(models: Sequence[onnx.ModelProto]) -> list[int]:
    """The order to load ``models`` in for timing, by index: each twice, in list order and then in reverse, up to
    ``BALANCED_BYTES`` in all (see ``measure_latency``); else once each."""
    balanced = len(models) > 1 and sum(model_size(m) for m in models) <= BALANCED_BYTES  # weights in place too
    return [*range(len(models)), *reversed(range(len(models)))] if balanced else list(range(len(models)))


def pooled_latencies(order: Sequence[int], times: Sequence[np.ndarray], count: int) -> list[Latency]:
    """Each of ``count`` models' latency from the runs of every session loaded for it (``order``: the model of each
    session, as ``creation_order`` gives it; ``times``: each session's times in seconds)."""
    return [_latency(np.concatenate([t for i, t in zip(order, times, strict=True) if i == k])) for k in range(count)]


def _latency(seconds: np.ndarray) -> Latency:
    p90, p99 = np.percentile(seconds, [90, 99]) * 1e3
    return Latency(float(np.median(seconds) * 1e3), float(p90), len(seconds), float(p99))


@overload
def time_interleaved(calls: Sequence[Callable[[], object]], *, runs: int, warmup: int,
                     budget_s: float | None = None, raw: Literal[False] = False) -> list[Latency]: ...
@overload
def time_interleaved(calls: Sequence[Callable[[], object]], *, runs: int, warmup: int,
                     budget_s: float | None = None, raw: Literal[True]) -> list[np.ndarray]: ...
def time_interleaved(calls: Sequence[Callable[[], object]], *, runs: int, warmup: int,
                     budget_s: float | None = None, raw: bool = False) -> list[Latency] | list[np.ndarray]:
    """Median and p90 wall time of each of ``calls`` (one inference each): ``warmup`` rounds, then ``runs`` rounds
    of one call of each, in a new random order every round (seeded); with ``raw``, each call's times in seconds.

    ``budget_s`` caps the timed rounds so that they take about that long (at least 20), judged from warm-up.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        for call in calls:
            call()
    if budget_s is not None and warmup:
        runs = min(runs, max(20, int(budget_s * warmup / max(time.perf_counter() - start, 1e-9))))
    times = np.zeros((len(calls), runs))
    orders = np.random.default_rng(0).permuted(np.tile(np.arange(len(calls)), (runs, 1)), axis=1)
    for r, order in enumerate(orders.tolist()):
        for i in order:  # a new order every round: no call always runs first, or always after the same other call
            start = time.perf_counter()
            calls[i]()
            times[i, r] = time.perf_counter() - start
    return list(times) if raw else [_latency(t) for t in times]


LOADS, MAX_LOADS, LOAD_BUDGET_S = 6, 60, 0.5
"""Session creations timed per model: at least ``LOADS``, and more, up to ``MAX_LOADS``, until the turns have taken
``LOAD_BUDGET_S`` seconds; always even, so that alternating turns put each model first equally often. Six loads of a
2 ms model last 12 ms, which one burst of another process's work can fill (in a full test run, two identical
models' medians once measured 7.7 and 1.5 ms); a half-second of turns outlasts such bursts."""
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

def load_ms(models: Sequence[onnx.ModelProto], runtime: RuntimeConfig, loads: int = LOADS,
            budget_s: float = LOAD_BUDGET_S) -> list[float]:
    """Median wall time of creating an onnxruntime session for each model, in milliseconds, after one untimed
    load each (onnxruntime's first session pays for its environment); at least ``loads`` each, more while the
    turns have taken less than ``budget_s`` (see ``LOADS``). The models take turns, in alternating order, so that
    neither a drift of the machine nor a cost that falls on the first load of a turn lands on one of them (in a
    full test run, of two identical models the one loaded first in every turn took 6.7 ms, the other 1.3).
    Python's garbage collector is off while they load (as ``timeit`` does): a full collection in a process holding
    many objects takes longer than loading a small model."""
    for model in models:
        create_session(model, runtime)
    times: list[list[float]] = [[] for _ in models]
    collecting = gc.isenabled()
    gc.disable()
    began = time.perf_counter()
    try:
        turn = 0
        while turn < loads or (turn < MAX_LOADS and (turn % 2 or time.perf_counter() - began < budget_s)):
            pairs = list(zip(models, times, strict=True))
            for model, spent in pairs if turn % 2 == 0 else reversed(pairs):
                start = time.perf_counter()
                create_session(model, runtime)
                spent.append((time.perf_counter() - start) * 1e3)
            turn += 1
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
