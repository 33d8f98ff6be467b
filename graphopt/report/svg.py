"""A tiny chart kit for the HTML report: pure functions from figures to inline SVG strings.

The page must open offline, print, and pass through e-mail, so no charting library or script draws it: every chart
is a fixed-size ``<svg class="plot">`` with a ``viewBox`` (it scales with the page width), a ``<title>`` and an
``aria-label``. All text is escaped here, so callers may pass names straight from a model. ``None``, NaN and
infinite figures are drawn as a "–" (or a "0" marker on a log axis) instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = [
    "Bar",
    "Column",
    "Mark",
    "Point",
    "PointRow",
    "Row",
    "Scale",
    "Series",
    "clip",
    "column_chart",
    "finite",
    "hbar_chart",
    "line_chart",
    "log_ticks",
    "nice_ticks",
    "point_plot",
    "scatter_plot",
    "tick_text",
    "wants_log",
]

FONT = 12
CHAR = 6.6
MUTED = "#6b7280"
GRID = "#e5e7eb"
INK = "#1f2937"
THRESHOLD = "#b91c1c"
WIDTH = 1040
"""Drawn width of a full-row chart: the page's content width (``max-width`` 1120 px less padding), so a chart shows
at about the size it is drawn and its text at the page's size."""


def finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters by an ellipsis in the middle: tensor names differ at both ends
    (``/encoder/layer.3/…/MatMul``), and a label must not push a chart off the page."""
    if len(text) <= limit:
        return text
    head = max((limit - 1) * 2 // 5, 1)
    return text[:head] + "…" + text[len(text) - max(limit - 1 - head, 1):]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps of 1, 2 or 5 × 10ⁿ) spanning ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    values = [(first + i) * step for i in range(int((hi - lo) / step + 1e-9) + 2)]
    return [round(v, 12) for v in values if lo - 1e-9 * step <= v <= hi + 1e-9 * step]


def log_ticks(lo: float, hi: float) -> list[float]:
    """The powers of ten in ``[lo, hi]`` (every other one when there are many), both bounds positive."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    powers = list(range(first, last + 1)) or [round(math.log10(lo))]
    stride = max(1, math.ceil(len(powers) / 7))
    return [10.0**p for p in powers[::stride]]


def tick_text(value: float, step: float | None = None) -> str:
    """A tick label with as many decimals as the tick spacing needs (``1e-06`` style for tiny or huge values)."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    if not step:
        return f"{value:g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{min(decimals, 6)}f}"


@dataclass(frozen=True)
class Scale:
    """Maps data values in ``[lo, hi]`` to pixels in ``[start, end]``, linearly or on a log axis."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        lo, hi = (math.log10(self.lo), math.log10(self.hi)) if self.log else (self.lo, self.hi)
        v = math.log10(max(value, self.lo)) if self.log else value
        share = 0.5 if hi == lo else (v - lo) / (hi - lo)
        return self.start + min(max(share, 0.0), 1.0) * (self.end - self.start)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            return [(t, tick_text(t)) for t in log_ticks(self.lo, self.hi)]
        values = nice_ticks(self.lo, self.hi)
        step = values[1] - values[0] if len(values) > 1 else None
        return [(t, tick_text(t, step)) for t in values]


def _domain(values: Sequence[float], log: bool, floor_zero: bool) -> tuple[float, float]:
    """The axis range of ``values``: from 0 for linear bars, whole powers of ten for log axes."""
    if log:
        positive = [v for v in values if v > 0] or [1.0]
        return 10 ** math.floor(math.log10(min(positive))), 10 ** math.ceil(math.log10(max(positive)) + 1e-12)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if floor_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        lo, hi = (lo - 0.5, hi + 0.5) if lo else (0.0, 1.0)
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo)
    return (lo if floor_zero and lo == 0 else math.floor(lo / step) * step), math.ceil(hi / step - 1e-9) * step


def _label_width(labels: Sequence[str], limit: int) -> float:
    """Room for the longest label (as clipped) left of the axis."""
    return 18 + 7.0 * min(max((len(label) for label in labels), default=4), limit)


