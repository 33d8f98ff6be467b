"""The verifier: runs models on the verification samples and compares them with reference outputs.

The original model's outputs are computed once per run and cached; every candidate is compared with them (and,
for lossless passes, with the outputs of the model before the pass).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx

from graphopt.data import Dataset
from graphopt.errors import DataError
from graphopt.progress import NULL_PROGRESS, Progress
from graphopt.runtime import Outputs, RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import ErrorStats, error_stats
from graphopt.verify.tolerance import Tolerance, judge

__all__ = ["Verification", "Verifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """The outcome of comparing a candidate with a reference under one tolerance."""

    passed: bool
    against: str
    tolerance: Tolerance
    stats: Mapping[str, ErrorStats] = field(default_factory=dict)
    failures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "against": self.against,
            "tolerance": self.tolerance.to_dict(),
            "failures": list(self.failures),
            "outputs": {name: s.to_dict() for name, s in self.stats.items()},
        }


class Verifier:
    """Runs models on ``data`` with ``runtime`` settings; the original model's outputs are the fixed reference."""

    def __init__(
        self,
        original: onnx.ModelProto,
        data: Dataset,
        runtime: RuntimeConfig | None = None,
        progress: Progress = NULL_PROGRESS,
    ) -> None:
        if data.n_samples == 0:  # e.g. a model without inputs fed a Dataset built by hand
            raise DataError("no verification samples: the data holds zero samples")
        self.data = data
        self.runtime = runtime or RuntimeConfig()
        self.progress = progress
        session = create_session(original, self.runtime)
        self.reference, self._per_sample = run_dataset(
            session, data, self.runtime, progress=progress, label="reference outputs"
        )

    def outputs(self, model: onnx.ModelProto, label: str = "verify") -> Outputs:
        """Run ``model`` on the verification samples, laid out like the reference outputs."""
        session = create_session(model, self.runtime)
        outputs, _ = run_dataset(
            session, self.data, self.runtime, per_sample=self._per_sample, progress=self.progress, label=label
        )
        return outputs

    @staticmethod
    def compare(reference: Outputs, candidate: Outputs, tolerance: Tolerance, against: str) -> Verification:
        """Judge ``candidate`` against ``reference``; missing outputs or changed shapes fail."""
        stats: dict[str, ErrorStats] = {}
        problems: list[str] = []
        for name, ref in reference.items():
            got = candidate.get(name)
            if got is None:
                problems.append(f"{name}: output missing")
            elif got.shape != ref.shape:
                problems.append(f"{name}: shape {list(got.shape)} differs from {list(ref.shape)}")
            else:
                stats[name] = error_stats(ref, got, rtol=tolerance.for_output(name).rtol)
        verdict = judge(stats, tolerance)
        failures = tuple(problems) + verdict.failures
        return Verification(not failures, against, tolerance, stats, failures)
