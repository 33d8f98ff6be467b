"""Renderings of a ``Report`` and a ``ValidationReport``: JSON for machines, plain-text tables for terminals.

A table fits the width it is given (the terminal's, ``COLUMNS`` when set; ``DEFAULT_WIDTH`` otherwise): each row
is one line of short figures in aligned columns, followed by its details (why a pass was not applied, what it
changed, the worst output) wrapped below it, indented, so a long reason reads whole instead of being cut or
stretching the table. Free text around the tables is wrapped to the same width. No colour or markup: the text is
the same on a terminal, in a pipe and in a CI log.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from typing import Any

from graphopt.report.model import BenchReport, BenchRow, FleetReport, Report, Timing
from graphopt.validation.model import Check, ValidationReport

__all__ = [
    "DEFAULT_WIDTH",
    "bench_json",
    "budget_share",
    "format_bytes",
    "format_count",
    "format_duration",
    "format_number",
    "format_threads",
    "machine_lines",
    "plan_label",
    "render_bench_table",
    "render_fleet_table",
    "render_table",
    "render_validation_table",
    "to_json",
    "validation_json",
    "wrap",
]

DEFAULT_WIDTH = 100
"""Columns of a table when the caller does not say (a pipe, a log file)."""


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str) + "\n"


def validation_json(report: ValidationReport) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def format_count(n: int | None) -> str:
    """A count the way the tables print them: ``6775``, ``38.3k``, ``1.57M``, ``2.10G``."""
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale * (10 if suffix == "k" else 1):
            return f"{n / scale:.{1 if suffix == 'k' else 2}f}{suffix}"
    return str(n)


def format_number(value: float) -> str:
    """A statistic: a whole number as a count (``format_count``), anything else to four significant digits without
    exponent notation where it can be avoided (``0.0123``, ``153.4``), never ``1.541e+05``."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return format_count(int(value))
    if abs(value) >= 1e4:
        return format_count(round(value))
    return f"{value:.4g}" if abs(value) >= 1e-4 else f"{value:.1e}"


def wrap(text: str, width: int | None = None, indent: str = "", first: str = "") -> list[str]:
    """``text`` as lines of at most ``width`` characters, the first indented by ``first`` and the others by
    ``indent``; a word longer than a line (a path) is broken rather than let past the edge."""
    return textwrap.wrap(text, width or DEFAULT_WIDTH, initial_indent=first, subsequent_indent=indent,
                         break_on_hyphens=False) or [""]


Row = tuple[Sequence[str], Sequence[str]]
"""A table row: its short cells, then its detail lines (each wrapped to the width below the row)."""

GAP = "  "
DETAIL = "    "