def wants_log(values: Sequence[float | None], ratio: float = 100.0) -> bool:
    """A log axis pays off when the positive values span more than ``ratio``."""
    positive = [v for v in (finite(x) for x in values) if v is not None and v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > ratio


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = FONT, fill: str = INK,
          tip: str = "") -> str:
    hover = f"<title>{escape(tip)}</title>" if tip else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">'
            f"{escape(text)}{hover}</text>")


TITLE_HEIGHT = 24
"""Room above a chart for its title, drawn in the chart so that it travels with it (and prints with it)."""


def _frame(width: float, height: float, title: str, body: Sequence[str]) -> str:
    """The chart's ``body`` (drawn for a ``width`` × ``height`` box) under its visible title."""
    label = escape(title)
    total = height + TITLE_HEIGHT
    heading = (f'<text x="4" y="16" font-size="{FONT + 1}" font-weight="600" fill="{INK}">'
               f"{escape(clip(title, int(width / 7.5)))}</text>")
    return (f'<svg class="plot" role="img" aria-label="{label}" viewBox="0 0 {width:.0f} {total:.0f}" '
            f'width="{width:.0f}" height="{total:.0f}" preserveAspectRatio="xMinYMin meet" '
            f'font-family="system-ui, sans-serif"><title>{label}</title>{heading}'
            f'<g transform="translate(0,{TITLE_HEIGHT})">' + "".join(body) + "</g></svg>")


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for label, colour in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{escape(colour)}"/>')
        out.append(_text(x + 14, y, label, size=11, fill=MUTED))
        x += 24 + CHAR * len(label)
    return out


def _x_axis(scale: Scale, top: float, bottom: float, label: str) -> list[str]:
    out = []
    for value, text in scale.ticks():
        x = scale(value)
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{GRID}"/>')
        out.append(_text(x, bottom + 14, text, anchor="middle", size=10, fill=MUTED))
    if label:
        out.append(_text((scale.start + scale.end) / 2, bottom + 30, label, anchor="middle", size=11, fill=MUTED))
    return out


def _y_axis(scale: Scale, left: float, right: float, label: str, top: float) -> list[str]:
    out = []
    for value, text in scale.ticks():
        y = scale(value)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(_text(left - 4, y + 3, text, anchor="end", size=10, fill=MUTED))
    if label:
        out.append(_text(left, top - 10, label, size=11, fill=MUTED))
    return out


def _threshold_v(scale: Scale, value: float | None, top: float, bottom: float, label: str) -> list[str]:
    value = finite(value)
    if value is None or not scale.lo <= value <= scale.hi:
        return []
    x = scale(value)
    line = (f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{THRESHOLD}" '
            f'stroke-dasharray="4 3"><title>{escape(label)} {value:g}</title></line>')
    return [line,
            _text(x, top - 7, f"{label} {value:g}", anchor="middle", size=10, fill=THRESHOLD)]


@dataclass(frozen=True)
class Bar:
    """One bar of a horizontal bar chart; ``text`` is printed after its end (the value, formatted)."""

    value: float | None
    colour: str
    text: str = ""
    tip: str = ""


@dataclass(frozen=True)
class Row:
    """A labelled row of one or more stacked-below-each-other bars (before/after pairs, one bar per pass)."""

    label: str
    bars: tuple[Bar, ...]


def hbar_chart(rows: Sequence[Row], *, title: str, log: bool = False, x_label: str = "",
               legend: Sequence[tuple[str, str]] = (), label_chars: int = 28) -> str:
    """Horizontal bars, one row per label; ``log`` draws a log axis where zero shows as a "0" marker."""
    values = [v for r in rows for b in r.bars if (v := finite(b.value)) is not None]
    lo, hi = _domain(values, log, floor_zero=True)
    left = _label_width([r.label for r in rows], label_chars)
    bar_h, gap = 12, 8
    top = 36 if legend else 24
    heights = [len(r.bars) * bar_h + gap for r in rows]
    bottom = top + sum(heights)
    scale = Scale(lo, hi, left, WIDTH - 90, log)
    body = _legend(legend, left, 14) if legend else []
    body += _x_axis(scale, top, bottom, x_label)
    y = top + gap / 2
    for row, height in zip(rows, heights, strict=True):
        body.append(_text(left - 6, y + height / 2 - 1, clip(row.label, label_chars), anchor="end", tip=row.label))
        for i, bar in enumerate(row.bars):
            value, by = finite(bar.value), y + i * bar_h
            tip = f"<title>{escape(bar.tip or row.label + ': ' + (bar.text or str(value)))}</title>"
            if value is None:
                body.append(_text(left + 4, by + bar_h - 2, "–", size=11, fill=MUTED))
                continue
            if log and value <= 0:
                body.append(f'<circle cx="{left:.1f}" cy="{by + bar_h / 2:.1f}" r="3.5" fill="{escape(bar.colour)}">'
                            f"{tip}</circle>")
                extra = f"  {bar.text}" if bar.text and bar.text != "0" else ""
                body.append(_text(left + 7, by + bar_h - 2, "0" + extra, size=10))
                continue
            end = scale(value)
            body.append(f'<rect x="{left:.1f}" y="{by + 1:.1f}" width="{max(end - left, 1):.1f}" '
                        f'height="{bar_h - 2}" fill="{escape(bar.colour)}">{tip}</rect>')
            if bar.text:
                body.append(_text(max(end, left + 1) + 4, by + bar_h - 2, bar.text, size=10))
        y += height
    return _frame(WIDTH, bottom + (44 if x_label else 26), title, body)


