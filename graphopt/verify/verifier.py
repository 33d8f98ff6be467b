"""The verifier: runs models on the verification samples and compares them with reference outputs.

The original model's outputs are computed once per run and cached; every candidate is compared with them (and,
for lossless passes, with the outputs of the model before the pass). Outputs whose shape depends on the sample
(``RaggedOutput``) are compared sample by sample; a sample whose shape differs fails the comparison whatever the
tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import onnxruntime as ort

from graphopt.data import Dataset
from graphopt.errors import DataError
from graphopt.outputs import Output, Outputs, RaggedOutput, join_samples, take_samples
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import HEURISTIC, ErrorStats, comparable, error_stats, shape_mismatches
from graphopt.verify.output_kinds import OutputKind, output_kinds
from graphopt.verify.task import TaskBudget, TaskResult, judge_task
from graphopt.verify.tolerance import Tolerance, judge

__all__ = ["CandidateRun", "Verification", "Verifier"]

log = logging.getLogger(__name__)


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
            session, data, self.runtime, progress=progress, label="reference outputs"
        )
        self.kinds = dict(kinds) if kinds is not None else output_kinds(original)
        self.task = task
        self._task_reference = task.metric(self.reference, data.labels) if task and data.labels is not None else None

    def against_original(self, candidate: Outputs, tolerance: Tolerance) -> Verification:
        """``candidate`` judged against the original's outputs with ``tolerance``, each output by its kind, and by
        the task budget when one is set."""
        verification = self.compare(self.reference, candidate, tolerance, "original", self.kinds)
        if self.task is None or self._task_reference is None or self.data.labels is None:
            return verification
        result = judge_task(self.task, self._task_reference, self.task.metric(candidate, self.data.labels),
                            tolerance.confidence)
        failures = verification.failures + result.failures
        return replace(verification, passed=not failures, failures=failures, task=result)

    def outputs(self, model: onnx.ModelProto, label: str = "verify") -> Outputs:
        """Run ``model`` on the verification samples, laid out like the reference outputs."""
        return self.candidate(model, label).outputs()

    def candidate(self, model: onnx.ModelProto, label: str = "verify",
                  session: ort.InferenceSession | None = None) -> CandidateRun:
        """``model`` loaded once (or in ``session``, made with this verifier's runtime settings), to run on the
        first verification samples and then, if asked, the rest."""
        return CandidateRun(self, session or create_session(model, self.runtime), label)

    def head(self, samples: int) -> Outputs:
        """The reference outputs on the first ``samples`` verification samples."""
        return {name: take_samples(output, slice(0, samples)) for name, output in self.reference.items()}

    def _run(self, session: ort.InferenceSession, window: slice, label: str) -> Outputs:
        whole = window.start == 0 and window.stop in (None, self.data.n_samples)
        data = self.data if whole else self.data.window(window.start, window.stop)
        outputs, _ = run_dataset(session, data, self.runtime, per_sample=self._per_sample, progress=self.progress,
                                 label=label)
        return outputs

    @staticmethod
    def compare(reference: Outputs, candidate: Outputs, tolerance: Tolerance, against: str,
                kinds: Mapping[str, OutputKind] | None = None) -> Verification:
        """Judge ``candidate`` against ``reference``; missing outputs or changed shapes (of the whole output, or of
        any sample of a ragged one) fail, whatever the tolerance. ``kinds`` (``output_kinds`` of the original
        model) say along which axis each output's top-1 is judged and where its mask is cut; without them the
        shape heuristic decides top-1 and no mask is judged."""
        stats: dict[str, ErrorStats] = {}
        problems: list[str] = []
        for name, ref in reference.items():
            got = candidate.get(name)
            if got is None:
                problems.append(f"{name}: output missing")
            elif not comparable(ref, got):
                problems.append(f"{name}: {_layout(got)} differs from {_layout(ref)}")
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
    session serves every stage."""

    def __init__(self, verifier: Verifier, session: ort.InferenceSession, label: str) -> None:
        self._verifier, self._session, self._label = verifier, session, label
        self._done: Outputs = {}
        self._count = 0

    def first(self, samples: int) -> Outputs:
        """The outputs on the first ``samples`` verification samples (all of them, at most)."""
        samples = min(samples, self._verifier.data.n_samples)
        if samples > self._count:
            label = self._label if samples == self._verifier.data.n_samples else f"{self._label} (first {samples})"
            more = self._verifier._run(self._session, slice(self._count, samples), label)
            self._done = more if not self._done else {n: join_samples([self._done[n], more[n]]) for n in more}
            self._count = samples
        return self._done

    def outputs(self) -> Outputs:
        """Every verification sample's outputs, laid out like the reference's."""
        return self.first(self._verifier.data.n_samples)


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
