"""Durable alarm state (SQLite): open alarms, an append-only audit log of transitions, notifications."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alerts.lifecycle import Alarm
from nabz import contract
from nabz.contract import AlarmEvent

__all__ = ["AlertStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    alarm_id TEXT NOT NULL,
    state TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    at REAL NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL
);
"""


class AlertStore:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()

    def record(self, alarm: Alarm, event: AlarmEvent, at: float) -> None:
        """Upsert the alarm and append the transition to the audit log, in one transaction."""
        data = contract.encode(asdict(alarm)).decode()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO alarms (alarm_id, patient, kind, priority, state, raised_at, data) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(alarm_id) DO UPDATE SET state=excluded.state, "
                "data=excluded.data",
                (
                    alarm.alarm_id,
                    alarm.patient,
                    alarm.kind,
                    alarm.priority,
                    alarm.state,
                    alarm.raised_at,
                    data,
                ),
            )
            self.db.execute(
                "INSERT INTO audit (at, alarm_id, state, event) VALUES (?,?,?,?)",
                (at, alarm.alarm_id, alarm.state, contract.encode(event).decode()),
            )
            self.db.execute("COMMIT")

    def notification(self, alarm_id: str, to: str, text: str, at: float, ok: bool, detail: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO notifications (alarm_id, recipient, text, at, ok, detail) VALUES (?,?,?,?,?,?)",
                (alarm_id, to, text, at, int(ok), detail),
            )

    def open_alarms(self) -> list[Alarm]:
        with self.lock:
            rows = self.db.execute("SELECT data FROM alarms WHERE state != 'cleared'").fetchall()
        return [Alarm(**_decode(r[0])) for r in rows]

    def alarms(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT data FROM alarms ORDER BY raised_at").fetchall()
        return [_decode(r[0]) for r in rows]

    def notifications(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT alarm_id, recipient, text, at, ok, detail FROM notifications ORDER BY seq"
            ).fetchall()
        return [dict(zip(("alarm_id", "to", "text", "at", "ok", "detail"), r, strict=True)) for r in rows]

    def audit(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT at, alarm_id, state, event FROM audit ORDER BY seq").fetchall()
        return [dict(zip(("at", "alarm_id", "state", "event"), r, strict=True)) for r in rows]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _decode(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text)
    return result
