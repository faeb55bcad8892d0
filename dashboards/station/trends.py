"""Trend charts (hours to days) as SVG: one panel per quantity, the mean of each time bucket as a
line over a band from its minimum to its maximum, alarms as vertical lines in their priority's
colour. Pure: buckets in, SVG text out; presentation attributes only (no inline styles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from zoneinfo import ZoneInfo

__all__ = ["Series", "Panel", "TrendMark", "render_trends", "PRIORITY_COLOURS"]

PRIORITY_COLOURS = {"high": "#d0021b", "medium": "#e69500", "low": "#1f8fb3"}
_W = 1000.0
_LEFT = 56.0
_RIGHT = 12.0
_PANEL_H = 120.0
_GAP = 30.0
_TOP = 16.0


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    colour: str
    points: Sequence[tuple[float, float, float, float]]  # (t, mean, min, max) per bucket


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    lo: float
    hi: float
    series: Sequence[Series] = field(default_factory=tuple)
    bands: Sequence[tuple[float, float, str]] = ()  # (from, to, colour): e.g. the alarm limits


@dataclass(frozen=True, slots=True)
class TrendMark:
    t: float
    priority: str
    label: str


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _tick_step(span_s: float) -> float:
    for step in (300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600):
        if span_s / step <= 8:
            return float(step)
    return 48 * 3600.0


def _runs(
    points: Sequence[tuple[float, float, float, float]], max_gap: float
) -> list[list[tuple[float, float, float, float]]]:
    runs: list[list[tuple[float, float, float, float]]] = []
    for p in sorted(points):
        if runs and p[0] - runs[-1][-1][0] <= max_gap:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def render_trends(
    start: float,
    end: float,
    panels: Sequence[Panel],
    marks: Sequence[TrendMark] = (),
    *,
    bucket_s: float,
    tz: str = "UTC",
) -> str:
    zone = ZoneInfo(tz)
    height = _TOP + len(panels) * (_PANEL_H + _GAP)
    plot_w = _W - _LEFT - _RIGHT

    def x_of(t: float) -> float:
        return _LEFT + (t - start) / (end - start) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_n(_W)} {_n(height)}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="trends">',
        f'<rect width="{_n(_W)}" height="{_n(height)}" fill="#ffffff"/>',
    ]
    step = _tick_step(end - start)
    for i, panel in enumerate(panels):
        top = _TOP + i * (_PANEL_H + _GAP)
        lo, hi = panel.lo, panel.hi
        values = [v for s in panel.series for p in s.points for v in (p[2], p[3])]
        if values:
            lo, hi = min(lo, min(values)), max(hi, max(values))
        span = (hi - lo) or 1.0

        def y_of(v: float, top: float = top, lo: float = lo, span: float = span) -> float:
            return top + _PANEL_H - (v - lo) / span * _PANEL_H

        out.append(
            f'<text x="{_n(_LEFT)}" y="{_n(top - 4)}" font-size="13" font-family="sans-serif" font-weight="bold" fill="#222">{escape(panel.title)}</text>'
        )
        for a, b, colour in panel.bands:
            ya, yb = y_of(max(a, lo)), y_of(min(b, hi))
            out.append(
                f'<rect x="{_n(_LEFT)}" y="{_n(yb)}" width="{_n(plot_w)}" height="{_n(max(0.0, ya - yb))}" fill="{colour}" fill-opacity="0.08"/>'
            )
        out.append(
            f'<rect x="{_n(_LEFT)}" y="{_n(top)}" width="{_n(plot_w)}" height="{_n(_PANEL_H)}" fill="none" stroke="#999" stroke-width="1"/>'
        )
        for k in range(5):
            v = lo + span * k / 4
            y = y_of(v)
            out.append(
                f'<line x1="{_n(_LEFT)}" y1="{_n(y)}" x2="{_n(_W - _RIGHT)}" y2="{_n(y)}" stroke="#e5e5e5" stroke-width="1"/>'
            )
            out.append(
                f'<text x="{_n(_LEFT - 4)}" y="{_n(y + 4)}" font-size="11" font-family="sans-serif" text-anchor="end" fill="#555">{_n(v)}</text>'
            )
        t = (start // step + 1) * step
        while t < end:
            x = x_of(t)
            out.append(
                f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(top + _PANEL_H)}" stroke="#eeeeee" stroke-width="1"/>'
            )
            fmt = "%H:%M" if step < 24 * 3600 else "%d %b"
            if step >= 6 * 3600 and datetime.fromtimestamp(t, UTC).astimezone(zone).hour == 0:
                fmt = "%d %b"
            label = datetime.fromtimestamp(t, UTC).astimezone(zone).strftime(fmt)
            out.append(
                f'<text x="{_n(x)}" y="{_n(top + _PANEL_H + 13)}" font-size="11" font-family="sans-serif" text-anchor="middle" fill="#555">{label}</text>'
            )
            t += step
        legend_x = _W - _RIGHT
        for s in reversed(panel.series):
            label = escape(s.label)
            out.append(
                f'<text x="{_n(legend_x)}" y="{_n(top - 4)}" font-size="11" font-family="sans-serif" text-anchor="end" fill="{s.colour}">{label}</text>'
            )
            legend_x -= 7.0 * len(s.label) + 14
        for s in panel.series:
            for run in _runs(s.points, 2.5 * bucket_s):
                if len(run) == 1:
                    t0, mean0, _, _ = run[0]
                    out.append(
                        f'<circle cx="{_n(x_of(t0))}" cy="{_n(y_of(mean0))}" r="2" fill="{s.colour}"/>'
                    )
                    continue
                upper = " ".join(f"{_n(x_of(p[0]))},{_n(y_of(p[3]))}" for p in run)
                lower = " ".join(f"{_n(x_of(p[0]))},{_n(y_of(p[2]))}" for p in reversed(run))
                out.append(
                    f'<polygon points="{upper} {lower}" fill="{s.colour}" fill-opacity="0.15" stroke="none"/>'
                )
                mean = " ".join(f"{_n(x_of(p[0]))},{_n(y_of(p[1]))}" for p in run)
                out.append(f'<polyline points="{mean}" fill="none" stroke="{s.colour}" stroke-width="1.5"/>')
        if not any(s.points for s in panel.series):
            out.append(
                f'<text x="{_n(_LEFT + plot_w / 2)}" y="{_n(top + _PANEL_H / 2)}" font-size="13" font-family="sans-serif" text-anchor="middle" fill="#900">no data in this period</text>'
            )
        for m in marks:
            if start <= m.t <= end:
                x = x_of(m.t)
                colour = PRIORITY_COLOURS.get(m.priority, "#555")
                out.append(
                    f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(top + _PANEL_H)}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 3"><title>{escape(m.label)}</title></line>'
                )
    out.append("</svg>")
    return "\n".join(out)