@dataclass(frozen=True)
class Column:
    """One vertical bar; ``tip`` is the hover text (the full name and its figures)."""

    label: str
    value: float | None
    colour: str
    tip: str = ""


def column_chart(columns: Sequence[Column], *, title: str, log: bool | None = None, y_label: str = "",
                 legend: Sequence[tuple[str, str]] = (), label_chars: int = 24) -> str:
    """Vertical bars with slanted labels, for many narrow items (layers); ``log=None`` picks log for wide ranges."""
    use_log = wants_log([c.value for c in columns]) if log is None else log
    values = [v for c in columns if (v := finite(c.value)) is not None]
    lo, hi = _domain(values, use_log, floor_zero=True)
    left, top = 64, 40 if legend else 24
    plot_h = 180
    slot = max(11.0, min(28.0, (WIDTH - left - 10) / max(len(columns), 1)))
    width = max(WIDTH, left + slot * len(columns) + 10)
    font = min(10, round(slot) - 2)
    label_h = 10 + 0.62 * font * min(max((len(c.label) for c in columns), default=4), label_chars)
    bottom = top + plot_h
    scale = Scale(lo, hi, bottom, top, use_log)
    body = _legend(legend, left, 14) if legend else []
    body += _y_axis(scale, left, width - 10, y_label + (" (log)" if use_log else ""), top)
    for i, column in enumerate(columns):
        x, value = left + i * slot, finite(column.value)
        tip = f"<title>{escape(column.tip or column.label)}</title>"
        centre = x + slot / 2
        if value is None or (use_log and value <= 0):
            mark = "–" if value is None else "0"
            body.append(_text(centre, bottom - 3, mark, anchor="middle", size=10, fill=MUTED,
                              tip=column.tip or column.label))
        else:
            y = scale(value)
            body.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
                        f'height="{max(bottom - y, 1):.1f}" fill="{escape(column.colour)}">{tip}</rect>')
        body.append(f'<text font-size="{font}" fill="{INK}" text-anchor="end" '
                    f'transform="translate({centre + font / 3:.1f},{bottom + 6:.1f}) rotate(-90)">'
                    f"{escape(clip(column.label, label_chars))}{tip}</text>")
    body.append(f'<line x1="{left}" y1="{bottom:.1f}" x2="{width - 10:.1f}" y2="{bottom:.1f}" stroke="{MUTED}"/>')
    return _frame(width, bottom + label_h + 8, title, body)


@dataclass(frozen=True)
class Mark:
    """A point on a point plot: a value, its colour, and its hover text."""

    value: float | None
    colour: str
    tip: str = ""


@dataclass(frozen=True)
class PointRow:
    """A labelled row of marks, with an optional whisker (a confidence interval) behind them."""

    label: str
    marks: tuple[Mark, ...]
    low: float | None = None
    high: float | None = None


