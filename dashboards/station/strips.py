"""ECG and PPG strips as SVG, drawn like ECG paper: 25 mm/s, 10 mm/mV, 1 mm and 5 mm grid.

Rules of this file:
- Pure: samples and times in, SVG text out. The SVG's user unit is the millimetre (its viewBox is
  in mm and its width and height carry "mm"), so printed at 100 % (or shown at the browser's
  96 px per inch) one second is 25 mm and one millivolt 10 mm, as on a 12-lead printout.
- A sample is drawn at its own time (t0 + i / rate): a hole in the data is a hole in the trace,
  never a line across it, and is labelled.
- The standard calibration pulse (1 mV high, 0.2 s wide) is drawn at the start of the ECG row, so
  anyone can check the scale on the picture itself.
- Only presentation attributes, no `style`: the page's Content-Security-Policy forbids inline styles.

Convention: American Heart Association recommendations for the standardization of the ECG
(Kligfield et al., Circulation 2007;115:1306-1324): 25 mm/s paper speed, 10 mm/mV gain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from zoneinfo import ZoneInfo

import numpy as np

__all__ = ["Segment", "Mark", "render_strip", "busiest_device", "FRAME_LEAD_S", "MM_PER_S", "MM_PER_MV"]

MM_PER_S = 25.0
MM_PER_MV = 10.0
_LEFT_MM = 10.0  # room for the calibration pulse
_TOP_MM = 8.0  # title and time labels
_ECG_MM = 40.0  # ±2 mV around the baseline
_PPG_MM = 25.0
_GAP_MM = 4.0
_MINOR, _MAJOR, _TRACE = "#f3c4c4", "#e08a8a", "#111111"


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive samples of one stream: the first at `t0` (epoch s), then every 1 / rate_hz."""

    t0: float
    rate_hz: float
    samples: Sequence[float]  # ECG: µV; PPG: infrared counts
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mark:
    t: float
    label: str
    colour: str = "#c00000"
    dashed: bool = False


