"""The reports' data models. ``Report.to_dict`` is the JSON schema documented in the README (``graphopt.report/1``);
``BenchReport.to_dict`` is ``graphopt bench``'s (``graphopt.bench/1``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BENCH_SCHEMA", "FAILED", "FLEET_SCHEMA", "OPTIMIZED", "SCHEMA", "UP_TO_DATE", "BenchReport", "BenchRow",
           "FleetReport", "FleetRow", "PassRecord", "Report", "Timing"]

SCHEMA = "graphopt.report/1"
BENCH_SCHEMA = "graphopt.bench/1"
FLEET_SCHEMA = "graphopt.fleet/1"
OPTIMIZED, UP_TO_DATE, FAILED = "optimized", "up to date", "failed"
"""A fleet row's status: optimised now, skipped as up to date (its output records the same request on the same
files), or failed."""


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


@dataclass(frozen=True)
class Timing:
    """Wall time per run of one model with ``threads`` intra-op threads on a batch of ``batch`` samples (runs
    interleaved with the other models of the same call): milliseconds; ``None`` where it could not run."""

    threads: int
    batch: int
    median_ms: float | None
    p90_ms: float | None = None
    p99_ms: float | None = None
    runs: int = 0

    @property
    def throughput(self) -> float | None:
        """Samples per second at this batch size."""
        return self.batch * 1e3 / self.median_ms if self.median_ms else None


@dataclass
class BenchRow:
    """One model (``variant``: ``original``, or the pipeline that made it) in one runtime: its figures, what its
    pipeline did (``status``), its fidelity against the original (the worst output's mean cosine and top-1, as
    verified by ``optimize``) and why a figure is missing (``error``)."""

    model: str
    variant: str
    runtime: str
    size_bytes: int | None = None
    status: str = ""
    error: str = ""
    load_ms: float | None = None
    peak_memory_bytes: int | None = None
    timings: list[Timing] = field(default_factory=list)
    cosine: float | None = None
    top1: float | None = None

    @property
    def label(self) -> str:
        """``model``, or ``model: pipeline`` for what a pipeline made of it."""
        return self.model if self.variant == "original" else f"{self.model}: {self.variant}"

    def timing(self, threads: int, batch: int = 1) -> Timing | None:
        return next((t for t in self.timings if (t.threads, t.batch) == (threads, batch)), None)


@dataclass
class BenchReport:
    """What ``graphopt bench`` measured: the machine (CPU, its int8/bf16/fp16 features, cores, runtimes and their
    versions), how (threads, batch sizes, runs), and a row per model, variant and runtime."""

    graphopt_version: str
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def original(self, row: BenchRow) -> BenchRow | None:
        """The original model's row in ``row``'s runtime."""
        return next((r for r in self.rows if (r.model, r.runtime, r.variant) == (row.model, row.runtime, "original")),
                    None)

    def ratio(self, row: BenchRow, threads: int = 1) -> float | None:
        """``row``'s median latency at batch 1 over its original's, from the same interleaved call."""
        base, this = self.original(row), row.timing(threads)
        first = base.timing(threads) if base is not None else None
        if first is None or this is None or not first.median_ms or this.median_ms is None:
            return None
        return this.median_ms / first.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"schema": BENCH_SCHEMA, **_finite(asdict(self))}


def _finite(value: Any) -> Any:
    """NaN and infinities as ``null``: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class FleetRow:
    """One model's outcome: ``status`` optimized, up to date (skipped: its output records the same request on the
    same files) or failed (``reason`` says why, one line); the output's size and latency against the original's,
    its worst output's mean cosine against the original, the pipeline that made it and the task's seconds."""

    name: str
    status: str
    reason: str = ""
    output: str | None = None
    pipeline: str = ""
    size_ratio: float | None = None
    latency_ratio: float | None = None
    cosine: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class FleetReport:
    """A fleet's run: its rows in manifest order, how it ran and how long it took (``FLEET_SCHEMA``)."""

    manifest: str
    output_dir: str
    executor: str
    workers: int
    threads: int
    rows: tuple[FleetRow, ...]
    wall_seconds: float
    machine: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[FleetRow, ...]:
        return tuple(r for r in self.rows if r.status == FAILED)

    def to_dict(self) -> dict[str, Any]:
        counts = {status: sum(r.status == status for r in self.rows) for status in (OPTIMIZED, UP_TO_DATE, FAILED)}
        return {"schema": FLEET_SCHEMA, "manifest": self.manifest, "output_dir": self.output_dir,
                "executor": self.executor, "workers": self.workers, "threads_per_task": self.threads,
                "wall_seconds": round(self.wall_seconds, 3), "counts": counts, "machine": dict(self.machine),
                "models": [r.to_dict() for r in self.rows], "notes": list(self.notes)}
