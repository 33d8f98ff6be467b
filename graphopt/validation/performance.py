"""Performance: what the optimisation bought, measured the same way for both models. Informational only: a
slower or larger model is a trade-off for the user to judge, not a failure.

Latency is single-thread, batch 1, the two models interleaved (``graphopt.perf``); compare the ratio, not the
milliseconds, which depend on the machine. Peak memory is measured in a fresh process per model, so that neither
model's allocations (nor this process's) inflate the other's.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from graphopt._proto import model_size
from graphopt.errors import GraphoptError, first_line
from graphopt.machine import cpu_model
from graphopt.perf import LOAD_BUDGET_S, LOADS, MAX_LOADS, load_ms, measure_latency, peak_memory_bytes
from graphopt.runtime import ORT_ERRORS
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section

__all__ = ["check_performance"]

_FAILURES: tuple[type[Exception], ...] = (GraphoptError, *ORT_ERRORS)

Figures = tuple[float | None, float | None]


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
        detail = (f"median of {LOADS} to {MAX_LOADS} session creations each ({LOAD_BUDGET_S:g} s of them at least, "
                  "where they take less), the models taking turns in alternating order")
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
