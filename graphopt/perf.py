"""Latency measurement as the brief defines it: single thread, batch 1, median of many runs after warm-up.

Models are measured interleaved (one run of each per round, in a new seeded random order every round, so that no
model always runs first or after the same other one) so that drifts of the machine hit all of them alike; compare
them as ratios from one call, never across calls. ``time_interleaved`` is that loop for any runtime
(``graphopt.openvino`` times OpenVINO with it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.runtime import RuntimeConfig, create_session

__all__ = ["Latency", "creation_order", "measure_latency", "pooled_latencies", "time_interleaved"]


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

    A session's speed depends on when it was made: sessions of one model made one after another and timed
    interleaved ran at different, stable speeds, so a model listed later could look faster. Up to
    ``BALANCED_BYTES`` of models, each model therefore runs in two sessions, made in list order and then in reverse
    (every model's mean creation rank the same), and its times are the two sessions' runs pooled. Four copies of
    silero-vad 16 kHz then measure 1.6% apart, where one session each made in a row spread by 4.1%
    (``benchmarks/bench_timing.py``).
    """
    config = RuntimeConfig(intra_op_threads=1, graph_optimization=graph_optimization)
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
    balanced = len(models) > 1 and sum(m.ByteSize() for m in models) <= BALANCED_BYTES
    return [*range(len(models)), *reversed(range(len(models)))] if balanced else list(range(len(models)))


def pooled_latencies(order: Sequence[int], times: Sequence[np.ndarray], count: int) -> list[Latency]:
    """Each of ``count`` models' latency from the runs of every session loaded for it (``order``: the model of each
    session, as ``creation_order`` gives it; ``times``: each session's times in seconds)."""
    return [_latency(np.concatenate([t for i, t in zip(order, times, strict=True) if i == k])) for k in range(count)]


def _latency(seconds: np.ndarray) -> Latency:
    return Latency(float(np.median(seconds) * 1e3), float(np.percentile(seconds, 90) * 1e3), len(seconds))


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
