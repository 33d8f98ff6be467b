"""How latency is timed (``graphopt.perf``): interleaved in a new random order every round, each model in two sessions
made in opposite orders, so that neither a model's place in the list nor when its session was made favours it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import digits

from graphopt import perf
from graphopt.runtime import create_session


def test_every_round_runs_each_call_once_in_a_new_order() -> None:
    log: list[int] = []
    calls = [(lambda i=i: log.append(i)) for i in range(4)]
    times = perf.time_interleaved(calls, runs=50, warmup=0, raw=True)
    assert [len(t) for t in times] == [50] * 4 and all((t >= 0).all() for t in times)
    rounds = [tuple(log[r * 4:(r + 1) * 4]) for r in range(50)]
    assert all(sorted(r) == [0, 1, 2, 3] for r in rounds)
    firsts = {r[0] for r in rounds}
    assert firsts == {0, 1, 2, 3}, "every call runs first in some round"
    assert len(set(rounds)) > 10, "orders are not a rotation of one cycle"
    latencies = perf.time_interleaved(calls, runs=20, warmup=1)
    assert [lat.runs for lat in latencies] == [20] * 4


def test_each_model_is_timed_in_two_sessions_made_in_opposite_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = digits(1)
    variants = [onnx.ModelProto(), onnx.ModelProto(), onnx.ModelProto()]
    for copy, tag in zip(variants, "abc", strict=True):
        copy.CopyFrom(model)
        copy.doc_string = tag
    made: list[str] = []

    def recording(model: onnx.ModelProto, config: object = None) -> object:
        made.append(model.doc_string)
        return create_session(model, config)  # type: ignore[arg-type]

    monkeypatch.setattr(perf, "create_session", recording)
    feed = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    latencies = perf.measure_latency(variants, feed, runs=30, warmup=2)
    assert made == ["a", "b", "c", "c", "b", "a"]
    assert [lat.runs for lat in latencies] == [60] * 3, "the two sessions' runs pooled"
    made.clear()
    monkeypatch.setattr(perf, "BALANCED_BYTES", 0)
    assert [lat.runs for lat in perf.measure_latency(variants, feed, runs=30, warmup=2)] == [30] * 3
    assert made == ["a", "b", "c"], "beyond BALANCED_BYTES, one session per model"