def point_plot(rows: Sequence[PointRow], *, title: str, threshold: float | None = None,
               threshold_label: str = "tolerance", x_label: str = "", legend: Sequence[tuple[str, str]] = (),
               label_chars: int = 28) -> str:
    """Points per row on a shared horizontal axis: intervals (one mark, a whisker) or spreads (a mark per fold)."""
    values = [v for r in rows for m in r.marks if (v := finite(m.value)) is not None]
    values += [v for r in rows for v in (finite(r.low), finite(r.high)) if v is not None]
    if finite(threshold) is not None:
        values.append(float(threshold))  # type: ignore[arg-type]
    lo, hi = _domain(values, False, floor_zero=False)
    left = _label_width([r.label for r in rows], label_chars)
    row_h = 22
    top = 44 if legend else 30
    bottom = top + row_h * len(rows)
    scale = Scale(lo, hi, left, WIDTH - 30)
    body = _legend(legend, left, 12) if legend else []
    body += _x_axis(scale, top, bottom, x_label)
    body += _threshold_v(scale, threshold, top, bottom, threshold_label)
    for i, row in enumerate(rows):
        y = top + row_h * i + row_h / 2
        body.append(_text(left - 6, y + 4, clip(row.label, label_chars), anchor="end", tip=row.label))
        low, high = finite(row.low), finite(row.high)
        if low is not None and high is not None:
            a, b = scale(low), scale(high)
            body.append(f'<path d="M{a:.1f} {y - 5:.1f}v10M{a:.1f} {y:.1f}H{b:.1f}M{b:.1f} {y - 5:.1f}v10" '
                        f'stroke="{INK}" fill="none"><title>{escape(row.label)}: 95% interval {low:.6g} … '
                        f"{high:.6g}</title></path>")
        shown = [m for m in row.marks if finite(m.value) is not None]
        if not shown:
            body.append(_text(left + 4, y + 4, "–", fill=MUTED))
        for mark in shown:
            body.append(f'<circle cx="{scale(float(mark.value)):.1f}" cy="{y:.1f}" r="4" '  # type: ignore[arg-type]
                        f'fill="{escape(mark.colour)}" fill-opacity="0.85" stroke="white">'
                        f"<title>{escape(mark.tip or f'{row.label}: {mark.value:.6g}')}</title></circle>")
    return _frame(WIDTH, bottom + (44 if x_label else 26), title, body)


@dataclass(frozen=True)
class Series:
    """One line of a line chart: ``(x, y)`` points (``y`` ``None`` breaks the line), and points to ring in red."""

    name: str
    points: tuple[tuple[float, float | None], ...]
    colour: str
    dashed: bool = False
    flagged: tuple[bool, ...] = ()


def line_chart(series: Sequence[Series], *, title: str, threshold: float | None = None,
               threshold_label: str = "tolerance", x_label: str = "", y_label: str = "",
               width: float = 370, height: float = 230) -> str:
    """Lines over a numeric x axis, with a horizontal threshold line; small enough to sit two per row."""
    xs = [x for s in series for x, _ in s.points if finite(x) is not None]
    ys = [y for s in series for _, v in s.points if (y := finite(v)) is not None]
    if finite(threshold) is not None:
        ys.append(float(threshold))  # type: ignore[arg-type]
    left, right, top = 56, width - 14, 40
    bottom = height - (42 if x_label else 28)
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x_scale = Scale(x_lo, x_hi if x_hi > x_lo else x_lo + 1, left + 8, right - 8)
    y_lo, y_hi = _domain(ys, False, floor_zero=False)
    y_scale = Scale(y_lo, y_hi, bottom, top)
    body = _legend([(s.name, s.colour) for s in series], 8, 12) if len(series) > 1 else []
    body += _y_axis(y_scale, left, right, y_label, top)
    for value in sorted(set(xs)) if len(set(xs)) <= 8 else [t for t, _ in x_scale.ticks()]:
        body.append(_text(x_scale(value), bottom + 14, f"{value:g}", anchor="middle", size=10, fill=MUTED))
    if x_label:
        body.append(_text((left + right) / 2, bottom + 30, x_label, anchor="middle", size=11, fill=MUTED))
    t = finite(threshold)
    if t is not None:
        y = y_scale(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="{THRESHOLD}" '
                    f'stroke-dasharray="4 3"><title>{escape(threshold_label)} {t:g}</title></line>')
        label_y = y + 11 if y < (top + bottom) / 2 else y - 3
        body.append(_text(right, label_y, f"{threshold_label} {t:g}", anchor="end", size=10, fill=THRESHOLD))
    for s in series:
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        path, pen = [], "M"
        for x, v in sorted(s.points, key=lambda p: p[0]):
            y = finite(v)
            if y is None:
                pen = "M"
                continue
            path.append(f"{pen}{x_scale(x):.1f} {y_scale(y):.1f}")
            pen = "L"
        if path:
            body.append(f'<path d="{"".join(path)}" fill="none" stroke="{escape(s.colour)}" stroke-width="1.8"{dash}/>')
        flags = s.flagged or (False,) * len(s.points)
        for (x, v), bad in zip(s.points, flags, strict=False):
            y = finite(v)
            if y is None:
                continue
            ring = f' stroke="{THRESHOLD}" stroke-width="2" r="5"' if bad else ' r="3"'
            body.append(f'<circle cx="{x_scale(x):.1f}" cy="{y_scale(y):.1f}"{ring} fill="{escape(s.colour)}">'
                        f"<title>{escape(s.name)} at {x:g}: {y:.6g}{' (fails)' if bad else ''}</title></circle>")
    return _frame(width, height, title, body)


