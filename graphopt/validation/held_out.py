"""Held-out agreement: the optimised model against the original on samples never used to fit it, each figure with
a bootstrap interval, and task accuracy (or a user metric) when the data carries labels.

An output whose shape depends on the sample (``RaggedOutput``) is judged sample by sample: its intervals cover the
samples whose shapes agree, and any sample whose shape differs fails the output's check."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import numpy as np

from graphopt.errors import DataError, ValidationSetupError
from graphopt.outputs import Output, Outputs, RaggedOutput
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section
from graphopt.verify.intervals import Interval, bootstrap_mean, paired_difference
from graphopt.verify.metrics import looks_like_classifier
from graphopt.verify.task import Metric, TaskBudget, judge_task
from graphopt.verify.verifier import Verifier

__all__ = ["METRIC_GROUP", "Metric", "check_held_out", "load_metric"]

METRIC_GROUP = "graphopt.metrics"



def load_metric(name: str) -> Metric:
    """The task metric registered as entry point ``name`` in the ``graphopt.metrics`` group."""
    found = {p.name: p for p in entry_points(group=METRIC_GROUP)}
    if name not in found:
        raise ValidationSetupError(f"unknown metric '{name}' (registered: {', '.join(sorted(found)) or 'none'})")
    metric = found[name].load()
    if not callable(metric):
        raise ValidationSetupError(f"metric entry point '{name}' is not callable")
    return metric  # type: ignore[no-any-return]


def check_held_out(ctx: ValidationContext, *, metric: Metric | None = None, max_accuracy_drop: float | None = 0.01,
                   resamples: int = 2000) -> Section:
    """One check per output (the tolerance applied to its figures, cosine and top-1 with 95% intervals), and one
    for the task: accuracy of an argmax output against the labels, or ``metric``, original vs optimised."""
    section = Section("held_out", "Held-out samples")
    reference, candidate = ctx.reference(), ctx.candidate()
    verification = Verifier.compare(reference, candidate, ctx.tolerance, "original", ctx.kinds)
    failures = {name: [f for f in verification.failures if f.startswith(f"{name}:")] for name in reference}
    for name in reference:
        stats = verification.stats.get(name)  # none for an output missing or shaped otherwise
        if stats is None:
            section.checks.append(Check(name, False, {}, "; ".join(failures[name]) or "output missing"))
            continue
        metrics: dict[str, float | None] = {"cosine": stats.cosine, "cosine_min": stats.cosine_min}
        per_sample = stats.per_sample  # what the verdict averaged, over the samples whose shapes agree
        assert per_sample is not None
        cosine = None if stats.exact else _interval(per_sample.cosine, resamples, ctx.seed)
        if cosine is not None:
            metrics.update(cosine_low=cosine.low, cosine_high=cosine.high)
        interval = None if per_sample.top1 is None else _interval(per_sample.top1, resamples, ctx.seed)
        if interval is not None:
            metrics.update(top1=interval.mean, top1_low=interval.low, top1_high=interval.high)
        iou = None if per_sample.iou is None else _interval(per_sample.iou, resamples, ctx.seed)
        if iou is not None:
            metrics.update(iou=iou.mean, iou_low=iou.low, iou_high=iou.high)
        metrics.update(max_abs=stats.max_abs, snr_db=stats.snr_db if math.isfinite(stats.snr_db) else None)
        section.checks.append(Check(name, not failures[name], metrics, "; ".join(failures[name])))
    section.notes.append(f"{ctx.held_out.n_samples} held-out samples; intervals: 95% bootstrap of the mean, "
                         f"{resamples} resamples")
    if ctx.held_out.labels is not None:
        section.checks.append(_task_check(reference, candidate, ctx.held_out.labels, metric, max_accuracy_drop,
                                          resamples, ctx.seed, ctx.tolerance.confidence))
    return section


def _interval(values: np.ndarray, resamples: int, seed: int) -> Interval | None:
    """The bootstrap interval of per-sample ``values`` (of the samples whose shapes agree: a sample whose shape
    differs is a failure the check already states); ``None`` when no sample is left."""
    return bootstrap_mean(values, resamples=resamples, seed=seed) if values.size else None


def _task_check(reference: Outputs, candidate: Outputs, labels: np.ndarray, metric: Metric | None,
                max_drop: float | None, resamples: int, seed: int, confidence: float | None) -> Check:
    """Accuracy (or the user metric) of both models; fails when the optimised one loses more than ``max_drop``."""
    if metric is not None:
        budget = TaskBudget("metric", metric, math.inf if max_drop is None else max_drop)
        result = judge_task(budget, metric(reference, labels), metric(candidate, labels), confidence)
        high = "" if result.drop_high is None else f" (upper confidence bound {result.drop_high:+.4f})"
        return Check("metric", None if max_drop is None else not result.failures,
                     {"metric_original": result.original, "metric_optimized": result.candidate,
                      "metric_drop": result.drop, "metric_drop_high": result.drop_high},
                     "; ".join(result.failures) or f"drop {result.drop:+.4f}{high}")
    output = next((n for n, a in reference.items()
                   if isinstance(a, np.ndarray) and looks_like_classifier(a.shape) and len(a) == len(labels)), None)
    if output is None:
        return Check("accuracy", None, {}, "labels given but no [samples, classes] output and no --metric to score them")
    chosen = reference[output]
    assert isinstance(chosen, np.ndarray)
    classes = chosen.shape[1]
    values = labels.reshape(len(labels), -1).astype(np.float64)
    if values.shape[1] != 1 or not np.all((values >= 0) & (values < classes) & (values == np.floor(values))):
        raise DataError(f"labels do not fit output '{output}': accuracy needs one class index in 0..{classes - 1} per "
                        f"sample (got {labels.dtype} {list(labels.shape)}, values {values.min():g}..{values.max():g})")
    truth = values.reshape(-1)
    right_before = _correct(chosen, truth, classes)
    right_after = _correct(candidate[output], truth, classes)
    accuracy = bootstrap_mean(right_after, resamples=resamples, seed=seed)
    loss = paired_difference(right_before, right_after, resamples=resamples, seed=seed)
    passed = None if max_drop is None else loss.mean <= max_drop
    detail = f"{output}: drop {loss.mean:+.4f} (95% interval {loss.low:+.4f} … {loss.high:+.4f})"
    if passed is False:
        detail += f", more than the allowed {max_drop:g}"
    return Check("accuracy", passed, {"accuracy_original": float(right_before.mean()),
                                      "accuracy_optimized": accuracy.mean, "accuracy_low": accuracy.low,
                                      "accuracy_high": accuracy.high, "accuracy_drop": loss.mean}, detail)


def _correct(output: Output, truth: np.ndarray, classes: int) -> np.ndarray:
    """1.0 per sample whose argmax is its label; a sample of a ragged output that is not one score per class (the
    optimised model changed its shape) has no prediction, so it counts as wrong."""
    if isinstance(output, RaggedOutput):
        return np.array([float(s.shape == (classes,) and np.argmax(s) == t)
                         for s, t in zip(output.samples, truth, strict=True)])
    return (np.argmax(output, axis=-1) == truth).astype(np.float64)
