"""The loop every benchmark shares: build a model's variants, measure each on the held-out half, time them in one
run, render a table and write ``<name>-<date>.md`` / ``.json``.

A benchmark script only says which variants to build (``Candidate`` factories) and which extra columns its table
shows; fidelity, budget, accuracy, size and latency are measured here the same way for all of them:

- Samples are split as ``graphopt.optimize`` splits them (``Dataset.split(0.5)``, seed 0); every figure compares a
  variant's outputs with the original's on the held-out half only.
- *Within budget* is graphopt's default budget (``Tolerance.budget()``: mean cosine ≥ 0.99, top-1 agreement ≥ 0.99,
  integer outputs exact) on every output, plus, for a model with a decision output (silero), agreement of the
  decision (probability ≥ 0.5) ≥ 0.99.
- Latency: single thread, batch 1 (one held-out sample), median of ``runs`` runs after warm-up, as a ratio to the
  original from the same run (``workloads.latency_ratios``).

Not part of CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from workloads import ROOT, Workload, feed, held_out_indices, latency_ratios, load_workloads, machine

import graphopt
from graphopt.data import Dataset
from graphopt.errors import first_line
from graphopt.pass_base import PassBase
from graphopt.runtime import RuntimeConfig, create_session, run_dataset
from graphopt.verify.metrics import ErrorStats, error_stats
from graphopt.verify.output_kinds import output_kinds
from graphopt.verify.tolerance import Tolerance, judge

__all__ = [
    "Candidate", "Column", "ModelResult", "Row", "error_text", "graphopt_variant", "measure", "num", "render",
    "run_benchmark", "write",
]

log = logging.getLogger("benchmarks")

ORIGINAL = "original"
DECISION_AGREEMENT = 0.99
METHOD = (
    "How it was measured: each model's samples are split as graphopt splits them (half calibration, half held-out, "
    "seed 0); every figure compares a variant with the original on the held-out half only. *size*: serialised "
    "model as a ratio to the original. *latency*: single thread, batch 1 (one held-out sample), onnxruntime's "
    "default graph optimisations, median of N runs after warm-up, as a ratio to the original from the same run "
    "(small models interleaved, models over 20 MB each in a pair with the original; absolute medians in the JSON). "
    "*cosine*: mean / min per-sample cosine of the main output; *top-1*: agreement of the arg-max (silero: of the "
    "speech decision); *accuracy*: against true labels where there are any. *within budget*: graphopt's default "
    "budget (mean cosine ≥ 0.99, top-1 ≥ 0.99, integer outputs exact) on every output. *verified by graphopt*: "
    "the variant went through graphopt's own verification (narrowed or rolled back when it broke the budget); "
    "peers and unverified settings hand back what they make."
)


@dataclass
class Candidate:
    """A variant before measurement: its model, or why there is none."""

    variant: str
    model: onnx.ModelProto | None
    seconds: float = 0.0
    error: str = ""
    status: str = ""
    verified: bool = True
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """One variant of one model, as the table and the JSON show it."""

    model: str
    variant: str
    verified: bool
    ok: bool
    error: str = ""
    status: str = ""
    size_bytes: int = 0
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    cosine: float = math.nan
    cosine_min: float = math.nan
    snr_db: float = math.nan
    top1: float | None = None
    accuracy: float | None = None
    within_budget: bool | None = None
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ModelResult:
    name: str
    title: str
    data_note: str
    samples: int
    calibration: int
    verification: int
    runs: int
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, variant: str) -> Row | None:
        return next((r for r in self.rows if r.variant == variant), None)


@dataclass(frozen=True)
class Column:
    """An extra table column: its header and how a measured row shows in it (given the original's row too)."""

    header: str
    cell: Callable[[Row, Row], str]


def error_text(e: BaseException) -> str:
    """One line: type, message and, for message-less errors (bare asserts), where it was raised."""
    text = f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)
    if frames and not str(e).strip():
        text += f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})"
    return text


