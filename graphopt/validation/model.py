"""The validation report's data model. ``ValidationReport.to_dict`` is the JSON schema documented in the README
(``graphopt.validation/1``); the terminal table and the HTML page are renderings of it.

A report is a list of sections (held-out, folds, shifts, environments, performance); a section is a list of checks.
A check compares two sets of outputs and carries its figures in ``metrics`` (``None`` for a figure that does not
apply), so renderers can tabulate and plot any section without knowing how it was measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SCHEMA", "Check", "Section", "ValidationReport"]

SCHEMA = "graphopt.validation/1"


@dataclass(frozen=True)
class Check:
    """One comparison: ``passed`` against the tolerance (``None``: informational, e.g. a latency), its figures,
    and the failures or notes in one line each. ``group`` gathers checks that plot as one series (a shift kind,
    a pass across folds); ``level`` is the x value along that series (an SNR, a fold number)."""

    name: str
    passed: bool | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    detail: str = ""
    group: str = ""
    level: float | None = None


@dataclass
class Section:
    """One kind of validation. ``passed`` is ``None`` when the section only informs or was skipped (``skipped``
    then says why); otherwise every check with a verdict must pass."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    skipped: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        verdicts = [c.passed for c in self.checks if c.passed is not None]
        return None if self.skipped or not verdicts else all(verdicts)


@dataclass
class ValidationReport:
    """Everything ``graphopt.validate`` measured: the two models, the data, the tolerance and the sections."""

    graphopt_version: str
    original_path: str | None
    optimized_path: str | None
    data: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Shippable: no section failed (skipped and informational sections do not count against it)."""
        return all(s.passed is not False for s in self.sections)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        for section, record in zip(self.sections, body["sections"], strict=True):
            record["passed"] = section.passed
            for check in record["checks"]:
                check["metrics"] = {k: _finite(v) for k, v in check["metrics"].items()}
        return {"schema": SCHEMA, "passed": self.passed, **body}


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value
