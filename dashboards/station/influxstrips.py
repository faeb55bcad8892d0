"""Strips read back from InfluxDB, for a server whose embedded store keeps no waveforms
(`ingest.keep_payloads = false`, docs/storage.md) or no longer holds those of an old alarm.

InfluxQL over the 1.x-compatible `/query` endpoint, which InfluxDB 2.x (through the bucket's
virtual DBRP mapping, token in the `Authorization` header), 3.x and 1.x without authentication
all answer; Flux would tie the station to 2.x. Tested against a real InfluxDB 1.6
(tests/dashboards/station/test_influx_strips.py).

Rules of this file:
- It reads the layout ingest writes (`[influx] waveforms`): `chunks` (one point per message, its
  samples packed, ingest/lines.py) or `points` (one point per sample), with the messages' flags
  (leads off, ...: the `flags` field), so a strip from here is marked as one from the store is.
- Read-only; one HTTP request per stream and strip, bounded by `timeout_s`; anything but a whole
  answer (refused, timed out, an error, a result the server marked partial, a shape not
  understood) raises `StripReadError` with a reason a person can act on: never a partial strip
  passed off as whole.
- The token is sent to the configured URL only (not along a redirect).
"""

from __future__ import annotations

import binascii
import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from dashboards.station.strips import FRAME_LEAD_S, Segment, busiest_device
from nabz.config import InfluxConfig

__all__ = ["InfluxStrips", "StripReadError"]

# stream -> (chunk measurement, point measurement, the field a strip draws)
_WHAT = {"ecg": ("ecg_chunk", "ecg", "signal_uv"), "ppg": ("ppg_chunk", "ppg", "ir_counts")}
_TIME_TOLERANCE_NS = 1_000  # points further than this from their run's even spacing start a new run


class StripReadError(Exception):
    """InfluxDB could not be asked, or did not give a whole answer."""


class InfluxStrips:
    def __init__(self, config: InfluxConfig, timeout_s: float = 5.0) -> None:
        if not config.url:
            raise ValueError("no InfluxDB URL configured (influx.url)")
        self.url = config.url.rstrip("/")
        self.config = config
        self.timeout_s = timeout_s

    def waveforms(
        self, patient: str, stream: str, start: float, end: float
    ) -> tuple[str | None, list[Segment]]:
        """The samples of `stream` for `patient` in [start, end] (epoch s), from the device with
        the most of them, as segments."""
        chunk, point, field = _WHAT[stream]
        chunks = self.config.waveforms == "chunks"
        measurement, fields = (
            (chunk, f'"rate_hz","flags","{field}"') if chunks else (point, f'"flags","{field}"')
        )
        since = start - (FRAME_LEAD_S if chunks else 0.0)
        q = (
            f'SELECT {fields} FROM "{measurement}" WHERE "patient" = {_literal(patient)} '
            f'AND time >= {int(since * 1e9)} AND time <= {int(end * 1e9)} GROUP BY "device"'
        )
        by_device: dict[str, list[Segment]] = {}
        for series in self._query(q):
            try:
                rows = _rows(
                    series, ["time", "rate_hz", "flags", field] if chunks else ["time", "flags", field]
                )
                segments = _chunk_segments(rows) if chunks else _point_segments(rows)
            except (KeyError, TypeError, ValueError, binascii.Error) as exc:
                raise StripReadError(f"InfluxDB answered in a shape not understood: {exc!r}") from exc
            if segments:
                by_device[str(series.get("tags", {}).get("device", ""))] = segments
        return busiest_device(by_device)

    def _query(self, q: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"db": self.config.bucket, "epoch": "ns", "q": q})
        request = urllib.request.Request(f"{self.url}/query?{params}", headers={"Accept": "application/json"})
        if self.config.token:
            request.add_unredirected_header("Authorization", f"Token {self.config.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").strip()
            raise StripReadError(f"InfluxDB answered {exc.code} {exc.reason}: {detail}") from exc
        except (OSError, ValueError) as exc:  # refused, timed out, not JSON
            raise StripReadError(f"InfluxDB could not be read: {exc}") from exc
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not results or not isinstance(results[0], dict):
            raise StripReadError(f"InfluxDB answered without results: {str(body)[:300]}")
        first = results[0]
        if "error" in first:
            raise StripReadError(f"InfluxDB refused the query: {first['error']}")
        series = [s for s in first.get("series") or [] if isinstance(s, dict)]
        if first.get("partial") or any(s.get("partial") for s in series):
            raise StripReadError("InfluxDB returned only part of the strip (a row limit on the server?)")
        return series


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rows(series: dict[str, Any], names: list[str]) -> list[list[Any]]:
    """The named columns of a series' rows, in that order; `flags`, which a database that has
    never been sent a flagged message does not know, as None when it is not there."""
    columns = series["columns"]
    at = [columns.index(n) if n != "flags" or n in columns else None for n in names]
    return [[None if i is None else row[i] for i in at] for row in series.get("values") or []]


def _flags(mask: Any) -> tuple[str, ...]:
    from ingest.lines import flags_of

    return flags_of(int(mask)) if mask else ()


def _chunk_segments(rows: list[list[Any]]) -> list[Segment]:
    """Rows of (time ns, rate_hz, flags, packed samples): a segment per chunk, as ingest wrote it."""
    from ingest.lines import unpack_samples  # plain Python: loads neither numba nor the DSP kernels

    out = []
    for t_ns, rate, mask, packed in rows:
        if isinstance(packed, str) and packed and rate:
            out.append(Segment(int(t_ns) / 1e9, float(rate), unpack_samples(packed), _flags(mask)))
    return out


def _point_segments(rows: list[list[Any]]) -> list[Segment]:
    """Rows of (time ns, flags, value): runs of evenly spaced samples. The spacing is the most
    common one (the points carry no rate); a run ends where a sample strays from its even spacing
    by more than a microsecond (a missing sample, or the next frame's clock a little off), so
    every sample is drawn at the time it was stored, and a run starts at a flagged point (the first
    sample of a flagged message), which gives it those flags."""
    points = [(int(t), mask, v) for t, mask, v in rows if v is not None]
    if len(points) < 2:
        return []
    step = Counter(b[0] - a[0] for a, b in zip(points, points[1:], strict=False)).most_common(1)[0][0]
    if step <= 0:
        return []
    out: list[Segment] = []
    first = 0
    for i in range(1, len(points) + 1):
        if (
            i == len(points)
            or points[i][1]
            or abs(points[i][0] - points[first][0] - round((i - first) * step)) > _TIME_TOLERANCE_NS
        ):
            samples = [v for _, _, v in points[first:i]]
            out.append(Segment(points[first][0] / 1e9, 1e9 / step, samples, _flags(points[first][1])))
            first = i
    return out