def num(value: float | None, digits: int, suffix: str = "") -> str:
    """A table cell: the value with ``digits`` decimals, or "–" when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}{suffix}"


def graphopt_variant(w: Workload, label: str, passes: str | Sequence[str | PassBase] | None, *,
                     verified: bool = True, record: str | None = None) -> Candidate:
    """``graphopt.optimize`` on the workload, under the default budget (or none when not ``verified``); the status,
    stats and notes come from the pass record named ``record`` (default: the only pass other than
    ``normalize``/``drop-inferred-shapes``), or summarise every pass when the pipeline has several."""
    start = time.perf_counter()
    try:
        result = graphopt.optimize(w.model, w.data, passes=passes, tolerance=None if verified else Tolerance(),
                                   output_kinds=w.output_kinds)
    except Exception as e:  # noqa: BLE001 - a crash is a result to report, not a reason to stop
        return Candidate(label, None, time.perf_counter() - start, error_text(e), verified=verified)
    seconds = time.perf_counter() - start
    records = [p for p in result.report.passes if p.name not in _FRAMEWORK_PASSES]
    chosen = result.report.record(record) if record else records[-1] if len(records) == 1 else None
    if chosen is None:
        changed = [p.name for p in records if p.status in ("applied", "narrowed")]
        status = f"{len(changed)}/{len(records)} passes changed it" + (f": {', '.join(changed)}" if changed else "")
        return Candidate(label, result.model, seconds, status=status, verified=verified,
                         notes=[f"{p.name}: {p.status}" + (f" ({p.reason})" if p.reason else "") for p in records])
    left = [u for u in chosen.units if not u.get("applied")] if chosen.status == "narrowed" else []
    status = chosen.status + (f", {len(left)} units left out" if left else "")
    why = next((s["reason"] for s in chosen.skipped if s.get("target") == "graph"), chosen.reason)
    if chosen.status not in ("applied", "narrowed") and why:
        status += f": {why if len(why) <= 120 else why[:119] + '…'}"
    notes = _grouped_skips(chosen.skipped) + list(chosen.notes)
    return Candidate(label, result.model, seconds, status=status, verified=verified, notes=notes,
                     stats=dict(chosen.stats))


_FRAMEWORK_PASSES = frozenset({"normalize", "drop-inferred-shapes"})


def _grouped_skips(skipped: list[dict[str, str]]) -> list[str]:
    """One note per distinct reason, naming up to two of the targets it concerns."""
    by_reason: dict[str, list[str]] = {}
    for skip in skipped:
        by_reason.setdefault(skip["reason"], []).append(skip["target"])
    return [f"skipped {targets[0]}: {reason}" if len(targets) == 1 else
            f"skipped {len(targets)} ({', '.join(targets[:2])}{', …' if len(targets) > 2 else ''}): {reason}"
            for reason, targets in by_reason.items()]


def _fidelity(w: Workload, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None,
              row: Row) -> None:
    """Fill ``row``'s fidelity columns from its outputs on the held-out half, each output judged by its kind as
    graphopt judges it (``output_kinds``: top-1 only on class scores, IoU on probability maps)."""
    kinds = output_kinds(w.model, w.output_kinds)
    stats: dict[str, ErrorStats] = {
        name: error_stats(reference[name], got[name], class_axis=kinds[name].class_axis,
                          mask_threshold=kinds[name].mask_threshold) if name in kinds else
        error_stats(reference[name], got[name]) for name in reference}
    row.outputs = {name: s.to_dict() for name, s in stats.items()}
    main = stats[w.main_output]
    row.cosine, row.cosine_min, row.snr_db, row.top1 = main.cosine, main.cosine_min, main.snr_db, main.top1
    row.within_budget = judge(stats, Tolerance.budget()).passed
    if w.decision_output is not None:
        decided = [np.asarray(o[w.decision_output]).reshape(-1) >= 0.5 for o in (reference, got)]
        row.top1 = float(np.mean(decided[0] == decided[1]))
        row.within_budget = row.within_budget and row.top1 >= DECISION_AGREEMENT
    if labels is not None:
        predicted = np.argmax(got[w.main_output].reshape(len(labels), -1), axis=-1)
        row.accuracy = float(np.mean(predicted == labels))


def measure(w: Workload, build: Callable[[Workload, Dataset], list[Candidate]], runs: int,
            keep: dict[str, onnx.ModelProto] | None = None,
            describe: Callable[[onnx.ModelProto], dict[str, Any]] | None = None) -> ModelResult:
    """Every variant ``build`` makes (the original first, added here), measured on the held-out half and timed in
    one run; ``describe`` adds figures of each model file to its row's stats; ``keep`` receives the models that
    ran, by variant."""
    calibration, verification = w.data.split(0.5)
    labels = w.labels[held_out_indices(w.data.n_samples)] if w.labels is not None else None
    candidates = [Candidate(ORIGINAL, w.model, status="reference"), *build(w, calibration)]
    log.warning("[%s] fidelity on %d held-out samples …", w.name, verification.n_samples)
    config = RuntimeConfig()
    reference, per_sample = run_dataset(create_session(w.model, config), verification, config)
    rows, measured = [], []
    for c in candidates:
        row = Row(w.name, c.variant, c.verified, c.model is not None, c.error, c.status, seconds=c.seconds,
                  stats=c.stats, notes=c.notes)
        rows.append(row)
        if c.model is None:
            continue
        row.size_bytes = c.model.ByteSize()
        row.size_ratio = row.size_bytes / w.model.ByteSize()
        if describe is not None:
            row.stats.update(describe(c.model))
        try:
            got, _ = run_dataset(create_session(c.model, config), verification, config, per_sample=per_sample)
        except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run is a row, not a crash
            row.ok, row.error = False, f"runs in onnxruntime: {error_text(e)}"
            continue
        _fidelity(w, reference, got, labels, row)
        measured.append((row, c.model))
        if keep is not None:
            keep[c.variant] = c.model
    log.warning("[%s] latency: %d runs of %d models …", w.name, runs, len(measured))
    for (row, _), (ms, ratio) in zip(measured, latency_ratios([m for _, m in measured], feed(verification), runs),
                                     strict=True):
        row.latency_ms, row.latency_ratio = ms, ratio
    return ModelResult(w.name, w.title, w.data_note, w.data.n_samples, calibration.n_samples,
                       verification.n_samples, runs, rows)


def _cells(row: Row, original: Row, extra: Sequence[Column]) -> list[str]:
    if not row.ok:
        return [row.variant, f"**error**: {row.error}"[:160], *["–"] * (8 + len(extra))]
    budget = "ref" if row.variant == ORIGINAL else ("yes" if row.within_budget else "**no**")
    return [row.variant, row.status or "ok", *(c.cell(row, original) for c in extra), num(row.size_ratio, 3),
            num(row.latency_ratio, 3, "×"), f"{num(row.cosine, 5)} / {num(row.cosine_min, 5)}", num(row.top1, 4),
            num(row.accuracy, 4), budget, "yes" if row.verified else "no", f"{row.seconds:.1f}"]


def render(title: str, results: list[ModelResult], info: dict[str, Any], command: str, wall: float, method: str,
           extra: Sequence[Column] = (), skipped: dict[str, str] | None = None, summary: Sequence[str] = ()) -> str:
    """The Markdown page: machine, command, method, a summary if given, one table per model with its notes."""
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    lines = [f"# {title} ({info['date']})", "",
             f"- machine: {info['cpu']}, {info['cores']} cores; {flags}",
             (f"- software: onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, numpy {info['numpy']}, "
             f"graphopt {info['graphopt']}, Python {info['python']}"),
             f"- command: `{command}`; wall time {wall:.0f} s", "", method, "", *summary]
    header = ["variant", "status", *(c.header for c in extra), "size", "latency", "cosine (mean / min)", "top-1",
              "accuracy", "within budget", "verified by graphopt", "seconds"]
    for r in results:
        lines += [f"## {r.title}", "",
                  (f"{r.data_note}; calibration {r.calibration}, held-out {r.verification}; latency median of "
                  f"{r.runs} runs, original {num(r.rows[0].latency_ms, 4)} ms."), "",
                  "| " + " | ".join(header) + " |",
                  "|---|---|" + "---:|" * (len(extra) + 5) + "---|---|---:|"]
        lines += ["| " + " | ".join(_cells(row, r.rows[0], extra)) + " |" for row in r.rows]
        notes = r.notes + [f"{row.variant}: {n}" for row in r.rows
                           for n in ([f"error: {row.error}"] if row.error else []) + row.notes]
        lines += ["", *(f"- {n}" for n in notes), ""] if notes else [""]
    lines += [f"- skipped model {k}: {v}" for k, v in (skipped or {}).items()]
    return "\n".join(lines).rstrip() + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write(folder: Path, name: str, markdown: str, payload: dict[str, Any]) -> Path:
    """``<folder>/<name>-<date>.md`` and ``.json`` (``<date>.*`` with no name); returns the common stem."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / "-".join(filter(None, (name, payload["machine"]["date"])))
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps(_jsonable(payload), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {stem}.md and {stem}.json")
    return stem


def run_benchmark(name: str, title: str, doc: str | None, build: Callable[[Workload, Dataset], list[Candidate]], *,
                  models: Sequence[str], default_runs: dict[str, int], extra: Sequence[Column] = (),
                  method: str = "", after: Callable[[Workload, ModelResult, dict[str, onnx.ModelProto]], None] | None = None,
                  summary: Callable[[list[ModelResult]], list[str]] | None = None,
                  describe: Callable[[onnx.ModelProto], dict[str, Any]] | None = None) -> None:
    """A benchmark script's ``main``: parse ``--models/--runs/--out``, measure, render, write ``<name>-<date>``
    (``<date>`` when ``name`` is empty)."""
    parser = argparse.ArgumentParser(description=(doc or title).splitlines()[0])
    parser.add_argument("--models", default=",".join(models), help=f"comma-separated, of {', '.join(models)}")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per model (default per model: "
                        + ", ".join(f"{k} {v}" for k, v in default_runs.items()) + ")")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for .md and .json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns through the root logger
    log.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    command = f"python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".strip()
    start = time.perf_counter()
    results, skipped = [], {}
    for w in load_workloads(args.models, skipped):
        models: dict[str, onnx.ModelProto] = {}
        result = measure(w, build, args.runs or default_runs.get(w.name, 300), models, describe)
        if after is not None:
            after(w, result, models)
        del models
        results.append(result)
    wall = time.perf_counter() - start
    info = machine()
    markdown = render(title, results, info, command, wall, method or METHOD, extra, skipped,
                      summary(results) if summary else ())
    print(markdown)
    write(args.out, name, markdown, {"schema": f"graphopt.bench-{name or 'all'}/1", "machine": info, "command": command,
                                     "wall_seconds": wall, "skipped_models": skipped,
                                     "models": [dataclasses.asdict(r) for r in results]})