def _n(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


# A strip's window starts this much earlier for the messages (frames) it draws: one that began
# before the window may still run into it.
FRAME_LEAD_S = 5.0


def busiest_device(by_device: dict[str, list[Segment]]) -> tuple[str | None, list[Segment]]:
    """The device with the most samples (a patient may have had two patches in the window)."""
    if not by_device:
        return None, []
    device = max(by_device, key=lambda d: sum(len(s.samples) for s in by_device[d]))
    return device, by_device[device]


def _runs(segments: Sequence[Segment], start: float, end: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(times, values) runs inside [start, end], split wherever samples are missing."""
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    prev_end: float | None = None
    for seg in sorted(segments, key=lambda s: s.t0):
        if not seg.samples or seg.rate_hz <= 0:
            continue
        t = seg.t0 + np.arange(len(seg.samples)) / seg.rate_hz
        x = np.asarray(seg.samples, dtype=np.float64)
        keep = (t >= start) & (t <= end)
        if prev_end is not None and t[0] < prev_end:  # overlaps what is drawn already (a resent frame)
            keep &= t > prev_end
        prev_end = max(prev_end or t[-1], t[-1])
        if not keep.any():
            continue
        t, x = t[keep], x[keep]
        if runs and t[0] - runs[-1][0][-1] <= 1.5 / seg.rate_hz:
            runs[-1] = (np.concatenate([runs[-1][0], t]), np.concatenate([runs[-1][1], x]))
        else:
            runs.append((t, x))
    return runs


def _polyline(xs: np.ndarray, ys: np.ndarray) -> str:
    pts = " ".join(f"{_n(a)},{_n(b)}" for a, b in zip(xs, ys, strict=True))
    return (
        f'<polyline points="{pts}" fill="none" stroke="{_TRACE}" stroke-width="0.3" stroke-linejoin="round"/>'
    )


def _grid(x0: float, y0: float, w: float, h: float) -> list[str]:
    minor: list[str] = []
    major: list[str] = []
    for i in range(int(round(w)) + 1):
        (major if i % 5 == 0 else minor).append(f"M{_n(x0 + i)} {_n(y0)}v{_n(h)}")
    for j in range(int(round(h)) + 1):
        (major if j % 5 == 0 else minor).append(f"M{_n(x0)} {_n(y0 + j)}h{_n(w)}")
    return [
        f'<path class="grid-minor" d="{"".join(minor)}" stroke="{_MINOR}" stroke-width="0.1"/>',
        f'<path class="grid-major" d="{"".join(major)}" stroke="{_MAJOR}" stroke-width="0.25"/>',
    ]


def _text(x: float, y: float, s: str, size: float = 3.0, anchor: str = "start", fill: str = "#222") -> str:
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}" font-family="sans-serif" '
        f'text-anchor="{anchor}" fill="{fill}">{escape(s)}</text>'
    )


def _ppg_scaled(runs: list[tuple[np.ndarray, np.ndarray]], height_mm: float) -> list[np.ndarray]:
    """PPG shown inverted (more blood, more absorption, fewer counts: up is more volume), its slow
    drift removed with a 2 s moving mean, scaled so the 2nd-98th percentile spans 80 % of the row."""
    out = []
    for t, x in runs:
        rate = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 1.0
        k = max(1, int(rate * 2.0))
        if len(x) > k:
            pad = np.pad(x, (k // 2, k - 1 - k // 2), mode="edge")
            x = x - np.convolve(pad, np.ones(k) / k, mode="valid")
        out.append(-(x - np.median(x)))
    both = np.concatenate(out) if out else np.zeros(1)
    lo, hi = np.percentile(both, [2, 98])
    span = float(hi - lo) or 1.0
    return [np.clip((y - (lo + hi) / 2) / span * 0.8 * height_mm, -height_mm / 2, height_mm / 2) for y in out]


def render_strip(
    start: float,
    end: float,
    ecg: Sequence[Segment],
    ppg: Sequence[Segment] = (),
    *,
    marks: Sequence[Mark] = (),
    title: str = "",
    tz: str = "UTC",
) -> str:
    """The strip from `start` to `end` (epoch s) as an SVG document."""
    zone = ZoneInfo(tz)
    width = _LEFT_MM + (end - start) * MM_PER_S
    ecg_top = _TOP_MM
    ppg_top = ecg_top + _ECG_MM + _GAP_MM
    height = ppg_top + _PPG_MM + 6.0

    def x_of(t: float) -> float:
        return _LEFT_MM + (t - start) * MM_PER_S

    def xs_of(t: np.ndarray) -> np.ndarray:
        return _LEFT_MM + (t - start) * MM_PER_S

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}mm" height="{_n(height)}mm" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" data-mm-per-s="{_n(MM_PER_S)}" data-mm-per-mv="{_n(MM_PER_MV)}" '
        f'data-start="{start!r}" data-left-mm="{_n(_LEFT_MM)}">',
        f'<rect width="{_n(width)}" height="{_n(height)}" fill="#fffafa"/>',
        *_grid(0.0, ecg_top, width, _ECG_MM),
        *_grid(0.0, ppg_top, width, _PPG_MM),
        _text(1.0, 3.5, f"{title}  ·  ECG 25 mm/s, 10 mm/mV", 3.2),
    ]
    # Time labels every 2 s along the top, local time.
    first = int(np.ceil(start))
    for s in range(first, int(end) + 1):
        if (s - first) % 2 == 0:
            label = datetime.fromtimestamp(s, UTC).astimezone(zone).strftime("%H:%M:%S")
            out.append(_text(x_of(s), ecg_top - 1.0, label, 2.6, "middle", "#555"))

    # ECG row: calibration pulse, then the trace around a baseline in the middle of the row.
    base = ecg_top + _ECG_MM / 2
    cal_x = 2.0
    cal_w = 0.2 * MM_PER_S
    out.append(
        f'<path class="calibration" d="M{_n(cal_x - 1)} {_n(base)}h1v{_n(-MM_PER_MV)}h{_n(cal_w)}v{_n(MM_PER_MV)}h1" '
        f'fill="none" stroke="{_TRACE}" stroke-width="0.3"/>'
    )
    out.append(_text(cal_x, base + 4.0, "1 mV", 2.4))
    ecg_runs = _runs(ecg, start, end)
    if ecg_runs:
        centre = float(np.median(np.concatenate([x for _, x in ecg_runs])))
        for t, x in ecg_runs:
            y = np.clip(base - (x - centre) / 1000.0 * MM_PER_MV, ecg_top, ecg_top + _ECG_MM)
            out.append(_polyline(xs_of(t), y))
    else:
        out.append(_text(width / 2, base, "no ECG stored for this time", 4.0, "middle", "#900"))
    out.append(_text(_LEFT_MM + 1, ecg_top + 3.5, "ECG", 3.0))
    out.extend(_holes(ecg_runs, start, end, ecg_top + _ECG_MM - 1.5, x_of))
    out.extend(_flag_labels(ecg, start, end, ecg_top + 7.0, x_of))

    # PPG row.
    ppg_runs = _runs(ppg, start, end)
    pbase = ppg_top + _PPG_MM / 2
    if ppg_runs:
        for (t, _), y in zip(ppg_runs, _ppg_scaled(ppg_runs, _PPG_MM), strict=True):
            out.append(_polyline(xs_of(t), pbase - y))
    else:
        out.append(_text(width / 2, pbase, "no PPG stored for this time", 4.0, "middle", "#900"))
    out.append(_text(_LEFT_MM + 1, ppg_top + 3.5, "PPG (infrared, scaled to fit)", 3.0))
    out.extend(_holes(ppg_runs, start, end, ppg_top + _PPG_MM - 1.5, x_of))
    out.extend(_flag_labels(ppg, start, end, ppg_top + 7.0, x_of))

    for m in marks:
        if start <= m.t <= end:
            mx = x_of(m.t)
            dash = ' stroke-dasharray="1.5 1"' if m.dashed else ""
            out.append(
                f'<line class="mark" x1="{_n(mx)}" y1="{_n(ecg_top)}" x2="{_n(mx)}" y2="{_n(ppg_top + _PPG_MM)}" '
                f'stroke="{m.colour}" stroke-width="0.4"{dash}/>'
            )
            out.append(_text(mx + 0.8, height - 1.5, m.label, 2.8, "start", m.colour))
    out.append("</svg>")
    return "\n".join(out)


def _holes(
    runs: list[tuple[np.ndarray, np.ndarray]], start: float, end: float, y: float, f: Callable[[float], float]
) -> list[str]:
    """'no data' under every stretch of more than half a second without samples."""
    edges = [start] + [v for t, _ in runs for v in (float(t[0]), float(t[-1]))] + [end]
    out = []
    for a, b in zip(edges[0::2], edges[1::2], strict=True):
        if b - a > 0.5 and runs:
            out.append(_text((f(a) + f(b)) / 2, y, "no data", 2.6, "middle", "#900"))
    return out


def _flag_labels(
    segs: Sequence[Segment], start: float, end: float, y: float, f: Callable[[float], float]
) -> list[str]:
    out, last = [], -1e9
    for s in sorted(segs, key=lambda s: s.t0):
        shown = [fl for fl in s.flags if fl not in ("resent", "gap_before")]
        if shown and start <= s.t0 <= end and s.t0 - last > 2.0:
            out.append(_text(f(s.t0), y, ", ".join(shown).replace("_", " "), 2.6, "start", "#900"))
            last = s.t0
    return out
