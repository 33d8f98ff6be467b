"""The verifier: runs models on the verification samples and compares them with reference outputs.

The original model's outputs are computed once per run and cached; every candidate is compared with them (and,
for lossless passes, with the outputs of the model before the pass). Outputs whose shape depends on the sample
(``RaggedOutput``) are compared sample by sample; a sample whose shape differs fails the comparison whatever the
tolerance.

An output of more than ``SPILL_BYTES`` over the verification samples is kept in a temporary file and compared a block
of samples at a time, so that the reference, the previous model's and a candidate's outputs do not grow the run's
memory with the number of samples.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from graphopt.data import Dataset
from graphopt.errors import DataError
from graphopt.outputs import Output, Outputs, RaggedOutput, in_memory, join_samples, take_samples
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import RuntimeConfig, Session, create_session, run_dataset
from graphopt.verify.metrics import (
    HEURISTIC,
    Comparison,
    ErrorStats,
    all_nonnegative,
    comparable,
    error_stats,
    shape_mismatches,
    stacked,
)
from graphopt.verify.output_kinds import OutputKind, output_kinds
from graphopt.verify.task import TaskBudget, TaskResult, judge_task
from graphopt.verify.tolerance import Tolerance, judge

__all__ = ["SPILL_BYTES", "CandidateRun", "Verification", "Verifier"]

log = logging.getLogger(__name__)

SPILL_BYTES = 1 << 22
"""The most bytes of one output over the verification samples held in memory; a larger one goes to a temporary file
(``TMPDIR``), and comparisons read it back a block of samples at a time (``graphopt.verify.metrics.BLOCK_ELEMENTS``).
A run holds three such sets at most (the reference, the previous model's and a candidate's): with a file-type
classifier's 214 scores per sample, a run's peak grew by 23 MB from 100 to 10,000 samples with them in memory, and by
8 MB with them on disk."""


@dataclass(frozen=True)
class Verification:
    """The outcome of comparing a candidate with a reference under one tolerance."""

    passed: bool
    against: str
    tolerance: Tolerance
    stats: Mapping[str, ErrorStats] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    task: TaskResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "against": self.against,
            "tolerance": self.tolerance.to_dict(),
            "failures": list(self.failures),
            "outputs": {name: s.to_dict() for name, s in self.stats.items()},
            "task": self.task.to_dict() if self.task else None,
        }


class Verifier:
    """Runs models on ``data`` with ``runtime`` settings; the original model's outputs are the fixed reference."""

    def __init__(
        self,
        original: onnx.ModelProto,
        data: Dataset,
        runtime: RuntimeConfig | None = None,
        progress: Progress = NULL_PROGRESS,
        task: TaskBudget | None = None,
        kinds: Mapping[str, OutputKind] | None = None,
    ) -> None:
        if data.n_samples == 0:  # e.g. a model without inputs fed a Dataset built by hand
            raise DataError("no verification samples: the data holds zero samples")
        if task is not None and data.labels is None:
            raise DataError(f"the task metric {task.name} needs labels for the verification samples (--labels)")
        self.data = data
        self.runtime = runtime or RuntimeConfig()
        self.progress = progress
        session = create_session(original, self.runtime)
        self.reference, self._per_sample = run_dataset(
            session, data, self.runtime, progress=progress, label="reference outputs", spill_bytes=SPILL_BYTES
        )
        self.kinds = dict(kinds) if kinds is not None else output_kinds(original)
        self.task = task
        self._task_reference = (task.metric(in_memory(self.reference), data.labels)
                                if task and data.labels is not None else None)
        self._nonnegative: dict[str, bool] = {}
        self._last: tuple[onnx.ModelProto, Outputs] | None = None

    def against_original(self, candidate: Outputs, tolerance: Tolerance,
                         known: Mapping[str, ErrorStats] | None = None) -> Verification:
        """``candidate`` judged against the original's outputs with ``tolerance``, each output by its kind, and by
        the task budget when one is set; ``known`` holds outputs' statistics already gathered (``CandidateRun``)."""
        verification = self.compare(self.reference, candidate, tolerance, "original", self.kinds, known)
        if self.task is None or self._task_reference is None or self.data.labels is None:
            return verification
        result = judge_task(self.task, self._task_reference, self.task.metric(in_memory(candidate), self.data.labels),
                            tolerance.confidence)
        failures = verification.failures + result.failures
        return replace(verification, passed=not failures, failures=failures, task=result)

    def outputs(self, model: onnx.ModelProto, label: str = "verify") -> Outputs:
        """Run ``model`` on the verification samples, laid out like the reference outputs. The last model's
        outputs are kept (by identity: a ``--goal`` search continues many plans from one model's run)."""
        if self._last is None or self._last[0] is not model:
            self._last = (model, self.candidate(model, label).outputs())
        return self._last[1]

    def candidate(self, model: onnx.ModelProto, label: str = "verify",
                  session: Session | None = None, tolerance: Tolerance | None = None) -> CandidateRun:
        """``model`` loaded once (or in ``session``, made with this verifier's runtime settings), to run on the
        first verification samples and then, if asked, the rest; with ``tolerance`` (its ``rtol``s), compared with
        the original's outputs as its samples come (``CandidateRun.against_original``)."""
        return CandidateRun(self, session or create_session(model, self.runtime), label, tolerance)

    def nonnegative(self, name: str) -> bool:
        """Whether the reference output ``name`` (stacked) has no value below 0, read once."""
        if name not in self._nonnegative:
            reference = self.reference[name]
            self._nonnegative[name] = stacked(reference) and all_nonnegative(reference)
        return self._nonnegative[name]

    def head(self, samples: int) -> Outputs:
        """The reference outputs on the first ``samples`` verification samples."""
        return {name: take_samples(output, slice(0, samples)) for name, output in self.reference.items()}

    def _run(self, session: Session, window: slice, label: str) -> Outputs:
        whole = window.start == 0 and window.stop in (None, self.data.n_samples)
        data = self.data if whole else self.data.window(window.start, window.stop)
        outputs, _ = run_dataset(session, data, self.runtime, per_sample=self._per_sample, progress=self.progress,
                                 label=label, spill_bytes=SPILL_BYTES)
        return outputs

    @staticmethod
    def compare(reference: Outputs, candidate: Outputs, tolerance: Tolerance, against: str,
                kinds: Mapping[str, OutputKind] | None = None,
                known: Mapping[str, ErrorStats] | None = None) -> Verification:
        """Judge ``candidate`` against ``reference``; missing outputs or changed shapes (of the whole output, or of
        any sample of a ragged one) fail, whatever the tolerance. ``kinds`` (``output_kinds`` of the original
        model) say along which axis each output's top-1 is judged and where its mask is cut; without them the
        shape heuristic decides top-1 and no mask is judged. ``known`` statistics (of these outputs, at
        ``tolerance``'s rtol) are taken as they are."""
        stats: dict[str, ErrorStats] = {}
        problems: list[str] = []
        for name, ref in reference.items():
            got = candidate.get(name)
            if got is None:
                problems.append(f"{name}: output missing")
            elif not comparable(ref, got):
                problems.append(f"{name}: {_layout(got)} differs from {_layout(ref)}")
            elif known is not None and name in known:
                stats[name] = known[name]
            else:
                own = tolerance.for_output(name)
                kind = kinds.get(name) if kinds else None
                stats[name] = error_stats(ref, got, rtol=own.rtol, confidence=own.confidence,
                                          class_axis=kind.class_axis if kind else HEURISTIC,
                                          mask_threshold=kind.mask_threshold if kind else None)
                if stats[name].shape_mismatches:
                    problems.append(f"{name}: {_shape_failure(ref, got, stats[name])}")
        verdict = judge({n: s for n, s in stats.items() if not s.shape_mismatches}, tolerance)
        failures = tuple(problems) + verdict.failures
        return Verification(not failures, against, tolerance, stats, failures)