@dataclass(frozen=True)
class Point:
    """A point of a scatter plot, labelled on the plot when ``labelled`` (else by its hover text only); ``ringed``
    draws it larger with a dark ring (the chosen one)."""

    label: str
    x: float | None
    y: float | None
    colour: str
    tip: str = ""
    ringed: bool = False
    labelled: bool = True


def scatter_plot(points: Sequence[Point], *, title: str, x_label: str, y_label: str,
                 frontier: Sequence[tuple[float, float]] = (), reference: tuple[float, float] | None = None,
                 legend: Sequence[tuple[str, str]] = (), width: float = WIDTH, height: float = 360) -> str:
    """Points over two numeric axes, each labelled; ``frontier`` joins its points with a dashed step line (lower is
    better on both axes) and ``reference`` draws a cross-hair (the original). Points without both figures are
    left out."""
    shown = [p for p in points if finite(p.x) is not None and finite(p.y) is not None]
    xs = [float(p.x) for p in shown] + ([reference[0]] if reference else [])  # type: ignore[arg-type]
    ys = [float(p.y) for p in shown] + ([reference[1]] if reference else [])  # type: ignore[arg-type]
    left, right, top = 56, width - 16, 44 if legend else 30
    bottom = height - 42
    x_lo, x_hi = _domain(xs, False, floor_zero=False)
    y_lo, y_hi = _domain(ys, False, floor_zero=False)
    x_scale, y_scale = Scale(x_lo, x_hi, left, right), Scale(y_lo, y_hi, bottom, top)
    body = _legend(legend, left, 12) if legend else []
    body += _y_axis(y_scale, left, right, y_label, top)
    body += _x_axis(x_scale, top, bottom, x_label)
    if reference is not None:
        rx, ry = x_scale(reference[0]), y_scale(reference[1])
        body.append(f'<path d="M{rx:.1f} {top:.1f}V{bottom:.1f}M{left:.1f} {ry:.1f}H{right:.1f}" stroke="{MUTED}" '
                    f'stroke-dasharray="2 3" fill="none"><title>the original</title></path>')
    steps = sorted(frontier)
    if steps:
        path = [f"M{x_scale(steps[0][0]):.1f} {y_scale(steps[0][1]):.1f}"]
        for x1, y1 in steps[1:]:
            path.append(f"H{x_scale(x1):.1f}V{y_scale(y1):.1f}")
        body.append(f'<path d="{"".join(path)}" stroke="{INK}" stroke-dasharray="5 3" fill="none">'
                    "<title>frontier</title></path>")
    for p in shown:
        cx, cy = x_scale(float(p.x)), y_scale(float(p.y))  # type: ignore[arg-type]
        ring = f' r="7" stroke="{INK}" stroke-width="2"' if p.ringed else ' r="4.5" stroke="white"'
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}"{ring} fill="{escape(p.colour)}" fill-opacity="0.9">'
                    f"<title>{escape(p.tip or p.label)}</title></circle>")
        if not p.labelled:
            continue
        anchor = "end" if cx > (left + right) / 2 else "start"
        body.append(_text(cx + (-9 if anchor == "end" else 9), cy - 6, clip(p.label, 40), anchor=anchor, size=10,
                          tip=p.tip or p.label))
    return _frame(width, height, title, body)
