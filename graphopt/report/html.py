"""Self-contained HTML pages of a run (``optimize_page``), a validation (``validation_page``), a benchmark
(``bench_page``) and a fleet (``fleet_page``).

A page is one file with inline CSS and inline SVG plots, so it can be attached to a review, archived next to the
model, or opened offline years later; it loads nothing from the network. Everything taken from the report (model,
tensor and pass names, notes, paths) is escaped, and a missing or non-finite figure is shown as "–".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import Any

from graphopt.report.model import (
    FAILED,
    OPTIMIZED,
    UP_TO_DATE,
    BenchReport,
    BenchRow,
    FleetReport,
    FleetRow,
    PassRecord,
    Report,
)
from graphopt.report.render import (
    budget_share,
    format_bytes,
    format_count,
    format_duration,
    format_number,
    format_threads,
    machine_lines,
    plan_label,
)
from graphopt.report.svg import (
    Bar,
    Column,
    Mark,
    Point,
    PointRow,
    Row,
    Series,
    column_chart,
    finite,
    hbar_chart,
    line_chart,
    point_plot,
    scatter_plot,
)
from graphopt.validation.model import Check, Section, ValidationReport

__all__ = ["bench_page", "fleet_page", "optimize_page", "validation_page"]

GREEN, AMBER, RED, GREY, BLUE, LIGHT = "#15803d", "#d97706", "#b91c1c", "#6b7280", "#2563eb", "#9ca3af"
STATUS_COLOURS = {"applied": GREEN, "narrowed": AMBER, "rolled back": RED, "declined": GREY, "skipped": GREY,
                  "failed": RED}
VERDICT_COLOURS = {True: GREEN, False: RED, None: GREY}
FLEET_COLOURS = {OPTIMIZED: GREEN, UP_TO_DATE: BLUE, FAILED: RED}
MAX_UNITS = 80

_CSS = """
:root { --ok: #15803d; --warn: #b45309; --bad: #b91c1c; --info: #6b7280; --line: #d1d5db; --zebra: #f6f7f9;
  --ink: #1f2937; --muted: #6b7280; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); background: #fff; margin: 0 auto; padding: 1.5rem; max-width: 1120px; line-height: 1.45; }
h1 { font-size: 1.5rem; margin: 0 0 .75rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; padding-bottom: .2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.25rem 0 .25rem; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .85em; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef0f3; font-weight: 600; }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
td:last-child { min-width: 10rem; }
td:first-child { overflow-wrap: anywhere; }
tbody tr:nth-child(even) { background: var(--zebra); }
.wrap { overflow-x: auto; }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: .25rem; font-size: .75rem; font-weight: 600;
  color: #fff; background: var(--info); white-space: nowrap; vertical-align: middle; }
.badge.pass, .badge.applied, .badge.optimized { background: var(--ok); }
.badge.up-to-date { background: #2563eb; }
.badge.narrowed { background: var(--warn); }
.badge.fail, .badge.rolled-back, .badge.failed { background: var(--bad); }
.banner { padding: .8rem 1rem; border-radius: .4rem; font-size: 1.25rem; font-weight: 700; color: #fff; }
.banner.pass { background: var(--ok); }
.banner.fail { background: var(--bad); }
.banner small { display: block; font-size: .85rem; font-weight: 400; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .5rem 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
svg.plot { display: block; max-width: 100%; height: auto; margin: .75rem 0; }
.plots { display: flex; flex-wrap: wrap; gap: 0 1.5rem; align-items: flex-start; }
.plots svg.plot { flex: 1 1 auto; max-width: 100%; }
.interval { display: block; color: var(--muted); font-size: .75rem; }
details { margin: .5rem 0; }
summary { cursor: pointer; color: #374151; }
.muted, .note { color: var(--muted); font-size: .85rem; }
.options { color: var(--muted); font-size: .75rem; overflow-wrap: anywhere; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .35rem 1.25rem; }
nav a { color: inherit; }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
.badge, .banner, svg.plot, th, tbody tr { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media print {
  body { max-width: none; padding: 0; }
  section, svg.plot, tr { break-inside: avoid; }
  nav { display: none; }
}
"""

_SCRIPT = 'document.body.dataset.rendered = String(document.querySelectorAll("svg.plot").length);'


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: Any) -> str:
    number = finite(value)
    if number is None:
        return "–"
    return f"{number:.6g}" if number == 0 or abs(number) >= 1e-4 else f"{number:.2e}"  # 8.11e-06, not 8.10623e-06


def _text(value: Any) -> str:
    """A setting or statistic as a reader writes it: ``yes``/``no``, a list joined by commas, a number in the
    tables' format (``format_number``), "–" for nothing; never a Python repr such as ``('CPUExecutionProvider',)``."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "–"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _count(n: Any) -> str:
    return format_count(n) if isinstance(n, int) and not isinstance(n, bool) else "–"


def _bytes(n: Any) -> str:
    number = finite(n)
    return "–" if number is None else format_bytes(int(number))


def _change(before: Any, after: Any) -> str:
    """``after`` relative to ``before`` as a signed percentage, or "" when it cannot be computed."""
    a, b = finite(before), finite(after)
    return "" if a is None or b is None or a == 0 else f" ({(b - a) / a:+.1%})"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {_slug(kind)}">{_e(text)}</span>'


def _verdict(passed: bool | None) -> str:
    return _badge(*{True: ("PASS", "pass"), False: ("FAIL", "fail"), None: ("INFO", "info")}[passed])


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{c}</{tag}>' for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    head = cells("th", [_e(h) for h in header])
    return f'<div class="wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _facts(items: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _items(values: Iterable[object], cls: str = "") -> str:
    attribute = f' class="{cls}"' if cls else ""
    return f"<ul{attribute}>" + "".join(f"<li>{_e(v)}</li>" for v in values) + "</ul>"


def _plots(svgs: Sequence[str]) -> str:
    return f'<div class="plots">{"".join(svgs)}</div>' if svgs else ""


def _tolerance_text(tolerance: dict[str, Any]) -> str:
    shown = [f"{k.replace('_', ' ')} {_text(v)}" for k, v in tolerance.items() if v is not None and k != "per_output"]
    if tolerance.get("per_output"):
        shown.append("per output: " + _text(tolerance["per_output"]))
    return ", ".join(shown) or "–"


def _page(title: str, body: Sequence[str], version: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<footer>graphopt {_e(version)}: a self-contained page; plots are inline SVG.</footer>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


# --- graphopt optimize -------------------------------------------------------------------------------------------


def optimize_page(report: Report) -> str:
    """The page of one ``graphopt optimize`` run: what went in and out, then each pass as table, bars and units."""
    name = report.input_path or "model"
    body = [f"<h1>graphopt optimize: <code>{_e(name)}</code></h1>", _run_facts(report),
            *(_goal_section(report.goal) if report.goal else []),
            "<h2>Passes</h2>", _pass_table(report) if report.passes else '<p class="note">no pass ran</p>']
    if report.passes:
        body.append(_plots([_timeline(report.passes), _size_bars(report.passes)]))
    for record in report.passes:
        if record.units:
            body.append(_units(record))
    body.append(_pass_details(report.passes))
    return _page(f"graphopt optimize: {name}", body, report.graphopt_version)


def _goal_section(goal: dict[str, Any]) -> list[str]:
    """``--goal``'s plans: the verdict, latency against size with the frontier (when the plans were timed; the
    plans on it are labelled, the others named on hover), and a row per plan."""
    candidates = goal["candidates"]
    out = [f"<h2>Goal: {_e(goal['goal'])}</h2>", f'<p>{_e(goal["why"])}</p>']
    timed = [c for c in candidates if finite(c["latency_ratio"]) is not None and finite(c["size_ratio"]) is not None]
    if timed:
        def colour(c: dict[str, Any]) -> str:
            return GREEN if c["plan"] == goal["winner"] else BLUE if c.get("frontier") else LIGHT

        points = [Point(plan_label(c["plan"], candidates[0]["plan"]), c["latency_ratio"], c["size_ratio"], colour(c),
                        f"{c['plan']}: latency {c['latency_ratio']:.3f}×, size {c['size_ratio']:.3f}×",
                        ringed=c["plan"] == goal["winner"], labelled=bool(c.get("frontier")))
                  for c in timed]
        edge = [(c["latency_ratio"], c["size_ratio"]) for c in timed if c.get("frontier")]
        out.append(_plots([scatter_plot(points, title="Plans tried: latency and size against the original",
                                        x_label="latency (× the original's, single thread, batch 1)",
                                        y_label="size (× the original's)", frontier=edge, reference=(1.0, 1.0),
                                        legend=[("chosen", GREEN), ("on the frontier", BLUE), ("dominated", LIGHT)])]))
    rows = [[_e(c["plan"]), _badge(c["status"], "applied" if c["status"] == "verified" else "skipped"),
             _e(_ratio(c["latency_ratio"])), _e(_ratio(c["size_ratio"])), "yes" if c.get("frontier") else "",
             _e("–" if finite(c["cosine"]) is None else f"{c['cosine']:.5f}"),
             _e(budget_share(finite(c.get("budget_used")), "–")), _e(f"{c['seconds']:.1f} s"),
             _e(c["reason"] or "–")] for c in candidates]
    out.append(_table(("plan", "status", "latency", "size", "frontier", "worst cosine", "budget used", "time", "why"),
                      rows, numeric=(2, 3, 5, 6, 7)))
    return out


def _ratio(value: Any) -> str:
    return "–" if finite(value) is None else f"{value:.3f}×"


def _run_facts(report: Report) -> str:
    data, before, after = report.data, report.input_summary, report.output_summary
    samples = f"{data.get('samples', '–')} samples"
    if "calibration_samples" in data or "verification_samples" in data:
        samples += (f" ({data.get('calibration_samples', 0)} calibration, "
                    f"{data.get('verification_samples', '–')} verification)")
    if data.get("source"):
        samples += f" from {data['source']}"
    if data.get("synthetic"):
        samples += " (synthetic: random inputs)"
    kept = [p.name for p in report.passes if p.status in ("applied", "narrowed")]
    facts = [
        ("input", report.input_path or "–"),
        ("output", report.output_path or "–"),
        ("data", samples),
        ("tolerance", _tolerance_text(report.tolerance)),
        ("params", f"{_count(before.get('params'))} → {_count(after.get('params'))}"
                   + _change(before.get("params"), after.get("params"))),
        ("size", f"{_bytes(before.get('size_bytes'))} → {_bytes(after.get('size_bytes'))}"
                 + _change(before.get("size_bytes"), after.get("size_bytes"))),
        ("nodes", f"{before.get('nodes', '–')} → {after.get('nodes', '–')}"),
        ("passes kept", ", ".join(kept) or "none"),
    ]
    if report.runtime:
        facts.append(("runtime", "; ".join(f"{k.replace('_', ' ')} {_text(v)}" for k, v in report.runtime.items())))
    return _facts(facts)


def _worst(worst: dict[str, Any] | None) -> str:
    if not worst:
        return "–"
    parts = [f"{worst.get('output', '?')}: cos {_num(worst.get('cosine'))}"]
    if finite(worst.get("top1")) is not None:
        parts.append(f"top-1 {_num(worst.get('top1'))}")
    if finite(worst.get("iou")) is not None:
        parts.append(f"mask IoU {_num(worst.get('iou'))}")
    parts.append(f"max|Δ| {_num(worst.get('max_abs'))}")
    return " · ".join(parts)


def _pass_table(report: Report) -> str:
    rows = []
    for p in report.passes:
        options = ", ".join(f"{k}={v}" for k, v in p.options.items())
        changes = ", ".join(f"{k.replace('_', ' ')} {format_number(v)}" for k, v in p.stats.items()
                            if finite(v) is not None) or "–"
        rows.append([
            _e(p.name) + (f'<div class="options">{_e(options)}</div>' if options else ""),
            _badge(p.status, p.status),
            _e(changes),
            _e(f"{_count(p.params_before)} → {_count(p.params_after)}"),
            _e(f"{_bytes(p.size_before)} → {_bytes(p.size_after)}"),
            _e(_worst(p.worst)),
            _e(p.trials),
            _e(f"{p.seconds:.2f} s" if finite(p.seconds) is not None else "–"),
            _e(p.reason or "–"),
        ])
    header = ("pass", "status", "changes", "params", "size", "worst output vs original", "trials", "time", "reason")
    return _table(header, rows, numeric=(6, 7))


def _status_legend(passes: Sequence[PassRecord]) -> list[tuple[str, str]]:
    seen = dict.fromkeys(p.status for p in passes)
    return [(s, STATUS_COLOURS.get(s, GREY)) for s in seen]


def _timeline(passes: Sequence[PassRecord]) -> str:
    rows = [Row(p.name, (Bar(p.seconds, STATUS_COLOURS.get(p.status, GREY), f"{_num(p.seconds)} s",
                             f"{p.name}: {p.status}, {_num(p.seconds)} s"),)) for p in passes]
    return hbar_chart(rows, title="Time per pass (seconds), coloured by status", x_label="seconds",
                      legend=_status_legend(passes))


def _size_bars(passes: Sequence[PassRecord]) -> str:
    largest = max((max(p.size_before, p.size_after) for p in passes), default=0)
    unit, scale = next(((u, s) for u, s in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)) if largest >= s), ("B", 1))
    rows = [Row(p.name, (Bar(p.size_before / scale, LIGHT, _bytes(p.size_before), f"{p.name}: before {_bytes(p.size_before)}"),
                         Bar(p.size_after / scale, BLUE, _bytes(p.size_after), f"{p.name}: after {_bytes(p.size_after)}")))
            for p in passes]
    return hbar_chart(rows, title="Model size before and after each pass", x_label=f"size ({unit})",
                      legend=[("before", LIGHT), ("after", BLUE)])


def _units(record: PassRecord) -> str:
    """Each unit's sensitivity as a bar (kept and left-out units in two colours), then every unit as a table."""
    units = record.units
    shown = units[:MAX_UNITS]
    columns = []
    for unit in shown:
        name, kept = str(unit.get("name", "?")), bool(unit.get("applied"))
        tip = f"{name}: sensitivity {_num(unit.get('sensitivity'))}, {'kept' if kept else 'left out'}"
        if unit.get("reason"):
            tip += f" ({unit['reason']})"
        columns.append(Column(name, unit.get("sensitivity"), BLUE if kept else AMBER, tip))
    kept_count = sum(bool(u.get("applied")) for u in units)
    plot = column_chart(columns, title=f"{record.name}: sensitivity per unit ({kept_count} of {len(units)} kept)",
                        y_label="sensitivity", legend=[("kept", BLUE), ("left out", AMBER)])
    note = (f'<p class="note">Showing the first {MAX_UNITS} of {len(units)} units in model order; all are listed '
            "below.</p>" if len(units) > MAX_UNITS else "")
    rows = [[_e(u.get("name", "?")), _e("kept" if u.get("applied") else "left out"), _e(_num(u.get("sensitivity"))),
             _e(u.get("detail") or ""), _e(u.get("reason") or "")] for u in units]
    table = _table(("unit", "", "sensitivity", "detail", "reason left out"), rows, numeric=(2,))
    return (f"<h3>Units of <code>{_e(record.name)}</code> ({_e(record.status)})</h3>"
            '<p class="note">Sensitivity: how far the outputs move with this unit alone (or the pass\'s own estimate); '
            "larger is more damaging, – when the unit fails alone. Units are tried from the least damaging (per gain) "
            f"and kept while the budget holds.</p>{plot}{note}"
            + _details(f"All {len(units)} units of {record.name}", table))


def _pass_details(passes: Sequence[PassRecord]) -> str:
    parts = []
    for p in passes:
        if not p.skipped and not p.notes:
            continue
        body = ""
        if p.skipped:
            rows = [[_e(s.get("target", "")), _e(s.get("reason", ""))] for s in p.skipped]
            body += _table(("target", "reason"), rows)
        if p.notes:
            body += _items(p.notes, "notes")
        parts.append(_details(f"{p.name}: {len(p.skipped)} skipped targets, {len(p.notes)} notes", body))
    return "<h2>Skipped targets and notes</h2>" + "".join(parts) if parts else ""


# --- graphopt validate -------------------------------------------------------------------------------------------


def validation_page(report: ValidationReport) -> str:
    """The page of ``graphopt validate``: the verdict first, then each section's plot, checks and notes."""
    failed = [s.title for s in report.sections if s.passed is False]
    if report.passed:
        banner = ('<div class="banner pass">can ship<small>every judged check is within the tolerance</small>'
                  "</div>")
    else:
        banner = f'<div class="banner fail">do not ship<small>failed: {_e(", ".join(failed))}</small></div>'
    facts = [("original", report.original_path or "–"), ("optimised", report.optimized_path or "–"),
             *((f"data: {k.replace('_', ' ')}", _text(v)) for k, v in report.data.items()),
             ("tolerance", _tolerance_text(report.tolerance))]
    nav = "<nav><ul>" + "".join(
        f'<li><a href="#section-{_slug(s.name)}">{_e(s.title)}</a> {_section_badge(s)}</li>' for s in report.sections
    ) + "</ul></nav>"
    body = ["<h1>graphopt validate</h1>", banner, _facts(facts), nav if report.sections else ""]
    body += [_section(s, report.tolerance) for s in report.sections]
    if not report.sections:
        body.append('<p class="note">no section ran</p>')
    return _page(f"graphopt validate: {'can ship' if report.passed else 'do not ship'}", body,
                 report.graphopt_version)


def _section_badge(section: Section) -> str:
    return _badge("SKIPPED", "skipped") if section.skipped else _verdict(section.passed)


def _section(section: Section, tolerance: dict[str, Any]) -> str:
    head = (f'<section id="section-{_slug(section.name)}" data-section="{_e(section.name)}">'
            f"<h2>{_e(section.title)} {_section_badge(section)}</h2>")
    body = f'<p class="note">Skipped: {_e(section.skipped)}</p>' if section.skipped else ""
    if section.checks:
        plotter = _SECTION_PLOTS.get(section.name)
        body += _plots(plotter(section.checks, tolerance)) if plotter else ""
        body += _check_table(section)
    elif not section.skipped:
        body += '<p class="note">no checks</p>'
    if section.notes:
        body += _items(section.notes, "notes")
    return head + body + "</section>"


def _metric_text(check: Check, key: str, value: float | None) -> str:
    number = finite(value)
    if number is None:
        return "–"
    if key in ("original", "optimized") and check.name.endswith("_bytes"):
        return _bytes(number)
    return f"×{number:.3f}" if key == "ratio" else _num(number)


def _check_table(section: Section) -> str:
    """One row per check. A figure with an interval (``cosine`` with ``cosine_low`` and ``cosine_high``; accuracy's
    goes with the optimised model's) shows it under the figure in the same cell, so the table fits the page
    instead of scrolling."""
    keys = list(dict.fromkeys(k for c in section.checks for k in c.metrics))
    intervals = {}
    for key in keys:
        base = key.removesuffix("_low")
        if key.endswith("_low") and f"{base}_high" in keys:
            owner = base if base in keys else f"{base}_optimized"
            if owner in keys:
                intervals[owner] = (key, f"{base}_high")
    hidden = {k for pair in intervals.values() for k in pair}
    shown = [k for k in keys if k not in hidden]
    grouped = any(c.group for c in section.checks)
    levelled = any(c.level is not None for c in section.checks)
    header = ["check", "verdict", *(["group"] if grouped else []), *(["level"] if levelled else []),
              *(k.replace("_", " ") + (" [interval]" if k in intervals else "") for k in shown), "detail"]
    rows = []
    for c in section.checks:
        row = [_e(c.name), _verdict(c.passed)]
        row += [_e(c.group)] if grouped else []
        row += [_e(_num(c.level))] if levelled else []
        for k in shown:
            cell = _e(_metric_text(c, k, c.metrics.get(k)))
            low, high = (finite(c.metrics.get(b)) for b in intervals.get(k, ("", "")))
            if low is not None and high is not None:
                cell += f'<span class="interval">[{_e(_num(low))}, {_e(_num(high))}]</span>'
            row.append(cell)
        rows.append([*row, _e(c.detail)])
    start = 2 + grouped + levelled
    return _table(header, rows, numeric=tuple(range(start - levelled, start + len(shown))))


def _tol(tolerance: dict[str, Any], key: str) -> float | None:
    return finite(tolerance.get(key))


def _interval_rows(checks: Sequence[Check], key: str) -> list[PointRow]:
    rows = []
    for c in checks:
        value = finite(c.metrics.get(key))
        if value is None:
            continue
        tip = f"{c.name}: {key} {value:.6g}"
        rows.append(PointRow(c.name, (Mark(value, VERDICT_COLOURS[c.passed], tip),),
                             c.metrics.get(f"{key}_low"), c.metrics.get(f"{key}_high")))
    return rows


def _held_out_plots(checks: Sequence[Check], tolerance: dict[str, Any]) -> list[str]:
    """Cosine and top-1 per output with their 95% intervals, and accuracy of both models when labels were given."""
    plots = []
    for key, label in (("cosine", "cosine"), ("top1", "top-1 agreement"), ("iou", "mask IoU")):
        rows = _interval_rows([c for c in checks if c.name not in ("accuracy", "metric")], key)
        if rows:
            plots.append(point_plot(rows, title=f"Held-out {label} vs the original (95% interval)",
                                    threshold=_tol(tolerance, key), x_label=label))
    for c in checks:
        optimized = finite(c.metrics.get("accuracy_optimized"))
        if optimized is None:
            continue
        rows = [PointRow("original", (Mark(c.metrics.get("accuracy_original"), GREY),)),
                PointRow("optimised", (Mark(optimized, VERDICT_COLOURS[c.passed]),),
                         c.metrics.get("accuracy_low"), c.metrics.get("accuracy_high"))]
        plots.append(point_plot(rows, title="Accuracy against the labels (95% interval)", x_label="accuracy"))
    return plots


def _groups(checks: Iterable[Check]) -> dict[str, list[Check]]:
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.group or c.name, []).append(c)
    return groups


def _fold_plots(checks: Sequence[Check], tolerance: dict[str, Any]) -> list[str]:
    """Per group (the given model, each refitted pass), one dot per fold: the spread across folds."""
    plots = []
    for key, label in (("cosine", "cosine"), ("top1", "top-1 agreement")):
        rows = []
        for group, members in _groups(c for c in checks if c.level is not None).items():
            marks = tuple(Mark(c.metrics.get(key), VERDICT_COLOURS[c.passed],
                               f"{c.name}: {label} {_num(c.metrics.get(key))}") for c in members)
            if any(finite(m.value) is not None for m in marks):
                rows.append(PointRow(group, marks))
        if rows:
            plots.append(point_plot(rows, title=f"{label.capitalize()} per fold (worst output)",
                                    threshold=_tol(tolerance, key), x_label=label,
                                    legend=[("pass", GREEN), ("fail", RED), ("not judged", GREY)]))
    return plots


_SHIFT_AXES = {"noise": "SNR (dB)", "brightness": "offset (σ)", "contrast": "contrast factor", "scale": "scale factor",
               "token_dropout": "drop rate", "truncation": "kept fraction"}
_SHIFT_SERIES = (("fidelity_cosine", "fidelity", BLUE, False), ("original_stability_cosine", "original stability",
                 GREY, True), ("optimized_stability_cosine", "optimised stability", AMBER, True))


def _shift_plots(checks: Sequence[Check], tolerance: dict[str, Any]) -> list[str]:
    """One small chart per shift kind: cosine along the shift's level; failing fidelity points ringed in red."""
    plots = []
    for group, members in _groups(checks).items():
        xs = [level if (level := finite(c.level)) is not None else float(i) for i, c in enumerate(members)]
        series = [Series(name, tuple((x, c.metrics.get(key)) for x, c in zip(xs, members, strict=True)),
                         colour, dashed, tuple(c.passed is False and key == "fidelity_cosine" for c in members))
                  for key, name, colour, dashed in _SHIFT_SERIES]
        plots.append(line_chart(series, title=f"{group}: cosine along the shift", threshold=_tol(tolerance, "cosine"),
                                x_label=_SHIFT_AXES.get(group, "level"), y_label="cosine"))
    return plots


def _environment_plots(checks: Sequence[Check], tolerance: dict[str, Any]) -> list[str]:
    rows = [Row(c.name, (Bar(c.metrics.get("drift_max_abs"), VERDICT_COLOURS[c.passed],
                             _num(c.metrics.get("drift_max_abs"))),)) for c in checks]
    return [hbar_chart(rows, title="Drift from the optimised model on CPU with 1 thread (max |Δ|, log scale)",
                       log=True, x_label="max |Δ| (log)", legend=[("pass", GREEN), ("fail", RED), ("info", GREY)])]


def _performance_plots(checks: Sequence[Check], tolerance: dict[str, Any]) -> list[str]:
    rows = []
    for c in checks:
        original, ratio = finite(c.metrics.get("original")), finite(c.metrics.get("ratio"))
        rows.append(Row(c.name, (Bar(1.0 if original is not None else None, LIGHT, "1", f"{c.name}: original"),
                                 Bar(ratio, BLUE, "–" if ratio is None else f"×{ratio:.3f}", f"{c.name}: optimised "
                                     f"{_metric_text(c, 'optimized', c.metrics.get('optimized'))}"))))
    return [hbar_chart(rows, title="Optimised relative to the original (original = 1; lower is better)",
                       x_label="ratio to the original", legend=[("original", LIGHT), ("optimised", BLUE)])]


_SECTION_PLOTS: dict[str, Callable[[Sequence[Check], dict[str, Any]], list[str]]] = {
    "held_out": _held_out_plots,
    "folds": _fold_plots,
    "shifts": _shift_plots,
    "environments": _environment_plots,
    "performance": _performance_plots,
}


# --- graphopt bench ----------------------------------------------------------------------------------------------


def bench_page(report: BenchReport) -> str:
    """The page of ``graphopt bench``: the machine, bars of latency and throughput per runtime, and every figure
    in a table."""
    threads = report.settings.get("threads") or [1]
    facts = [("machine", line) for line in machine_lines(report.machine)]
    facts += [("settings", (f"threads {_text(threads)}; batch sizes {_text(report.settings.get('batch_sizes'))}; "
                           f"at most {report.settings.get('runs')} runs per call; data {report.settings.get('data')}"))]
    body = ["<h1>graphopt bench</h1>", _facts(facts)]
    for runtime in dict.fromkeys(r.runtime for r in report.rows):
        rows = [r for r in report.rows if r.runtime == runtime]
        body.append(f"<h2>{_e(runtime)}</h2>")
        body.append(_plots([_latency_bars(rows, threads), *_throughput_bars(rows)]))
        body.append(_bench_table(report, rows, threads))
    if report.notes:
        body.append(_items(report.notes, "notes"))
    return _page("graphopt bench", body, report.graphopt_version)


def _latency_bars(rows: Sequence[BenchRow], threads: Sequence[int]) -> str:
    colours = [BLUE, AMBER, GREEN, GREY]
    medians = [t.median_ms for r in rows for t in r.timings if t.median_ms is not None]
    micro = bool(medians) and max(medians) < 1.0  # a sub-millisecond model reads in µs
    scale, unit = (1e3, "microseconds") if micro else (1.0, "milliseconds")
    bars = [Row(r.label, tuple(
        Bar(t.median_ms * scale if (t := r.timing(count)) and t.median_ms is not None else None,
            colours[i % len(colours)], "–" if t is None else format_duration(t.median_ms),
            f"{r.label}, {count} thread(s): median {format_duration(t.median_ms if t else None)}")
        for i, count in enumerate(threads))) for r in rows]
    return hbar_chart(bars, title="Latency at batch 1: median per run (lower is better)", x_label=unit,
                      legend=[(format_threads(count), colours[i % len(colours)])
                              for i, count in enumerate(threads)])


def _throughput_bars(rows: Sequence[BenchRow]) -> list[str]:
    batches = sorted({t.batch for r in rows for t in r.timings if t.batch > 1})
    if not batches:
        return []
    most = max(t.threads for r in rows for t in r.timings)
    colours = [GREEN, BLUE, AMBER, GREY]
    bars = [Row(r.label, tuple(
        Bar(t.throughput if (t := r.timing(most, b)) else None, colours[i % len(colours)],
            "–" if t is None or t.throughput is None else f"{format_number(round(t.throughput))}/s")
        for i, b in enumerate(batches))) for r in rows]
    return [hbar_chart(bars, title=f"Throughput with {format_threads(most)}: samples per second "
                                   "(higher is better)", x_label="samples per second",
                       legend=[(f"batch {b}", colours[i % len(colours)]) for i, b in enumerate(batches)])]


def _bench_table(report: BenchReport, rows: Sequence[BenchRow], threads: Sequence[int]) -> str:
    """Every figure of ``rows``: the median per thread count with p90 / p99 under it, the ratio, throughput per
    batch, load, memory, and what a pipeline kept with its fidelity (or why a figure is missing)."""
    batches = sorted({t.batch for r in rows for t in r.timings if t.batch > 1})
    header = ["model", "size", *(f"{format_threads(n)} (p90 / p99)" for n in threads), "ratio",
              *(f"batch {b} (samples/s)" for b in batches), "load", "peak memory", "pipeline, vs the original"]
    cells = []
    for r in rows:
        spread = []
        for n in threads:
            t = r.timing(n)
            spread.append("–" if t is None or t.median_ms is None else
                          _e(format_duration(t.median_ms)) + '<span class="interval">'
                          + _e(f"{format_duration(t.p90_ms)} / {format_duration(t.p99_ms)}") + "</span>")
        throughput = []
        for b in batches:
            t = next((t for t in r.timings if t.batch == b), None)
            throughput.append("–" if t is None or t.throughput is None else format_number(round(t.throughput)))
        fidelity = "" if r.variant == "original" or r.cosine is None else (
            f"cos {r.cosine:.5f}" + (f", top-1 {r.top1:.4f}" if r.top1 is not None else "") + "; ")
        said = "; ".join(x for x in (r.status if r.variant != "original" else "", r.error) if x)
        cells.append([_e(r.label), _e(_bytes(r.size_bytes)), *spread, _e(_ratio(report.ratio(r, threads[0]))),
                      *(_e(x) for x in throughput), _e("–" if r.load_ms is None else format_duration(r.load_ms)),
                      _e(_bytes(r.peak_memory_bytes)), _e(fidelity + said) or "–"])
    return _table(header, cells, numeric=tuple(range(1, 5 + len(threads) + len(batches))))


# --- graphopt fleet ----------------------------------------------------------------------------------------------


def fleet_page(report: FleetReport) -> str:
    """The page of ``graphopt fleet``: how it ran and on what, a row per model in manifest order, then each model's
    size and latency against its original and its task's time, so the model that took the wall time stands out."""
    body = [f"<h1>graphopt fleet: <code>{_e(report.manifest)}</code></h1>", _fleet_facts(report), "<h2>Models</h2>"]
    if report.rows:
        rows = report.rows
        body.append(_fleet_table(rows))
        body.append(_plots([
            _ratio_bars(rows, [r.size_ratio for r in rows], "Size against the original (original = 1; lower is "
                        "better)", ("smaller", "larger")),
            _ratio_bars(rows, [r.latency_ratio for r in rows], "Latency against the original (single thread, "
                        "batch 1; original = 1; lower is better)", ("faster", "slower")),
            _task_bars(report)]))
    else:
        body.append('<p class="note">no model ran</p>')
    return _page(f"graphopt fleet: {report.manifest}", body, str(report.machine.get("graphopt") or "–"))


def _seconds(value: Any) -> str:
    number = finite(value)
    return "–" if number is None else f"{number:.1f} s"


def _fleet_facts(report: FleetReport) -> str:
    """Where the fleet read and wrote, how it ran (executor, workers, threads), how long, its counts per status, the
    machine (as ``graphopt bench`` shows it) and the notes (how the latency was timed)."""
    counts = report.to_dict()["counts"]
    tally = ", ".join(f"{n} {status}" for status, n in counts.items()) + f" ({len(report.rows)} models)"
    facts = [("manifest", report.manifest), ("output folder", report.output_dir), ("executor", report.executor),
             ("workers", str(report.workers)), ("onnxruntime threads per task", str(report.threads)),
             ("wall time", _seconds(report.wall_seconds)), ("models", tally)]
    if report.machine:
        facts += [("machine", line) for line in machine_lines(dict(report.machine))]
    return _facts(facts + [("note", note) for note in report.notes])


def _fleet_table(rows: Sequence[FleetRow]) -> str:
    """One row per model: status, size and latency against the original, worst cosine, the task's time, the
    pipeline that made the output, and why it failed (or was not timed)."""
    cells = [[_e(r.name), _badge(r.status, r.status), _e(_ratio(r.size_ratio)), _e(_ratio(r.latency_ratio)),
              _e("–" if finite(r.cosine) is None else f"{r.cosine:.5f}"), _e(_seconds(r.seconds)),
              f'<span class="options">{_e(r.pipeline)}</span>' if r.pipeline else "–", _e(r.reason or "–")]
             for r in rows]
    header = ("model", "status", "size", "latency", "worst cosine", "time", "pipeline", "reason")
    return _table(header, cells, numeric=(2, 3, 4, 5))


def _ratio_bars(rows: Sequence[FleetRow], ratios: Sequence[float | None], title: str, words: tuple[str, str]) -> str:
    """Each model's ``ratios`` to its original under a light bar at 1 (the original): green below it, red above
    (``words`` name the two sides); "–" for a model without the figure."""
    colours = {words[0]: GREEN, "unchanged": GREY, words[1]: RED}
    bars, seen = [], set()
    for row, value in zip(rows, ratios, strict=True):
        ratio = finite(value)
        if ratio is None:
            bars.append(Row(row.name, (Bar(None, LIGHT),)))
            continue
        word = words[0] if ratio < 1 else words[1] if ratio > 1 else "unchanged"
        seen.add(word)
        bars.append(Row(row.name, (Bar(1.0, LIGHT, "1", f"{row.name}: the original"),
                                   Bar(ratio, colours[word], _ratio(ratio), f"{row.name}: {_ratio(ratio)} ({word})"))))
    legend = [("original", LIGHT), *((w, c) for w, c in colours.items() if w in seen)]
    return hbar_chart(bars, title=title, x_label="× the original's", legend=legend)


def _task_bars(report: FleetReport) -> str:
    """Each model's task time, coloured by status (tasks on several workers overlap, so they add up to more than
    the wall time)."""
    rows = [Row(r.name, (Bar(r.seconds, FLEET_COLOURS.get(r.status, GREY), _seconds(r.seconds),
                             f"{r.name}: {r.status}, {_seconds(r.seconds)}"),)) for r in report.rows]
    statuses = dict.fromkeys(r.status for r in report.rows)
    return hbar_chart(rows, title=f"Time per model's task, coloured by status (up to {report.workers} at once; the "
                                  f"fleet took {_seconds(report.wall_seconds)})", x_label="seconds",
                      legend=[(s, FLEET_COLOURS.get(s, GREY)) for s in statuses])