class CandidateRun:
    """One candidate's outputs on the verification samples, run as far as asked: ``first(k)`` runs up to the first
    ``k`` samples (a search screens on them, in growing stages), ``outputs()`` the rest, each sample once; one
    session serves every stage. Given a tolerance, each output of one shape for every sample is compared with the
    original's as its samples come, so that ``against_original`` at any stage compares only the new samples."""

    def __init__(self, verifier: Verifier, session: Session, label: str,
                 tolerance: Tolerance | None = None) -> None:
        self._verifier, self._session, self._label = verifier, session, label
        self._done: Outputs = {}
        self._count = 0
        self._comparisons: dict[str, Comparison] = {}
        if tolerance is not None:
            for name, reference in verifier.reference.items():
                kind = verifier.kinds.get(name)
                if stacked(reference):
                    self._comparisons[name] = Comparison(
                        reference, tolerance.for_output(name).rtol, kind.class_axis if kind else HEURISTIC,
                        kind.mask_threshold if kind else None, functools.partial(verifier.nonnegative, name))

    def first(self, samples: int) -> Outputs:
        """The outputs on the first ``samples`` verification samples (all of them, at most)."""
        samples = min(samples, self._verifier.data.n_samples)
        if samples > self._count:
            label = self._label if samples == self._verifier.data.n_samples else f"{self._label} (first {samples})"
            more = self._verifier._run(self._session, slice(self._count, samples), label)
            for name, comparison in list(self._comparisons.items()):
                got = more.get(name)
                if got is not None and stacked(got) and got.shape[1:] == comparison.reference.shape[1:]:
                    comparison.add(got)
                else:  # missing or reshaped: ``compare`` says so from the outputs
                    del self._comparisons[name]
            self._done = more if not self._done else {n: join_samples([self._done[n], more[n]]) for n in more}
            self._count = samples
        return self._done

    def outputs(self) -> Outputs:
        """Every verification sample's outputs, laid out like the reference's."""
        return self.first(self._verifier.data.n_samples)

    def against_original(self, tolerance: Tolerance) -> Verification:
        """The outputs run so far judged against the original's on the same samples, as
        ``Verifier.against_original`` judges all of them (with the task budget once every sample has run);
        ``tolerance`` has the run's rtols, at any confidence."""
        known = {name: c.stats(tolerance.for_output(name).confidence) for name, c in self._comparisons.items()
                 if c.rtol == tolerance.for_output(name).rtol}
        if self._count == self._verifier.data.n_samples:
            return self._verifier.against_original(self._done, tolerance, known)
        return Verifier.compare(self._verifier.head(self._count), self._done, tolerance, "original",
                                self._verifier.kinds, known)


def _layout(output: Output) -> str:
    if isinstance(output, RaggedOutput):
        return f"shape varying by sample ({len(output)} sample{'s' if len(output) != 1 else ''})"
    return f"shape {list(output.shape)}"


def _shape_failure(reference: Output, candidate: Output, stats: ErrorStats) -> str:
    """"3 of 40 samples differ in shape (sample 7: [2, 5] instead of [2, 4])"."""
    first = shape_mismatches(reference, candidate)[0]
    return (f"{stats.shape_mismatches} of {stats.n_samples} samples differ in shape (sample {first}: "
            f"{_sample_shape(candidate, first)} instead of {_sample_shape(reference, first)})")


def _sample_shape(output: Output, index: int) -> list[int]:
    return list(output.shapes[index] if isinstance(output, RaggedOutput) else output.shape[1:])
