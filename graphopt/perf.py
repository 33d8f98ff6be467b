"""Latency measurement as the brief defines it: single thread, batch 1, median of many runs after warm-up.

Models are measured interleaved (one run of each in turn, the order rotating every round so each model takes every
position equally often) so that drifts of the machine hit all of them alike; compare them as ratios from one call,
never across calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from graphopt.runtime import RuntimeConfig, create_session

__all__ = ["Latency", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """Per-run wall time in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int


def measure_latency(
    models: Sequence[onnx.ModelProto],
    feed: Mapping[str, np.ndarray],
    *,
    runs: int = 300,
    warmup: int = 30,
    graph_optimization: str = "all",
    budget_s: float | None = None,
) -> list[Latency]:
    """Median and p90 latency of each model on the same ``feed`` (one sample), single-threaded, interleaved.

    ``budget_s`` caps the timed runs so that they take about that long (at least 20 rounds), judged from warm-up.
    """
    config = RuntimeConfig(intra_op_threads=1, graph_optimization=graph_optimization)
    sessions = [create_session(m, config) for m in models]
    names = [[o.name for o in s.get_outputs()] for s in sessions]
    feeds = dict(feed)
    start = time.perf_counter()
    for _ in range(warmup):
        for session, outputs in zip(sessions, names, strict=True):
            session.run(outputs, feeds)
    if budget_s is not None and warmup:
        runs = min(runs, max(20, int(budget_s * warmup / max(time.perf_counter() - start, 1e-9))))
    times = np.zeros((len(sessions), runs))
    for r in range(runs):
        for step in range(len(sessions)):
            i = (r + step) % len(sessions)  # rotate: no model always runs first, after the others warmed the cache
            start = time.perf_counter()
            sessions[i].run(names[i], feeds)
            times[i, r] = time.perf_counter() - start
    return [Latency(float(np.median(t) * 1e3), float(np.percentile(t, 90) * 1e3), runs) for t in times]
