"""k-fold validation: is the verdict a property of the model, or of which samples happened to calibrate it?

Two views. With the pipeline that made the model (recorded in the model by ``graphopt optimize``), the pipeline is
re-run k times, fitted on k−1 folds of all samples and verified on the k-th: a pass whose verdict (applied,
narrowed, rolled back) changes between folds is unstable, and fails the section. The *given* optimised model is
also measured on each of k folds of the held-out samples, for the spread of its figures: informational, since a
small fold cannot resolve the tolerance (on 80 samples one top-1 disagreement is 0.0125, more than a 0.99 budget
allows), and the held-out section already judges all samples together. Leave-one-out is ``folds = n``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from graphopt.data import Dataset
from graphopt.errors import ValidationSetupError
from graphopt.outcome import PipelineResult
from graphopt.outputs import Outputs, RaggedOutput
from graphopt.validation.context import ValidationContext
from graphopt.validation.model import Check, Section
from graphopt.verify.verifier import Verification, Verifier

__all__ = ["Refit", "check_folds", "fold_indices"]

Refit = Callable[[Dataset, Dataset], PipelineResult]
"""Runs the pipeline with the first dataset for fitting and the second for verification."""

_GIVEN = "optimised model"


def fold_indices(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint, sorted index sets covering ``range(n)``, sizes differing by at most one (seeded shuffle)."""
    if not 2 <= folds <= n:
        raise ValidationSetupError(f"{folds} folds need 2 ≤ folds ≤ samples ({n})")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def check_folds(ctx: ValidationContext, folds: int = 5, refit: Refit | None = None) -> Section:
    section = Section("folds", f"{folds}-fold validation")
    n = ctx.held_out.n_samples
    if n < folds:
        section.skipped = f"{n} held-out samples cannot fill {folds} folds"
        return section
    reference, candidate = ctx.reference(), ctx.candidate()
    below = 0
    for number, index in enumerate(fold_indices(n, folds, ctx.seed), start=1):
        verification = Verifier.compare(_take(reference, index), _take(candidate, index), ctx.tolerance, "original",
                                       ctx.kinds)
        below += not verification.passed
        detail = f"below the tolerance: {'; '.join(verification.failures)}" if verification.failures else ""
        section.checks.append(Check(f"{_GIVEN}, fold {number}", None, _worst(verification), detail,
                                    group=_GIVEN, level=number))
    cosines = [v for v in (c.metrics.get("cosine") for c in section.checks) if v is not None]
    spread = f"cosine {min(cosines):.5f}–{max(cosines):.5f} across folds; " if cosines else ""
    section.notes.append(f"the optimised model on {folds} folds of the {n} held-out samples ({n // folds}+ each): "
                         f"{spread}below the tolerance on {below} of {folds} (informational)")
    if refit is None or ctx.pipeline is None:
        section.notes.append("pipeline not re-run: unknown (give --passes, or validate a model written by graphopt "
                             "optimize, which records its pipeline)")
        return section
    _refit_folds(ctx, section, folds, refit)
    return section


def _refit_folds(ctx: ValidationContext, section: Section, folds: int, refit: Refit) -> None:
    """Re-run the pipeline per fold of all samples and flag the passes whose verdict differs between folds."""
    if ctx.data.n_samples < folds:
        section.notes.append(f"pipeline not re-run: {ctx.data.n_samples} samples cannot fill {folds} folds")
        return
    statuses: dict[str, list[str]] = {}
    kept: dict[str, list[int]] = {}
    for number, index in enumerate(fold_indices(ctx.data.n_samples, folds, ctx.seed), start=1):
        rest = np.setdiff1d(np.arange(ctx.data.n_samples), index)
        result = refit(ctx.data.subset(rest), ctx.data.subset(index))
        for outcome in result.outcomes:
            if outcome.lossless:
                continue
            against = next((v for v in outcome.verifications if v.against == "original"), None)
            units = [u for u in outcome.units if u.applied]
            metrics = {**(_worst(against) if against else {}), "units_kept": float(len(units)) if outcome.units else None}
            statuses.setdefault(outcome.pass_name, []).append(outcome.status.value)
            kept.setdefault(outcome.pass_name, []).append(len(units))
            detail = outcome.status.value + (f": {outcome.reason}" if outcome.reason else "")
            section.checks.append(Check(f"{outcome.pass_name}, refit on fold {number}", None, metrics, detail[:300],
                                        group=outcome.pass_name, level=number))
    if not statuses:
        section.notes.append("pipeline re-run: it has no lossy pass, so nothing is fitted on data")
    for name, seen in statuses.items():
        counts = Counter(seen)
        stable = len(counts) == 1
        spread = f"; units kept {min(kept[name])}–{max(kept[name])}" if max(kept[name]) else ""
        verdicts = ", ".join(f"{status} in {count}/{folds}" for status, count in counts.most_common())
        section.checks.append(Check(f"{name}: verdict across folds", stable, {"folds_agreeing": float(max(counts.values()))},
                                    verdicts + spread + ("" if stable else ": unstable"), group=name))
    section.notes.append(f"pipeline re-run per fold: {ctx.pipeline}")


def _take(outputs: Outputs, index: np.ndarray) -> Outputs:
    return {name: output.take(index) if isinstance(output, RaggedOutput) else output[index]
            for name, output in outputs.items()}


def _worst(verification: Verification) -> dict[str, float | None]:
    """Cosine and top-1 of the output furthest from the original (lowest cosine)."""
    if not verification.stats:
        return {"cosine": None, "top1": None}
    worst = min(verification.stats.values(), key=lambda s: s.cosine)
    return {"cosine": worst.cosine, "top1": worst.top1}
