"""The report's data model. ``Report.to_dict`` is the JSON schema documented in the README (``graphopt.report/1``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SCHEMA", "PassRecord", "Report"]

SCHEMA = "graphopt.report/1"


@dataclass(frozen=True)
class PassRecord:
    """One pass of the pipeline as the report shows it."""

    name: str
    status: str
    reason: str
    lossless: bool
    options: dict[str, Any]
    stats: dict[str, int | float]
    skipped: list[dict[str, str]]
    notes: list[str]
    params_before: int
    params_after: int
    size_before: int
    size_after: int
    worst: dict[str, Any] | None
    verifications: list[dict[str, Any]]
    units: list[dict[str, Any]]
    trials: int
    seconds: float


@dataclass
class Report:
    """Everything a run did, from input to output; filled by ``ReportCollector`` and the API."""

    graphopt_version: str
    input_path: str | None = None
    output_path: str | None = None
    input_summary: dict[str, Any] = field(default_factory=dict)
    output_summary: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    lossless_tolerance: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    """How each output is judged: ``{name: {class_axis, reason}}`` (``graphopt.verify.output_kinds``)."""
    passes: list[PassRecord] = field(default_factory=list)
    goal: dict[str, Any] | None = None
    """With ``--goal``: every plan tried, how each compared, and why the winner won (``graphopt.goal``)."""
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    """The pipeline as it ran, ``[{name, options}]`` with every option's value: ``--passes`` takes this report
    (or a TOML file of the same ``pipeline`` list) to repeat the run."""

    def record(self, name: str) -> PassRecord:
        """The record of the pass called ``name`` (the first, if it ran twice)."""
        found = next((p for p in self.passes if p.name == name), None)
        if found is None:
            raise KeyError(f"no pass '{name}' in the report ({', '.join(p.name for p in self.passes)})")
        return found

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        applied = [p for p in self.passes if p.status in ("applied", "narrowed")]
        body["totals"] = {
            "params_before": self.input_summary.get("params"),
            "params_after": self.output_summary.get("params"),
            "size_before": self.input_summary.get("size_bytes"),
            "size_after": self.output_summary.get("size_bytes"),
            "passes_applied": [p.name for p in applied],
            "passes_rolled_back": [p.name for p in self.passes if p.status == "rolled back"],
            "passes_failed": [p.name for p in self.passes if p.status == "failed"],
        }
        return {"schema": SCHEMA, **body}
