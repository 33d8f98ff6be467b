"""Renderings of a ``Report``: JSON for machines, a plain-text table for terminals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from graphopt.report.model import Report

__all__ = ["format_bytes", "render_table", "to_json"]


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False, default=str) + "\n"


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


def _worst(worst: dict[str, Any] | None) -> str:
    if not worst:
        return "-"
    text = f"cos {worst['cosine']:.5f}"
    if worst.get("top1") is not None:
        text += f" top1 {worst['top1']:.3f}"
    return f"{text} max|Δ| {worst['max_abs']:.2g}"


def _changes(stats: dict[str, int | float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in stats.items() if v) or "-"


def render_table(report: Report) -> str:
    """The per-pass table: status, changes, params, size, worst output vs the original, time."""
    header = ("pass", "status", "changes", "params", "size", "worst vs original", "time")
    rows: list[Sequence[str]] = []
    for p in report.passes:
        status = p.status + (f" ({p.reason})" if p.reason and p.status != "applied" else "")
        rows.append((
            p.name,
            status if len(status) <= 60 else status[:57] + "...",
            _changes(p.stats),
            f"{_count(p.params_before)} → {_count(p.params_after)}",
            f"{format_bytes(p.size_before)} → {format_bytes(p.size_after)}",
            _worst(p.worst),
            f"{p.seconds:.2f}s",
        ))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    before, after = report.input_summary, report.output_summary
    if before and after:
        out.append(line)
        out.append(
            f"model: params {_count(before['params'])} → {_count(after['params'])}, "
            f"size {format_bytes(before['size_bytes'])} → {format_bytes(after['size_bytes'])}, "
            f"nodes {before['nodes']} → {after['nodes']}"
        )
    return "\n".join(out)
