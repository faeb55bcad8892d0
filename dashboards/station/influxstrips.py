"""Strips read back from InfluxDB, for a server whose embedded store keeps no waveforms
(`ingest.keep_payloads = false`, docs/storage.md).

InfluxQL over the 1.x-compatible `/query` endpoint, which InfluxDB 1.x, 2.x (through the bucket's
virtual DBRP mapping, token in the `Authorization` header) and 3.x all answer; Flux would tie the
station to 2.x. Tested against a real InfluxDB 1.6 (tests/dashboards/station/test_influx_strips.py).

Rules of this file:
- It reads the layout ingest writes (`[influx] waveforms`): `chunks` (one point per message, its
  samples packed, ingest/lines.py) or `points` (one point per sample).
- Read-only; one HTTP request per stream and strip; a failure raises `StripReadError` with a
  reason a person can act on, never a partial strip passed off as whole.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from dashboards.station.strips import Segment
from ingest.lines import unpack_samples
from nabz.config import InfluxConfig

__all__ = ["InfluxStrips", "StripReadError", "busiest_device"]

# stream -> (chunk measurement, point measurement, the field a strip draws)
_WHAT = {"ecg": ("ecg_chunk", "ecg", "signal_uv"), "ppg": ("ppg_chunk", "ppg", "ir_counts")}


class StripReadError(Exception):
    """InfluxDB could not be asked, or answered with an error."""


def busiest_device(by_device: dict[str, list[Segment]]) -> tuple[str | None, list[Segment]]:
    """The device with the most samples (a patient may have had two patches in the window)."""
    if not by_device:
        return None, []
    device = max(by_device, key=lambda d: sum(len(s.samples) for s in by_device[d]))
    return device, by_device[device]


class InfluxStrips:
    def __init__(self, config: InfluxConfig, timeout_s: float = 10.0) -> None:
        if not config.url:
            raise ValueError("no InfluxDB URL configured (influx.url)")
        self.config = config
        self.timeout_s = timeout_s

    def waveforms(
        self, patient: str, stream: str, start: float, end: float
    ) -> tuple[str | None, list[Segment]]:
        """The samples of `stream` for `patient` in [start, end] (epoch s), from the device with
        the most of them, as segments (a chunk's samples begin up to 5 s before `start`)."""
        chunk, point, field = _WHAT[stream]
        chunks = self.config.waveforms == "chunks"
        measurement, fields = (chunk, f'"rate_hz","{field}"') if chunks else (point, f'"{field}"')
        q = (
            f'SELECT {fields} FROM "{measurement}" WHERE "patient" = {_literal(patient)} '
            f'AND time >= {int((start - 5.0) * 1e9)} AND time <= {int(end * 1e9)} GROUP BY "device"'
        )
        by_device: dict[str, list[Segment]] = {}
        for series in self._query(q):
            device = str(series.get("tags", {}).get("device", ""))
            rows = series.get("values") or []
            by_device[device] = _chunk_segments(rows) if chunks else _point_segments(rows)
        return busiest_device({d: s for d, s in by_device.items() if s})

    def _query(self, q: str) -> list[dict[str, Any]]:
        url = f"{self.config.url.rstrip('/')}/query?" + urllib.parse.urlencode(  # type: ignore[union-attr]
            {"db": self.config.bucket, "epoch": "ns", "q": q}
        )
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.config.token:
            request.add_header("Authorization", f"Token {self.config.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").strip()
            raise StripReadError(f"InfluxDB answered {exc.code} {exc.reason}: {detail}") from exc
        except (OSError, ValueError) as exc:  # refused, timed out, not JSON
            raise StripReadError(f"InfluxDB could not be read: {exc}") from exc
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not results:
            raise StripReadError(f"InfluxDB answered without results: {str(body)[:300]}")
        if "error" in results[0]:
            raise StripReadError(f"InfluxDB refused the query: {results[0]['error']}")
        series = results[0].get("series") or []
        return [s for s in series if isinstance(s, dict)]


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chunk_segments(rows: list[list[Any]]) -> list[Segment]:
    """Rows of (time ns, rate_hz, packed samples): a segment per chunk, as ingest wrote it."""
    out = []
    for t_ns, rate, packed in rows:
        if isinstance(packed, str) and packed and rate:
            out.append(Segment(t_ns / 1e9, float(rate), unpack_samples(packed)))
    return out


def _point_segments(rows: list[list[Any]]) -> list[Segment]:
    """Rows of (time ns, value): runs of evenly spaced samples, split where one is missing. The
    rate is the run's most common spacing (the points carry no rate)."""
    points = [(int(t), v) for t, v in rows if v is not None]
    if len(points) < 2:
        return []
    steps = [b[0] - a[0] for a, b in zip(points, points[1:], strict=False)]
    step = Counter(steps).most_common(1)[0][0]
    if step <= 0:
        return []
    out: list[Segment] = []
    first = 0
    for i, gap in enumerate(steps, start=1):
        if abs(gap - step) > step // 2:  # a hole (or a doubled sample): the run ends here
            out.append(Segment(points[first][0] / 1e9, 1e9 / step, [v for _, v in points[first:i]]))
            first = i
    out.append(Segment(points[first][0] / 1e9, 1e9 / step, [v for _, v in points[first:]]))
    return out
