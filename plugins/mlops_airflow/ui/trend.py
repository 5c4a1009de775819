"""The plots of the model page, inline SVGs drawn on the server (no script, no network, no plotting library in
the api-server): the metric trend, one column per version (the primary metric its CT run measured, the gate's
interval for it, the champion ringed), and the label-free estimate against the realised metric, one column per
batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mlops_airflow.core.encoding import html_text

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 28, 36
#: Values beyond this size set no axis (an artifact anyone may write can hold 1e308); drawn at the edge.
PLOT_LIMIT = 1e15
#: Most grid lines an axis gets.
MAX_TICKS = 12


def _plottable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and abs(value) <= PLOT_LIMIT


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round values spanning ``low``..``high``."""
    raw = (high - low) / count
    if not math.isfinite(raw) or raw <= 0:
        return []
    step = 10 ** math.floor(math.log10(raw))
    step = next((m * step for m in (1, 2, 5, 10) if m * step >= raw), 0.0)
    if not step > 0:  # too small a range for a float step
        return []
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(min(int((high - first) / step) + 1, MAX_TICKS))]


def _bounds(points: Sequence[Any]) -> tuple[float, float] | None:
    values = [v for p in points for v in (p.value, p.lower, p.upper) if _plottable(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = (high - low) * 0.12 or abs(high) * 0.01 or 0.01
    return low - pad, high + pad


def _title(point: Any, metric: str) -> str:
    text = f"v{point.version}: {metric} " + ("not measured" if point.value is None else _fmt(point.value))
    if point.lower is not None and point.upper is not None:
        text += f"; gate interval {_fmt(point.lower)} to {_fmt(point.upper)} against v{point.judged_against}"
    elif point.value is not None:
        text += "; no champion to judge against (first version)"
    return text


class _Frame:
    """One plot's scales, ``len`` columns over the value range ``low`` to ``high``, and its axes and ticks."""

    def __init__(self, columns: int, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.plot_h = HEIGHT - TOP - BOTTOM
        self.step = (WIDTH - LEFT - RIGHT) / columns

    def x(self, i: int) -> float:
        return LEFT + self.step * (i + 0.5)

    def y(self, value: float) -> float:
        """The value's height, held inside the drawing (a value that sets no axis is drawn at its edge)."""
        at = TOP + self.plot_h * (self.high - value) / (self.high - self.low)
        if not math.isfinite(at):
            at = -math.inf if value > self.high else math.inf
        return min(max(at, 0.0), float(HEIGHT))

    def open(self, svg_id: str, label: str, title: str) -> list[str]:
        """The SVG's opening, both axes, the ``title`` (escaped markup) and the grid with its tick labels."""
        bottom = TOP + self.plot_h
        parts = [
            f"<svg id='{svg_id}' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
            f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{label}'>",
            f"<line x1='{LEFT}' y1='{TOP}' x2='{LEFT}' y2='{bottom}' stroke='#98a2b3'/>",
            f"<line x1='{LEFT}' y1='{bottom}' x2='{WIDTH - RIGHT}' y2='{bottom}' stroke='#98a2b3'/>",
            f"<text x='{LEFT}' y='14' font-size='12' fill='#344054'>{title}</text>",
        ]
        for tick in _ticks(self.low, self.high):
            ty = self.y(tick)
            parts.append(
                f"<line x1='{LEFT - 4}' y1='{ty:.1f}' x2='{WIDTH - RIGHT}' y2='{ty:.1f}' stroke='#eaecf0'/>"
                f"<text x='{LEFT - 8}' y='{ty + 4:.1f}' font-size='11' text-anchor='end' fill='#667085'>"
                f"{_fmt(tick)}</text>"
            )
        return parts


def trend_svg(points: Sequence[Any], champion: str | None, metric: str) -> str:
    """The SVG of :func:`mlops_airflow.core.ledger.metric_trend`'s points; empty when none was measured."""
    bounds = _bounds(points)
    if bounds is None:
        return ""
    frame = _Frame(len(points), *bounds)
    x, y, plot_h = frame.x, frame.y, frame.plot_h
    parts = frame.open("metric-trend", f"{html_text(metric)} per version", html_text(metric))
    line = " ".join(f"{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points) if p.value is not None)
    parts.append(f"<polyline points='{line}' fill='none' stroke='#84adea' stroke-width='1.5'/>")
    for i, point in enumerate(points):
        parts.append(_column(point, x(i), y, TOP + plot_h, champion, metric))
    parts.append("</svg>")
    return "".join(parts)


def _column(point: Any, cx: float, y: Any, axis: float, champion: str | None, metric: str) -> str:
    is_champion = champion is not None and str(point.version) == str(champion)
    css = "point champion" if is_champion else "point"
    title = html_text(_title(point, metric))
    out = [f"<g class='{css}' data-version='{html_text(point.version)}'><title>{title}</title>"]
    if point.lower is not None and point.upper is not None:
        top, bottom = y(point.upper), y(point.lower)
        out.append(
            f"<line class='interval' x1='{cx:.1f}' y1='{top:.1f}' x2='{cx:.1f}' y2='{bottom:.1f}' stroke='#667085' "
            f"stroke-width='2'/><line x1='{cx - 6:.1f}' y1='{top:.1f}' x2='{cx + 6:.1f}' y2='{top:.1f}' "
            f"stroke='#667085' stroke-width='2'/><line x1='{cx - 6:.1f}' y1='{bottom:.1f}' x2='{cx + 6:.1f}' "
            f"y2='{bottom:.1f}' stroke='#667085' stroke-width='2'/>"
        )
    if point.value is not None:
        cy = y(point.value)
        out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4.5' fill='#0b63c5'/>")
        if is_champion:
            out.append(
                f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='10' fill='none' stroke='#11702f' stroke-width='2.5'/>"
                f"<text x='{cx + 13:.1f}' y='{cy - 8:.1f}' font-size='11' font-weight='600' fill='#11702f'>"
                "champion</text>"
            )
    label = f"v{point.version}"
    weight = " font-weight='700'" if is_champion else ""
    out.append(
        f"<text x='{cx:.1f}' y='{axis + 18:.1f}' font-size='12' text-anchor='middle'{weight} fill='#1d2733'>"
        f"{html_text(label)}</text></g>"
    )
    return "".join(out)


# ------------------------------------------------------------------------------ estimated vs realised


def _estimate_bounds(points: Sequence[Any]) -> tuple[float, float] | None:
    values = [v for p in points for v in (p.value, p.low, p.high, p.realised) if _plottable(v)]
    if not values:
        return None
    low, high = min(values), max(values)
    pad = (high - low) * 0.12 or abs(high) * 0.01 or 0.01
    return low - pad, high + pad


def _estimate_title(point: Any, metric: str) -> str:
    where = f"{point.source} {point.batch}".strip()
    if point.value is None:
        text = f"{where}: no estimate ({point.reason})" if point.reason else f"{where}: no estimate"
    else:
        text = f"{where}: estimated {metric} {_fmt(point.value)}"
        if point.low is not None and point.high is not None:
            text += f" (interval {_fmt(point.low)} to {_fmt(point.high)})"
    if point.realised is not None:
        text += f"; realised {_fmt(point.realised)} on {point.labelled} labelled row(s)"
    else:
        text += "; labels not arrived"
    return text


def _segments(points: Sequence[Any]) -> list[list[int]]:
    """Runs of consecutive indexes whose points have an interval."""
    out: list[list[int]] = []
    for i, p in enumerate(points):
        if p.low is None or p.high is None:
            continue
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def estimate_svg(points: Sequence[Any], metric: str) -> str:
    """The SVG of :func:`mlops_airflow.ui.history.estimate_history`'s points, one column per batch: the estimate
    (blue dots and line) inside its interval (the band), the realised metric (orange squares) where labels
    arrived; empty when no point has a value."""
    bounds = _estimate_bounds(points)
    if bounds is None:
        return ""
    frame = _Frame(len(points), *bounds)
    x, y, plot_h = frame.x, frame.y, frame.plot_h
    parts = frame.open(
        "estimate-trend",
        f"estimated and realised {html_text(metric)} per batch",
        f"{html_text(metric)}: <tspan fill='#0b63c5'>estimated</tspan> (band: interval), "
        "<tspan fill='#c4320a'>realised</tspan>",
    )
    half = min(frame.step * 0.3, 8.0)
    for segment in _segments(points):
        first, last = segment[0], segment[-1]
        upper = [(x(i), y(points[i].high)) for i in segment]
        lower = [(x(i), y(points[i].low)) for i in reversed(segment)]
        if first == last:  # one batch alone: a short band around its column
            upper = [(x(first) - half, upper[0][1]), (x(first) + half, upper[0][1])]
            lower = [(x(first) + half, lower[0][1]), (x(first) - half, lower[0][1])]
        outline = " ".join(f"{px:.1f},{py:.1f}" for px, py in upper + lower)
        parts.append(f"<polygon class='band' points='{outline}' fill='#0b63c5' fill-opacity='0.15' stroke='none'/>")
    for attr, colour in (("value", "#84adea"), ("realised", "#f4a37d")):
        line = " ".join(
            f"{x(i):.1f},{y(getattr(p, attr)):.1f}" for i, p in enumerate(points) if getattr(p, attr) is not None
        )
        if line:
            parts.append(f"<polyline points='{line}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
    every = max(1, math.ceil(len(points) / 8))  # about eight date labels
    for i, point in enumerate(points):
        parts.append(_batch_column(point, x(i), y, TOP + plot_h, metric, i % every == 0))
    parts.append("</svg>")
    return "".join(parts)


def _batch_column(point: Any, cx: float, y: Any, axis: float, metric: str, labelled: bool) -> str:
    def data(value: float | None) -> str:
        return "" if value is None else _fmt(value)

    out = [
        f"<g class='batch' data-batch='{html_text(point.batch)}' data-source='{html_text(point.source)}' "
        f"data-estimated='{data(point.value)}' data-low='{data(point.low)}' data-high='{data(point.high)}' "
        f"data-realised='{data(point.realised)}'><title>{html_text(_estimate_title(point, metric))}</title>"
    ]
    if point.value is not None:
        out.append(f"<circle class='estimated' cx='{cx:.1f}' cy='{y(point.value):.1f}' r='4' fill='#0b63c5'/>")
    if point.realised is not None:
        ry = y(point.realised)
        out.append(f"<rect class='realised' x='{cx - 4:.1f}' y='{ry - 4:.1f}' width='8' height='8' fill='#c4320a'/>")
    if labelled:
        out.append(
            f"<text x='{cx:.1f}' y='{axis + 16:.1f}' font-size='11' text-anchor='middle' fill='#1d2733'>"
            f"{point.date:%m-%d}</text>"
        )
    out.append("</g>")
    return "".join(out)
