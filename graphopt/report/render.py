"""Renderings of a ``Report`` and a ``ValidationReport``: JSON for machines, plain-text tables for terminals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from graphopt.report.model import Report
from graphopt.validation.model import Check, ValidationReport

__all__ = ["format_bytes", "render_table", "render_validation_table", "to_json", "validation_json"]


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


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 10_000 else str(n)


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
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in stats.items() if v) or "-"


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    return out + ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


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


def _rows(checks: Sequence[Check], collapse: bool) -> list[tuple[str, str, str, str]]:
    """Table rows; with ``collapse``, the informational per-fold checks of a series become one row."""
    rows: list[tuple[str, str, str, str]] = []
    series: dict[str, list[Check]] = {}
    for c in checks:
        if collapse and c.level is not None and c.passed is None:
            series.setdefault(c.group, []).append(c)
        else:
            rows.append((c.name, _VERDICT[c.passed], _figures(c), c.detail))
    collapsed = [row for group in series.values() for row in _per_fold(group)]
    return [(n[:48], v, f, d if len(d) <= 70 else d[:67] + "...") for n, v, f, d in collapsed + rows]


def render_validation_table(report: ValidationReport) -> str:
    """One block per section: its verdict, then each check's verdict, headline figures and detail (per-fold rows
    gathered into one per series; the JSON and HTML keep every fold)."""
    out = []
    for section in report.sections:
        verdict = "SKIPPED" if section.skipped else _VERDICT[section.passed].upper()
        out.append(f"{section.title}: {verdict}" + (f" ({section.skipped})" if section.skipped else ""))
        rows = _rows(section.checks, collapse=section.name == "folds")
        if rows:
            out += ["  " + line for line in _columns(("check", "verdict", "figures", "detail"), rows)]
        out += [f"  note: {n}" for n in section.notes]
        out.append("")
    out.append("verdict: " + ("can ship: every check within the tolerance" if report.passed
                              else "do not ship: " + ", ".join(s.title for s in report.sections if s.passed is False)
                              + " failed"))
    return "\n".join(out)


def render_table(report: Report) -> str:
    """The per-pass table: status, changes, params, size, worst output vs the original, time."""
    header = ("pass", "status", "changes", "params", "size", "worst vs original", "time")
    rows: list[Sequence[str]] = []
    for p in report.passes:
        status = p.status + (f" ({p.reason})" if p.reason and p.status != "applied" else "")
        rows.append((
            p.name,
            _clip(status),
            _changes(p.stats),
            f"{_count(p.params_before)} → {_count(p.params_after)}",
            f"{format_bytes(p.size_before)} → {format_bytes(p.size_after)}",
            _worst(p.worst),
            f"{p.seconds:.2f}s",
        ))
    out = _columns(header, rows)
    line = out[1]
    before, after = report.input_summary, report.output_summary
    if before and after:
        out.append(line)
        out.append(
            f"model: params {_count(before['params'])} → {_count(after['params'])}, "
            f"size {format_bytes(before['size_bytes'])} → {format_bytes(after['size_bytes'])}, "
            f"nodes {before['nodes']} → {after['nodes']}"
        )
    if report.goal:
        out += ["", f"goal {report.goal['goal']}: {report.goal['why']}", *_goal_table(report.goal)]
    return "\n".join(out)


def _clip(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters for a table cell, with "..." where it was cut."""
    return text if len(text) <= width else text[:width - 3] + "..."


def _goal_table(goal: dict[str, Any]) -> list[str]:
    """One row per plan ``--goal`` tried: status, latency and size against the original (``*`` on the frontier),
    worst cosine, time, why."""
    rows = []
    for c in goal["candidates"]:
        ratios = ["-" if c[key] is None else f"{c[key]:.3f}×" for key in ("latency_ratio", "size_ratio")]
        rows.append((c["plan"], c["status"], *ratios, "*" if c.get("frontier") else "",
                     "-" if c["cosine"] is None else f"cos {c['cosine']:.5f}", f"{c['seconds']:.1f}s",
                     _clip(c["reason"])))
    return _columns(("plan", "status", "latency", "size", "frontier", "worst vs original", "time", "why"), rows)
