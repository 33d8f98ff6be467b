"""A task metric as a budget: the optimised model may lose at most ``max_drop`` of it against the original.

The metric scores each sample (``graphopt.metrics``); the drop is the mean of the paired per-sample differences,
judged by its one-sided upper confidence bound, as cosine and top-1 are judged by their lower bounds: a verdict
must hold on samples it was not measured on. A metric that returns one number for the set is judged by that number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt.outputs import Output
from graphopt.verify.intervals import lower_bound

__all__ = ["Metric", "TaskBudget", "TaskResult", "judge_task"]

Metric = Callable[[Mapping[str, Output], np.ndarray], "float | np.ndarray"]
"""Outputs over the samples and their labels → one score per sample (or one for the set), higher is better."""


@dataclass(frozen=True)
class TaskBudget:
    """A task metric (``name`` as registered) and the largest drop of it that passes."""

    name: str
    metric: Metric
    max_drop: float


@dataclass(frozen=True)
class TaskResult:
    """The metric of both models, the drop, its upper confidence bound (``None``: a set-level metric or no
    confidence asked), and why it fails the budget (empty: it passes)."""

    name: str
    original: float
    candidate: float
    drop: float
    drop_high: float | None
    failures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "original": self.original, "candidate": self.candidate, "drop": self.drop,
                "drop_high": self.drop_high}


def judge_task(budget: TaskBudget, original: float | np.ndarray, candidate: float | np.ndarray,
               confidence: float | None) -> TaskResult:
    """Judge the metric's drop from ``original``'s scores to ``candidate``'s (per sample, paired, or set-level)."""
    before, after = np.asarray(original, np.float64), np.asarray(candidate, np.float64)
    if before.ndim == 0 or after.ndim == 0 or before.shape != after.shape:
        drop, high = float(before.mean() - after.mean()), None
    else:
        differences = before - after
        drop = float(differences.mean())
        high = -lower_bound(-differences, confidence=confidence) if confidence is not None else None
    failures: list[str] = []
    if not math.isfinite(drop) or drop > budget.max_drop:
        failures.append(f"{budget.name} drops {drop:.4f} ({before.mean():.4f} → {after.mean():.4f}) > "
                        f"{budget.max_drop:g}")
    elif high is not None and high > budget.max_drop:
        failures.append(f"{budget.name} drops {drop:.4f}, but its upper confidence bound {high:.4f} > "
                        f"{budget.max_drop:g} (too close to the budget to hold on fresh samples)")
    return TaskResult(budget.name, float(before.mean()), float(after.mean()), drop, high, tuple(failures))
