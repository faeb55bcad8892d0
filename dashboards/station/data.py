"""What the station reads from the other services' files, read-only: the ingest store (derived
vitals for trends, raw waveform messages for strips, enrolment) and the alert store (alarms,
silences); and InfluxDB for the waveforms of a strip the ingest store does not hold (none kept,
or pruned after the dedup window; dashboards/station/influxstrips.py).

Rules of this file:
- Read-only connections (`mode=ro`), one per call: the station never writes another service's
  file, and a file that does not exist yet (ingest not started) reads as empty. A missing alerts
  store is also reported (`unreadable`, shown by /healthz): the alerts service makes it when it
  starts, so its absence means no alarm history, often a relative `[alerts] store_path` taken
  from another working directory than the service's.
- The tables and columns read here are those of ingest/store.py and alerts/store.py; a change
  there must change this file (tests/dashboards/station/test_data.py writes through the real
  stores and reads back through this module).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from dashboards.station.influxstrips import InfluxStrips
from dashboards.station.strips import FRAME_LEAD_S, Segment, busiest_device
from ingest.store import STRIP_INDEX
from nabz.contract import Vitals

__all__ = ["Records", "TREND_FIELDS", "Waves"]

log = logging.getLogger(__name__)

# (source, column) pairs the trends draw.
TREND_FIELDS = (
    ("ecg", "hr_bpm"), ("device", "hr_bpm"), ("ppg", "pr_bpm"), ("device", "pr_bpm"),
    ("device", "spo2_pct"), ("ppg", "spo2_pct"), ("ecg", "sqi"), ("ppg", "sqi"),
    ("device", "battery_pct"), ("ecg", "resp_bpm"), ("ppg", "resp_bpm"),
)  # fmt: skip
_LATEST = ("hr_bpm", "pr_bpm", "spo2_pct", "sqi", "battery_pct", "resp_bpm")
_MISSING = "no alerts store"  # how `unreadable` says it, so that it is cleared once the file is there


class _Wave(msgspec.Struct, kw_only=True):
    rate_hz: int
    flags: list[str] = []
    signal_uv: list[int] | None = None
    ir_counts: list[int] | None = None


_wave = msgspec.json.Decoder(_Wave)


class Waves(NamedTuple):
    device: str | None  # the device drawn (the one with the most samples in the window)
    segments: list[Segment]
    # messages stored without samples (rows of files from before 2026-11-26 13:50 UTC, when ingest
    # with no payloads kept still wrote them); None: this store keeps no waveforms at all
    missing: int | None
    source: str | None  # "store" (the ingest store), "influxdb", or None (nothing to read)


# what the pages read of an alarm row (alerts/lifecycle.Alarm): a row without them is left out
_ALARM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "alarm_id": str, "patient": str, "kind": str, "priority": str, "state": str, "message": str,
    "raised_at": (int, float),
}  # fmt: skip


class Records:
    def __init__(
        self, ingest_path: str | Path, alerts_path: str | Path, influx: InfluxStrips | None = None
    ) -> None:
        self.ingest_path = Path(ingest_path)
        self.alerts_path = Path(alerts_path)
        self.influx = influx  # where strips come from when the ingest store does not hold them
        self.unreadable: dict[str, str] = {}  # store path -> why it could not be read (last time)

    def missing_alerts_store(self) -> str | None:
        """Why the alerts store is not there (also kept in `unreadable` until it is), or None."""
        key = str(self.alerts_path)
        if self.alerts_path.exists():
            if self.unreadable.get(key, "").startswith(_MISSING):
                del self.unreadable[key]
            return None
        where = "" if self.alerts_path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        why = (
            f"{_MISSING} at {self.alerts_path.absolute()}{where}: no alarm history until the alerts "
            "service makes it there; check [alerts] store_path (the same file as the alerts service's)"
        )
        self.unreadable[key] = why
        return why

    @contextmanager
    def _open(self, path: Path) -> Iterator[sqlite3.Connection | None]:
        if path == self.alerts_path:
            self.missing_alerts_store()
        if not path.exists():
            yield None
            return
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error as exc:
            log.warning("station: cannot open %s read-only: %s", path, exc)
            yield None
            return
        try:
            yield db
        finally:
            db.close()

    def _rows(self, path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._open(path) as db:
            if db is None:
                return []
            try:
                rows = db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                self._failed(path, exc)
                return []
            self.unreadable.pop(str(path), None)
            return rows

    def _failed(self, path: Path, exc: sqlite3.DatabaseError) -> None:
        """A table not created yet is normal (nothing written yet); anything else (a damaged
        file) is logged once and shown on the health page, and the page shows what it can."""
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):
            log.debug("station: %s: %s", path, exc)
            return
        if str(path) not in self.unreadable:
            log.error("station: cannot read %s: %s (pages show what they can without it)", path, exc)
        self.unreadable[str(path)] = str(exc)

    @staticmethod
    def _alarm_data(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Alarm rows (read as bytes) as data, without the SMS acknowledgement code; a damaged
        row (not UTF-8, not JSON, a field missing or of another kind) is logged and skipped."""
        out = []
        for (data,) in rows:
            try:
                a = json.loads(bytes(data).decode("utf-8"))
                ok = isinstance(a, dict) and all(isinstance(a.get(k), t) for k, t in _ALARM_FIELDS.items())
                ok = ok and a["priority"] in ("high", "medium", "low")
            except (ValueError, TypeError) as exc:
                log.error("station: an alarm row in the alerts store cannot be read: %s", exc)
                continue
            if not ok:
                log.error("station: an alarm row in the alerts store is incomplete; left out")
                continue
            a.pop("ack_code", None)  # what a doctor texts back: not for the page
            out.append(a)
        return out

    # --- ingest store -------------------------------------------------------------------------
    def enrolled_patients(self) -> set[str]:
        return {r[0] for r in self._rows(self.ingest_path, "SELECT DISTINCT patient FROM enrolment")}

    def latest_vitals(self, patients: Iterable[str], now: float, recent_s: float = 60.0) -> list[Vitals]:
        """What the tiles need at start-up, per patient: the rows of the last `recent_s` (values
        older than that are not shown as current anyway), the newest row ever (when data last
        came) and the newest battery level of the last day. Each query walks the (patient, t_ns)
        index backwards a little way, so start-up stays quick with months of data."""
        out: list[Vitals] = []
        cols = "site, device, source, t_ns, hr_bpm, pr_bpm, spo2_pct, spo2_calibrated, sqi, battery_pct, resp_bpm, flags"
        with self._open(self.ingest_path) as db:
            if db is None:
                return out
            try:
                devices: dict[str, list[str | None]] = {}
                with contextlib.suppress(sqlite3.OperationalError):  # an older store: no enrolment
                    for device, patient in db.execute("SELECT device, patient FROM enrolment"):
                        devices.setdefault(patient, []).append(device)
                for patient in patients:
                    rows = db.execute(
                        f"SELECT {cols} FROM vitals WHERE patient = ? ORDER BY t_ns DESC LIMIT 1", (patient,)
                    ).fetchall()
                    for device in devices.get(patient, [None]):  # each wearable's own battery
                        rows += db.execute(
                            f"SELECT {cols} FROM vitals WHERE patient = ? AND battery_pct IS NOT NULL AND t_ns > ? "
                            + ("AND device = ? " if device else "")
                            + "ORDER BY t_ns DESC LIMIT 1",
                            (patient, int((now - 86400) * 1e9), *((device,) if device else ())),
                        ).fetchall()
                    rows += db.execute(
                        f"SELECT {cols} FROM vitals WHERE patient = ? AND t_ns > ? ORDER BY t_ns",
                        (patient, int((now - recent_s) * 1e9)),
                    ).fetchall()
                    out.extend(_vitals_of(patient, r, len(out) + i) for i, r in enumerate(rows))
            except sqlite3.DatabaseError as exc:  # no vitals table yet, or a damaged file
                self._failed(self.ingest_path, exc)
        return out

    def trend(
        self, patient: str, start: float, end: float, bucket_s: float
    ) -> dict[str, list[tuple[float, float, float, float]]]:
        """(bucket middle, mean, min, max) per "<source>.<column>" between start and end."""
        bucket_ns = max(1, int(bucket_s * 1e9))
        cols = sorted({c for _, c in TREND_FIELDS})
        select = ", ".join(f"AVG({c}), MIN({c}), MAX({c})" for c in cols)
        rows = self._rows(
            self.ingest_path,
            f"SELECT source, t_ns / ? AS b, {select} FROM vitals WHERE patient = ? AND t_ns >= ? AND t_ns < ? "
            "GROUP BY source, b ORDER BY b",
            (bucket_ns, patient, int(start * 1e9), int(end * 1e9)),
        )
        wanted = set(TREND_FIELDS)
        out: dict[str, list[tuple[float, float, float, float]]] = {}
        for r in rows:
            source, b = r[0], r[1]
            mid = (b + 0.5) * bucket_ns / 1e9
            for i, c in enumerate(cols):
                mean, lo, hi = r[2 + 3 * i : 5 + 3 * i]
                if mean is not None and (source, c) in wanted:
                    out.setdefault(f"{source}.{c}", []).append((mid, float(mean), float(lo), float(hi)))
        return out

    def waveforms(self, patient: str, stream: str, start: float, end: float) -> Waves:
        """Segments of the device with the most samples for this patient and stream in [start, end].

        From the ingest store's raw messages when it keeps them. From InfluxDB, if one is
        configured (raises `StripReadError` if it cannot be read), when the store keeps none
        (ingest.keep_payloads = false: ingest then drops the index by patient and time) or the
        window ends before the oldest of this patient's stream it still holds (kept payloads are
        pruned after ingest.dedup_window_h); without InfluxDB, `missing` is None in the first
        case."""
        tables = {r[0] for r in self._rows(self.ingest_path, "SELECT name FROM sqlite_master")}
        if "messages" not in tables:  # nothing stored yet (or the file cannot be read now)
            return Waves(None, [], 0, None)
        if STRIP_INDEX not in tables:
            if self.influx is None:
                return Waves(None, [], None, None)
            return Waves(*self.influx.waveforms(patient, stream, start, end), 0, "influxdb")
        rows = self._rows(
            self.ingest_path,
            "SELECT device, t_ns, payload FROM messages WHERE patient = ? AND stream = ? AND t_ns >= ? AND t_ns <= ? "
            "ORDER BY t_ns",
            (patient, stream, int((start - FRAME_LEAD_S) * 1e9), int(end * 1e9)),
        )
        by_device: dict[str, list[Segment]] = {}
        empty = 0
        for device, t_ns, payload in rows:
            if not payload:
                empty += 1
                continue
            try:
                w = _wave.decode(payload)
            except msgspec.DecodeError:
                continue
            samples = w.signal_uv if stream == "ecg" else w.ir_counts
            if samples:
                by_device.setdefault(device, []).append(
                    Segment(t_ns / 1e9, float(w.rate_hz), samples, tuple(w.flags))
                )
        if not by_device and self.influx is not None and self._pruned_before(patient, stream, end):
            return Waves(*self.influx.waveforms(patient, stream, start, end), empty, "influxdb")
        return Waves(*busiest_device(by_device), empty, "store")

    def _pruned_before(self, patient: str, stream: str, end: float) -> bool:
        """Does this window end before the oldest message of the patient's stream still stored
        (an alarm older than the dedup window)? One step down the strip index."""
        rows = self._rows(
            self.ingest_path,
            "SELECT t_ns FROM messages WHERE patient = ? AND stream = ? ORDER BY t_ns LIMIT 1",
            (patient, stream),
        )
        return bool(rows) and end * 1e9 < rows[0][0]

    # --- alert store --------------------------------------------------------------------------
    def alarms(self, patient: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Alarms newest first (as alerts/lifecycle.Alarm fields), without the SMS acknowledgement code."""
        where, args = ("WHERE patient = ?", (patient,)) if patient else ("", ())
        rows = self._rows(
            self.alerts_path,
            f"SELECT CAST(data AS BLOB) FROM alarms {where} ORDER BY raised_at DESC LIMIT ?",
            (*args, limit),
        )
        return self._alarm_data(rows)

    def open_alarms(self) -> list[dict[str, Any]]:
        rows = self._rows(
            self.alerts_path,
            "SELECT CAST(data AS BLOB) FROM alarms WHERE state != 'cleared' ORDER BY raised_at",
        )
        return self._alarm_data(rows)

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            self.alerts_path, "SELECT CAST(data AS BLOB) FROM alarms WHERE alarm_id = ?", (alarm_id,)
        )
        found = self._alarm_data(rows[:1])
        return found[0] if found else None

    def silences(self, now: float, patient: str | None = None) -> list[dict[str, Any]]:
        """Silences in force (for this patient, or for every patient with "*")."""
        rows = self._rows(
            self.alerts_path,
            "SELECT silence_id, patient, kind, starts_at, ends_at, created_by, reason FROM silences "
            "WHERE ends_at > ? ORDER BY starts_at",
            (now,),
        )
        keys = ("silence_id", "patient", "kind", "starts_at", "ends_at", "created_by", "reason")
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        return [s for s in out if patient is None or s["patient"] in (patient, "*")]


def _vitals_of(patient: str, r: tuple[Any, ...], n: int) -> Vitals:
    site, device, source, t_ns, hr, pr, spo2, cal, sqi, battery, resp, flags = r
    return Vitals(
        id=f"station-start-{n:08d}", site=site, patient=patient, device=device,
        t=datetime.fromtimestamp(t_ns / 1e9, UTC), source=source, hr_bpm=hr, pr_bpm=pr, spo2_pct=spo2,
        spo2_calibrated=bool(cal), sqi=sqi, battery_pct=battery, resp_bpm=resp,
        flags=[f for f in (flags or "").split(",") if f],
    )  # fmt: skip