def _table(header: Sequence[str], rows: Sequence[Row], width: int | None, right: Sequence[int] = ()) -> list[str]:
    """``rows`` under ``header`` in aligned columns of at most ``width`` characters, each row's details wrapped
    below it. Where the columns are wider than ``width``, the first column (a name) wraps to make room."""
    width = width or DEFAULT_WIDTH
    widths = [max(len(cells[i]) for cells in [header, *(r for r, _ in rows)]) for i in range(len(header))]
    total = sum(widths) + len(GAP) * (len(widths) - 1)
    if total > width:
        shrunk = max(widths[0] - (total - width), 8)
        total, widths[0] = total - (widths[0] - shrunk), shrunk

    def lines(cells: Sequence[str]) -> list[str]:
        first = _wrap_word(cells[0], widths[0])
        out = []
        for k, head in enumerate(first):
            row = [head, *(c if k == 0 else "" for c in cells[1:])]
            out.append(GAP.join(c.rjust(w) if i in right else c.ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        return out

    out = [*lines(header), "─" * min(total, width)]
    for cells, details in rows:
        out += lines(cells)
        out += [line for detail in details if detail for line in wrap(detail, width, DETAIL, first=DETAIL)]
    return out


def _wrap_word(text: str, width: int) -> list[str]:
    """A name cut into lines of ``width`` characters (names have no spaces to wrap at)."""
    return [text[i:i + width] for i in range(0, len(text), width)] or [""]


def _bound(low: float | None, mean: float, digits: int) -> str:
    """`` (≥low)``: the lower confidence bound beside its estimate, when it says something the estimate does not."""
    return "" if low is None or round(low, digits) == round(mean, digits) else f" (≥{low:.{digits}f})"


def _worst(worst: dict[str, Any] | None) -> str:
    if not worst:
        return "-"
    text = f"cos {worst['cosine']:.5f}" + _bound(worst.get("cosine_low"), worst["cosine"], 5)
    if worst.get("top1") is not None:
        text += f" top1 {worst['top1']:.3f}" + _bound(worst.get("top1_low"), worst["top1"], 3)
    if worst.get("iou") is not None:
        text += f" IoU {worst['iou']:.3f}" + _bound(worst.get("iou_low"), worst["iou"], 3)
    return f"{text} max|Δ| {worst['max_abs']:.2g}"


def _changes(stats: dict[str, int | float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {format_number(v)}" for k, v in stats.items() if v) or "-"


_VERDICT = {True: "pass", False: "FAIL", None: "info"}
_SHOWN = (("cosine", "cos {:.5f}"), ("fidelity_cosine", "cos {:.5f}"), ("top1", "top1 {:.4f}"),
          ("iou", "IoU {:.4f}"), ("fidelity_top1", "top1 {:.4f}"), ("original_stability_cosine", "orig-stab {:.4f}"),
          ("accuracy_original", "acc {:.4f}"), ("accuracy_optimized", "→ {:.4f}"), ("drift_max_abs", "drift {:.2g}"),
          ("units_kept", "units {:.0f}"), ("original", "{:.4g}"), ("optimized", "→ {:.4g}"), ("ratio", "(×{:.3f})"))


def _figures(check: Check) -> str:
    """The headline figures of a check; a 95% interval follows cosine, top-1 and accuracy when present."""
    parts = []
    for key, form in _SHOWN:
        value = check.metrics.get(key)
        if value is None:
            continue
        text = form.format(value)
        base = key.removeprefix("accuracy_") if key.startswith("accuracy_") else key
        low, high = check.metrics.get(f"{base}_low"), check.metrics.get(f"{base}_high")
        if key == "accuracy_optimized":
            low, high = check.metrics.get("accuracy_low"), check.metrics.get("accuracy_high")
        if low is not None and high is not None:
            text += f" [{low:.4f}, {high:.4f}]"
        parts.append(text)
    return " ".join(parts) or "-"


def _per_fold(checks: Sequence[Check]) -> list[tuple[str, str, str, str]]:
    """Per-fold figures of one series (a pass, the given model) as one row: the range of cosine and top-1."""
    parts = []
    for key, label, digits in (("cosine", "cos", 5), ("top1", "top1", 4)):
        values = [v for v in (c.metrics.get(key) for c in checks) if v is not None]
        if values:
            parts.append(f"{label} {min(values):.{digits}f}–{max(values):.{digits}f}")
    details = sorted({c.detail for c in checks if c.detail})
    below = sum(c.detail.startswith("below the tolerance") for c in checks)
    detail = f"below the tolerance on {below} of {len(checks)}" if below else "; ".join(details)
    return [(f"{checks[0].group} ({len(checks)} folds)", "info", " ".join(parts) or "-", detail)]


def _rows(checks: Sequence[Check], collapse: bool) -> list[Row]:
    """Table rows (check, verdict; its figures and detail below); with ``collapse``, the informational per-fold
    checks of a series become one row."""
    rows: list[tuple[str, str, str, str]] = []
    series: dict[str, list[Check]] = {}
    for c in checks:
        if collapse and c.level is not None and c.passed is None:
            series.setdefault(c.group, []).append(c)
        else:
            rows.append((c.name, _VERDICT[c.passed], _figures(c), c.detail))
    collapsed = [row for group in series.values() for row in _per_fold(group)]
    return [((name, verdict), (figures if figures != "-" else "", detail)) for name, verdict, figures, detail
            in collapsed + rows]


def render_validation_table(report: ValidationReport, width: int | None = None) -> str:
    """One block per section: its verdict, then each check's verdict with its headline figures and detail below
    it (per-fold rows gathered into one per series; the JSON and HTML keep every fold), in at most ``width``
    columns."""
    width = width or DEFAULT_WIDTH
    out = []
    for section in report.sections:
        verdict = "SKIPPED" if section.skipped else _VERDICT[section.passed].upper()
        out += wrap(f"{section.title}: {verdict}" + (f" ({section.skipped})" if section.skipped else ""), width,
                    "  ")
        rows = _rows(section.checks, collapse=section.name == "folds")
        if rows:
            out += ["  " + line for line in _table(("check", "verdict"), rows, width - 2)]
        out += [line for n in section.notes for line in wrap(f"note: {n}", width, "    ", first="  ")]
        out.append("")
    out += wrap("verdict: " + ("can ship: every check within the tolerance" if report.passed
                               else "do not ship: " + ", ".join(s.title for s in report.sections
                                                                if s.passed is False) + " failed"), width, "  ")
    return "\n".join(out)


def render_table(report: Report, width: int | None = None) -> str:
    """The per-pass table in at most ``width`` columns: status, params, size, the worst output's cosine against
    the original and time on the row; why (unless applied), what changed and the worst output in full below it;
    then the model's totals and, with ``--goal``, its plans."""
    width = width or DEFAULT_WIDTH
    header = ("pass", "status", "params", "size", "cosine", "time")
    rows: list[Row] = []
    for p in report.passes:
        cosine = f"{p.worst['cosine']:.5f}" if p.worst and p.worst.get("cosine") is not None else "-"
        cells = (p.name, p.status, f"{format_count(p.params_before)} → {format_count(p.params_after)}",
                 f"{format_bytes(p.size_before)} → {format_bytes(p.size_after)}", cosine, f"{p.seconds:.2f}s")
        changes = _changes(p.stats)
        details = (p.reason if p.status != "applied" else "", "" if changes == "-" else changes,
                   f"worst vs original: {_worst(p.worst)}" if p.worst else "")
        rows.append((cells, details))
    out = _table(header, rows, width, right=(4, 5))
    before, after = report.input_summary, report.output_summary
    if before and after:
        out += wrap(f"model: params {format_count(before['params'])} → {format_count(after['params'])}, "
                    f"size {format_bytes(before['size_bytes'])} → {format_bytes(after['size_bytes'])}, "
                    f"nodes {before['nodes']} → {after['nodes']}", width, "  ")
    if report.goal:
        out += ["", *wrap(f"goal {report.goal['goal']}: {report.goal['why']}", width, "  "),
                *_goal_table(report.goal, width)]
    return "\n".join(out)


def plan_label(plan: str, prelude: str) -> str:
    """A ``--goal`` plan without the lossless passes every plan starts with (``prelude``, the first plan tried):
    what sets it apart."""
    return "lossless passes" if plan == prelude else plan.removeprefix(f"{prelude},")


def budget_share(used: float | None, missing: str = "-") -> str:
    """The share of the budget a plan's outputs use, as a percentage (``missing`` when the budget sets no bound it
    can be read from)."""
    return missing if used is None or not math.isfinite(used) else f"{100 * used:.0f}%"


def _goal_table(goal: dict[str, Any], width: int) -> list[str]:
    """One row per plan ``--goal`` tried, named by what it adds to the lossless passes (the first plan): status,
    latency and size against the original (``*`` on the frontier), worst cosine, share of the budget used, time;
    why below it."""
    candidates = goal["candidates"]
    prelude = candidates[0]["plan"] if candidates else ""
    rows: list[Row] = []
    for c in candidates:
        ratios = ["-" if c[key] is None else f"{c[key]:.3f}×" for key in ("latency_ratio", "size_ratio")]
        cells = (plan_label(c["plan"], prelude), c["status"], *ratios, "*" if c.get("frontier") else "",
                 "-" if c["cosine"] is None else f"{c['cosine']:.5f}", budget_share(c.get("budget_used")),
                 f"{c['seconds']:.1f}s")
        rows.append((cells, (c["reason"],)))
    lines = _table(("plan", "status", "latency", "size", "frontier", "cosine", "budget", "time"), rows, width,
                   right=(2, 3, 5, 6, 7))
    return [*lines, *wrap(f"lossless passes: {prelude}; every other plan starts with them", width, "  ")]


def render_fleet_table(report: FleetReport, width: int | None = None) -> str:
    """One row per model of a fleet, in manifest order: status, size and latency against the original, worst
    cosine and the task's time; why it failed (or was not timed) and the pipeline that made it below; then the
    counts, the wall time and how it ran."""
    width = width or DEFAULT_WIDTH
    rows: list[Row] = []
    for row in report.rows:
        figures = ["-" if v is None else f"{v:.3f}×" for v in (row.size_ratio, row.latency_ratio)]
        cells = (row.name, row.status, *figures, "-" if row.cosine is None else f"{row.cosine:.5f}",
                 f"{row.seconds:.1f}s")
        rows.append((cells, (row.reason, row.pipeline)))
    out = _table(("model", "status", "size", "latency", "cosine", "time"), rows, width, right=(2, 3, 4, 5))
    counts = report.to_dict()["counts"]
    summary = (", ".join(f"{n} {status}" for status, n in counts.items() if n) + f" of {len(report.rows)} models in "
               f"{report.wall_seconds:.1f} s: {report.workers} worker {report.executor}, {report.threads} onnxruntime "
               f"thread(s) each")
    return "\n".join([*out, *wrap(summary, width, "  "),
                      *(line for note in report.notes for line in wrap(f"note: {note}", width, "    ", first="  "))])


def bench_json(report: BenchReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


def machine_lines(machine: dict[str, Any]) -> list[str]:
    """The machine as ``graphopt bench`` prints it above its table: CPU, cores and features; runtimes and OS."""
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in machine.get("features", {}).items())
    runtimes = f"onnxruntime {machine.get('onnxruntime')}" + (
        f", openvino {machine['openvino']}" if machine.get("openvino") else "")
    return [f"{machine.get('cpu')} ({machine.get('arch')}), {machine.get('cores')} cores; {features}",
            f"{runtimes}; {machine.get('os')}; Python {machine.get('python')}; graphopt {machine.get('graphopt')}"]


def format_duration(ms: float | None) -> str:
    """A time given in milliseconds, in the unit that reads best: ``15.2 µs``, ``1.315 ms``, ``2.41 s``."""
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    return f"{format_number(ms)} ms" if ms < 1e4 else f"{ms / 1e3:.3g} s"


def _ms(timing: Timing | None) -> str:
    return "-" if timing is None else format_duration(timing.median_ms)


def format_threads(count: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{count} thread{'s' if count > 1 else ''}"


def _bench_details(report: BenchReport, row: BenchRow) -> tuple[str, ...]:
    """Below a row: the latency spread, throughput and memory; fidelity and what the pipeline did; an error."""
    figures = [f"{format_threads(t.threads)}: p90 {format_duration(t.p90_ms)}, p99 {format_duration(t.p99_ms)}"
               for t in row.timings if t.batch == 1 and t.p90_ms is not None and t.p99_ms is not None]
    batched = [t for t in row.timings if t.batch > 1 and t.throughput is not None]
    if batched:
        figures.append(f"throughput with {format_threads(batched[0].threads)}: "
                       + ", ".join(f"batch {t.batch} {format_number(round(t.throughput or 0))}/s" for t in batched))
    if row.peak_memory_bytes is not None:
        figures.append(f"peak memory {format_bytes(row.peak_memory_bytes)}")
    fidelity = ""
    if row.variant != "original" and row.cosine is not None:
        fidelity = f"vs the original: cos {row.cosine:.5f}" + (f", top-1 {row.top1:.4f}" if row.top1 is not None
                                                                 else "") + f"; {row.status}"
    elif row.variant != "original":
        fidelity = row.status
    return "; ".join(figures), fidelity, f"error: {row.error}" if row.error else ""


def render_bench_table(report: BenchReport, width: int | None = None) -> str:
    """The machine, then per runtime a row per model and variant: size, median latency at batch 1 per thread
    count, the ratio to the original (fewest threads, same call) and load time; p90/p99, throughput, memory and
    the fidelity of a pipeline's model below it."""
    width = width or DEFAULT_WIDTH
    threads = report.settings.get("threads") or [1]
    out = [line for text in machine_lines(report.machine) for line in wrap(text, width, "  ")]
    header = ("model", "size", *(format_threads(t) for t in threads), "ratio", "load")
    for runtime in dict.fromkeys(r.runtime for r in report.rows):
        rows: list[Row] = []
        for row in (r for r in report.rows if r.runtime == runtime):
            ratio = report.ratio(row, threads[0])
            cells = (row.label, format_bytes(row.size_bytes), *(_ms(row.timing(t)) for t in threads),
                     "-" if ratio is None else f"{ratio:.3f}×",
                     format_duration(row.load_ms))
            rows.append((cells, _bench_details(report, row)))
        out += ["", f"{runtime}:", *_table(header, rows, width, right=tuple(range(1, 4 + len(threads))))]
    notes = [(f"latency: median per run at batch 1, the models of a runtime interleaved in one call per thread "
             f"count ({report.settings.get('runs')} runs at most); ratio: to the original in the same runtime"),
             *report.notes]
    return "\n".join([*out, *(line for n in notes for line in wrap(f"note: {n}", width, "    ", first="  "))])
