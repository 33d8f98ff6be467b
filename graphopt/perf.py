"""Latency measurement as the brief defines it: single thread, batch 1, median of many runs after warm-up.

Models are measured interleaved (one run of each in turn, the order rotating every round so each model takes every
position equally often) so that drifts of the machine hit all of them alike; compare them as ratios from one call,
never across calls. ``time_interleaved`` is that loop for any runtime (``graphopt.openvino`` times OpenVINO with it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.runtime import RuntimeConfig, create_session

__all__ = ["Latency", "measure_latency", "time_interleaved"]


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
    feeds = dict(feed)

    def runner(session: ort.InferenceSession) -> Callable[[], object]:
        outputs = [o.name for o in session.get_outputs()]
        return lambda: session.run(outputs, feeds)

    return time_interleaved([runner(s) for s in sessions], runs=runs, warmup=warmup, budget_s=budget_s)


def time_interleaved(calls: Sequence[Callable[[], object]], *, runs: int, warmup: int,
                     budget_s: float | None = None) -> list[Latency]:
    """Median and p90 wall time of each of ``calls`` (one inference each): ``warmup`` rounds, then ``runs`` rounds
    of one call of each, the order rotating every round.

    ``budget_s`` caps the timed rounds so that they take about that long (at least 20), judged from warm-up.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        for call in calls:
            call()
    if budget_s is not None and warmup:
        runs = min(runs, max(20, int(budget_s * warmup / max(time.perf_counter() - start, 1e-9))))
    times = np.zeros((len(calls), runs))
    for r in range(runs):
        for step in range(len(calls)):
            i = (r + step) % len(calls)  # rotate: no model always runs first, after the others warmed the cache
            start = time.perf_counter()
            calls[i]()
            times[i, r] = time.perf_counter() - start
    return [Latency(float(np.median(t) * 1e3), float(np.percentile(t, 90) * 1e3), runs) for t in times]
