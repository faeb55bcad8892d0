"""Durable alarm state (SQLite, WAL): alarms, escalations, the notification queue, SMS sent,
silences, commands, devices last heard from, and an append-only audit log.

Rules of this file:
- The audit table is append-only: triggers make SQLite refuse UPDATE and DELETE on it.
- Whatever must not be half-done is one transaction (`tx()`): an alarm's transition with its
  audit row; an escalation step with the notifications it queues. So a restart at any moment
  continues an escalation with no step repeated and none skipped.
- An SMS is recorded as 'sending' before it is handed to a notifier and 'sent' after. One found
  'sending' at start-up was interrupted mid-send: it is queued again (at least once beats at
  most once for an alarm) and the audit log says it may be a duplicate.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alerts.grouping import Batch, Queued
from alerts.lifecycle import PRIORITY_RANK, Alarm
from alerts.oncall import Escalation
from alerts.silences import Silence
from nabz import contract
from nabz.contract import AlarmEvent
from nabz.secrets import create_private

__all__ = ["AlertStore", "WindowChanges"]

# What changed in the rules' saved windows (AlertStore.save_rule_timers)
WindowChanges = tuple[
    list[tuple[str, int, str, str, int]], list[tuple[str, int, str, str, int, float, float]]
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    alarm_id TEXT PRIMARY KEY, patient TEXT NOT NULL, kind TEXT NOT NULL, priority TEXT NOT NULL,
    state TEXT NOT NULL, raised_at REAL NOT NULL, ack_code TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_state ON alarms (state);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, alarm_id TEXT NOT NULL,
    what TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS escalations (alarm_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, phone TEXT NOT NULL,
    person TEXT NOT NULL, language TEXT NOT NULL, patient TEXT NOT NULL, alarm_id TEXT NOT NULL,
    priority TEXT NOT NULL, reason TEXT NOT NULL, not_before REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'queued', sms_seq INTEGER,
    text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS queue_status ON queue (status);
CREATE TABLE IF NOT EXISTS sms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, phone TEXT NOT NULL,
    person TEXT NOT NULL, patient TEXT NOT NULL, alarm_ids TEXT NOT NULL, text TEXT NOT NULL,
    parts TEXT NOT NULL, encoding TEXT NOT NULL, status TEXT NOT NULL, notifier TEXT,
    ref TEXT, sent_at REAL, delivered_at REAL, delivery TEXT, detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sms_phone ON sms (phone, sent_at);
CREATE TABLE IF NOT EXISTS silences (
    silence_id TEXT PRIMARY KEY, patient TEXT NOT NULL, kind TEXT NOT NULL, starts_at REAL NOT NULL,
    ends_at REAL NOT NULL, created_by TEXT NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL, args TEXT NOT NULL,
    source TEXT NOT NULL, done_at REAL, result TEXT
);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, patient TEXT NOT NULL, last_seen REAL NOT NULL);
-- The rules' running timers (alerts.engine, "rule timers across a restart"): one row per rule and
-- patient with a condition building or raised, replaced whole each time; alarm_id and priority
-- are the patient's open alarm of that kind when saved (NULL: none).
CREATE TABLE IF NOT EXISTS rule_timers (
    kind TEXT NOT NULL, idx INTEGER NOT NULL, patient TEXT NOT NULL, alarm_id TEXT, priority TEXT,
    saved_at REAL NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, idx, patient)
);
-- The values of the NEWS2 score's 60 s windows for the rows of rule_timers (kilobytes a patient):
-- written as they change, n numbering each window's values in arrival order.
CREATE TABLE IF NOT EXISTS rule_window_values (
    kind TEXT NOT NULL, idx INTEGER NOT NULL, patient TEXT NOT NULL, param TEXT NOT NULL,
    n INTEGER NOT NULL, t REAL NOT NULL, x REAL NOT NULL, PRIMARY KEY (kind, idx, patient, param, n)
);
"""


class AlertStore:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_private(Path(path))  # alarms name patients and phone numbers: owner only
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        if "shown" not in {row[1] for row in self.db.execute("PRAGMA table_info(sms)")}:
            try:  # stores from before 2026-11-27: SMS sent before have no record of the priorities shown
                self.db.execute("ALTER TABLE sms ADD COLUMN shown TEXT")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise
        self.lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction; nests (inner blocks join the outer one)."""
        with self.lock:
            if self._depth == 0:
                self.db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self.db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    # --- alarms and audit ---------------------------------------------------------------------
    def record(self, alarm: Alarm, event: AlarmEvent, at: float) -> None:
        """Upsert the alarm and append the transition to the audit log, in one transaction."""
        data = contract.encode(asdict(alarm)).decode()
        with self.tx():
            self.db.execute(
                "INSERT INTO alarms (alarm_id, patient, kind, priority, state, raised_at, ack_code, data) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(alarm_id) DO UPDATE SET state=excluded.state, "
                "priority=excluded.priority, data=excluded.data",
                (alarm.alarm_id, alarm.patient, alarm.kind, alarm.priority, alarm.state, alarm.raised_at,
                 alarm.ack_code, data),
            )  # fmt: skip
            self.audit_add(at, alarm.alarm_id, "transition", alarm.state, contract.encode(event).decode())

    def audit_add(self, at: float, alarm_id: str, what: str, state: str, detail: str) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO audit (at, alarm_id, what, state, detail) VALUES (?,?,?,?,?)",
                (at, alarm_id, what, state, detail),
            )

    def alarm(self, alarm_id: str) -> Alarm | None:
        rows = self._rows("SELECT data FROM alarms WHERE alarm_id = ?", (alarm_id,))
        return Alarm(**_decode(rows[0][0])) if rows else None

    def recent_codes(self, since: float) -> dict[str, float]:
        """ack code -> when the latest alarm with that code last had it (cleared, else raised), of
        those after `since`."""
        rows = self._rows(
            "SELECT ack_code, MAX(t) FROM (SELECT ack_code, COALESCE(json_extract(data, '$.cleared_at'),"
            " raised_at) AS t FROM alarms) WHERE t > ? GROUP BY ack_code",
            (since,),
        )
        return {str(code): float(at) for code, at in rows if code}

    def open_alarms(self) -> list[Alarm]:
        rows = self._rows("SELECT data FROM alarms WHERE state != 'cleared' ORDER BY raised_at")
        return [Alarm(**_decode(r[0])) for r in rows]

    def alarms(self) -> list[dict[str, Any]]:
        return [_decode(r[0]) for r in self._rows("SELECT data FROM alarms ORDER BY raised_at")]

    def audit(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT seq, at, alarm_id, what, state, detail FROM audit ORDER BY seq")
        return [dict(zip(("seq", "at", "alarm_id", "what", "state", "detail"), r, strict=True)) for r in rows]

    # --- escalation and the notification queue ------------------------------------------------
    def escalation(self, alarm_id: str) -> Escalation | None:
        rows = self._rows("SELECT data FROM escalations WHERE alarm_id = ?", (alarm_id,))
        if not rows:
            return None
        d = _decode(rows[0][0])
        d["reached"] = {k: tuple(v) for k, v in d["reached"].items()}
        return Escalation(**d)

    def put_escalation(self, alarm_id: str, esc: Escalation) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO escalations (alarm_id, data) VALUES (?, ?)",
                (alarm_id, json.dumps(asdict(esc))),
            )

    def drop_escalation(self, alarm_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM escalations WHERE alarm_id = ?", (alarm_id,))

    def enqueue(self, q: Queued) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO queue (created_at, phone, person, language, patient, alarm_id, priority, reason, text) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    q.created_at,
                    q.phone,
                    q.person,
                    q.language,
                    q.patient,
                    q.alarm_id,
                    q.priority,
                    q.reason,
                    q.text,
                ),
            )

    def queued(self) -> list[Queued]:
        rows = self._rows(
            "SELECT seq, phone, person, language, patient, alarm_id, priority, reason, created_at, not_before, text "
            "FROM queue WHERE status = 'queued' ORDER BY seq"
        )
        return [Queued(*r) for r in rows]

    def recover_interrupted(self, now: float) -> int:
        """Queue again what was being sent when the process stopped (see the module docstring)."""
        with self.tx():
            rows = self.db.execute("SELECT seq, alarm_ids FROM sms WHERE status = 'sending'").fetchall()
            for seq, alarm_ids in rows:
                self.db.execute("UPDATE sms SET status = 'interrupted' WHERE seq = ?", (seq,))
                self.db.execute("UPDATE queue SET status = 'queued' WHERE sms_seq = ?", (seq,))
                for a in json.loads(alarm_ids):
                    self.audit_add(
                        now,
                        a,
                        "notification",
                        "interrupted",
                        f"SMS {seq} may or may not have gone; sending again",
                    )
        return len(rows)

    def drop_queued(self, seqs: list[int], now: float, why: str) -> None:
        with self.tx():
            for seq in seqs:
                self.db.execute("UPDATE queue SET status = 'dropped' WHERE seq = ?", (seq,))
                row = self.db.execute("SELECT alarm_id FROM queue WHERE seq = ?", (seq,)).fetchone()
                self.audit_add(now, row[0] if row else "-", "notification", "dropped", why)

    def begin_sms(
        self,
        b: Batch,
        text: str,
        parts: list[str],
        encoding: str,
        now: float,
        shown: dict[str, str] | None = None,
    ) -> int:
        """Record an SMS before it is handed over; `shown` is each alarm's priority as its text says."""
        alarm_ids = sorted({q.alarm_id for q in b.items if q.alarm_id})
        with self.tx():
            cur = self.db.execute(
                "INSERT INTO sms (created_at, phone, person, patient, alarm_ids, text, parts, encoding, status, "
                "shown) VALUES (?,?,?,?,?,?,?,?, 'sending', ?)",
                (now, b.phone, b.person, b.patient, json.dumps(alarm_ids), text, json.dumps(parts), encoding,
                 json.dumps(shown or {})),
            )  # fmt: skip
            seq = int(cur.lastrowid or 0)
            self.db.executemany(
                "UPDATE queue SET status = 'sending', sms_seq = ? WHERE seq = ?",
                [(seq, q.seq) for q in b.items],
            )
        return seq

    def finish_sms(
        self,
        seq: int,
        ok: bool,
        notifier: str,
        ref: str | None,
        detail: str,
        now: float,
        retry_at: float | None,
    ) -> None:
        """Record the outcome; on failure its notifications are queued again (retry_at) or given up (None)."""
        with self.tx():
            self.db.execute(
                "UPDATE sms SET status = ?, notifier = ?, ref = ?, sent_at = ?, detail = ? WHERE seq = ?",
                ("sent" if ok else "failed", notifier, ref, now if ok else None, detail, seq),
            )
            if ok:
                self.db.execute("UPDATE queue SET status = 'sent' WHERE sms_seq = ?", (seq,))
            elif retry_at is not None:
                self.db.execute(
                    "UPDATE queue SET status = 'queued', sms_seq = NULL, attempts = attempts + 1, not_before = ? "
                    "WHERE sms_seq = ?",
                    (retry_at, seq),
                )
            else:
                self.db.execute("UPDATE queue SET status = 'failed' WHERE sms_seq = ?", (seq,))
            (alarm_ids,) = self.db.execute("SELECT alarm_ids FROM sms WHERE seq = ?", (seq,)).fetchone()
            state = "sent" if ok else "retry" if retry_at is not None else "failed"
            for a in json.loads(alarm_ids):
                self.audit_add(
                    now, a, "notification", state, json.dumps({"sms": seq, "via": notifier, "detail": detail})
                )

    def delivered(self, ref: str, notifier: str, status: str, now: float) -> int | None:
        """A delivery report for the latest SMS sent through `notifier` with this reference."""
        with self.tx():
            row = self.db.execute(
                "SELECT seq, alarm_ids FROM sms WHERE ref = ? AND notifier = ? AND status = 'sent' "
                "ORDER BY seq DESC LIMIT 1",
                (ref, notifier),
            ).fetchone()
            if row is None:
                return None
            self.db.execute(
                "UPDATE sms SET delivered_at = ?, delivery = ? WHERE seq = ?", (now, status, row[0])
            )
            for a in json.loads(row[1]):
                self.audit_add(now, a, "delivery", status, json.dumps({"sms": row[0]}))
            return int(row[0])

    def texted(self, phone: str, since: float) -> dict[str, str | None]:
        """The alarms an SMS to `phone` named since `since` (sent or not: a timed-out SMS may have gone),
        each with the highest priority an SMS that went said it had (None: none known to have gone)."""
        out: dict[str, str | None] = {}
        for ids, shown, status in self._rows(
            "SELECT alarm_ids, shown, status FROM sms WHERE phone = ? AND created_at > ? ORDER BY seq",
            (phone, since),
        ):
            said = json.loads(shown) if shown and status == "sent" else {}
            for a in json.loads(ids):
                p, was = said.get(a), out.setdefault(a, None)
                if p in PRIORITY_RANK and (was is None or PRIORITY_RANK[p] > PRIORITY_RANK[was]):
                    out[a] = p
        return out

    def sent_times(self, since: float) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for phone, at in self._rows(
            "SELECT phone, sent_at FROM sms WHERE status = 'sent' AND sent_at > ?", (since,)
        ):
            out.setdefault(phone, []).append(at)
        return out

    def last_about(self, since: float) -> dict[tuple[str, str], float]:
        rows = self._rows(
            "SELECT phone, patient, MAX(sent_at) FROM sms WHERE status = 'sent' AND sent_at > ? GROUP BY phone, patient",
            (since,),
        )
        return {(p, pt): at for p, pt, at in rows}

    def notified_after(self, seq: int) -> list[tuple[int, str, float]]:
        """(sms seq, alarm id, sent at) for SMS sent with a seq above `seq`."""
        rows = self._rows(
            "SELECT seq, alarm_ids, sent_at FROM sms WHERE status = 'sent' AND seq > ? ORDER BY seq", (seq,)
        )
        return [(s, a, at) for s, ids, at in rows for a in json.loads(ids)]

    def sms(self) -> list[dict[str, Any]]:
        cols = ("seq", "created_at", "phone", "person", "patient", "alarm_ids", "text", "parts", "encoding",
                "status", "notifier", "ref", "sent_at", "delivered_at", "delivery", "detail")  # fmt: skip
        rows = self._rows(f"SELECT {', '.join(cols)} FROM sms ORDER BY seq")
        out = [dict(zip(cols, r, strict=True)) for r in rows]
        for d in out:
            d["alarm_ids"] = json.loads(d["alarm_ids"])
            d["parts"] = json.loads(d["parts"])
        return out

    def notifications(self) -> list[dict[str, Any]]:
        """One row per SMS part handed to a notifier: to, text, at, ok, detail, alarm_ids."""
        out = []
        for s in self.sms():
            ok = s["status"] == "sent"
            for part in s["parts"]:
                out.append({"to": s["phone"], "text": part, "at": s["sent_at"] or s["created_at"], "ok": ok,
                            "detail": s["detail"], "alarm_ids": s["alarm_ids"]})  # fmt: skip
        return out

    # --- silences, commands, devices ----------------------------------------------------------
    def add_silence(self, s: Silence) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO silences VALUES (?,?,?,?,?,?,?)",
                (s.silence_id, s.patient, s.kind, s.starts_at, s.ends_at, s.created_by, s.reason),
            )

    def end_silence(self, silence_id: str, at: float) -> bool:
        with self.lock:
            cur = self.db.execute(
                "UPDATE silences SET ends_at = ? WHERE silence_id = ? AND ends_at > ?", (at, silence_id, at)
            )
            return cur.rowcount > 0

    def silences(self, now: float | None = None) -> list[Silence]:
        rows = self._rows(
            "SELECT * FROM silences WHERE ends_at > ? ORDER BY starts_at", (now or float("-inf"),)
        )
        return [Silence(*r) for r in rows]

    def add_command(self, at: float, action: str, args: dict[str, Any], source: str) -> int:
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO commands (at, action, args, source) VALUES (?,?,?,?)",
                (at, action, json.dumps(args), source),
            )
            return int(cur.lastrowid or 0)

    def pending_commands(self) -> list[tuple[int, str, dict[str, Any], str]]:
        rows = self._rows("SELECT seq, action, args, source FROM commands WHERE done_at IS NULL ORDER BY seq")
        return [(s, a, json.loads(args), src) for s, a, args, src in rows]

    def command_done(self, seq: int, at: float, result: str) -> None:
        with self.lock:
            self.db.execute("UPDATE commands SET done_at = ?, result = ? WHERE seq = ?", (at, result, seq))

    def command_result(self, seq: int) -> str | None:
        rows = self._rows("SELECT result FROM commands WHERE seq = ? AND done_at IS NOT NULL", (seq,))
        return str(rows[0][0]) if rows else None

    def save_devices(self, seen: dict[str, tuple[str, float]]) -> None:
        with self.tx():
            self.db.executemany(
                "INSERT OR REPLACE INTO devices (device, patient, last_seen) VALUES (?,?,?)",
                [(d, p, t) for d, (p, t) in seen.items()],
            )

    def devices(self) -> dict[str, tuple[str, float]]:
        return {d: (p, t) for d, p, t in self._rows("SELECT device, patient, last_seen FROM devices")}

    def save_rule_timers(
        self,
        at: float,
        rows: list[tuple[str, int, str, str | None, str | None, str]],
        windows: WindowChanges | None = None,
    ) -> None:
        """Replace the saved timers with `rows`: (kind, idx, patient, alarm_id, priority, data);
        in the same transaction, change the saved window values: `windows` is (values let go:
        (kind, idx, patient, param, n) drops that window's values numbered below n; new values:
        (kind, idx, patient, param, n, t, x))."""
        gone, new = windows or ([], [])
        with self.tx():
            self.db.execute("DELETE FROM rule_timers")
            self.db.executemany(
                "INSERT INTO rule_timers (kind, idx, patient, alarm_id, priority, saved_at, data) "
                "VALUES (?,?,?,?,?,?,?)",
                [(k, i, p, a, pr, at, d) for k, i, p, a, pr, d in rows],
            )
            self.db.executemany(
                "DELETE FROM rule_window_values WHERE kind=? AND idx=? AND patient=? AND param=? AND n<?",
                gone,
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO rule_window_values (kind, idx, patient, param, n, t, x) "
                "VALUES (?,?,?,?,?,?,?)",
                new,
            )

    def forget_rule_timers(self) -> None:
        """Drop every saved timer and window value (they are used once)."""
        with self.tx():
            self.db.execute("DELETE FROM rule_timers")
            self.db.execute("DELETE FROM rule_window_values")

    def rule_timers(self) -> list[tuple[str, int, str, str | None, str | None, float, str]]:
        """The saved timers: (kind, idx, patient, alarm_id, priority, saved_at, data)."""
        return [
            (str(k), int(i), str(p), a, pr, float(at), str(d))
            for k, i, p, a, pr, at, d in self._rows(
                "SELECT kind, idx, patient, alarm_id, priority, saved_at, data FROM rule_timers"
            )
        ]

    def rule_window_values(self) -> list[tuple[Any, ...]]:
        """The saved window values, each window's in order: (kind, idx, patient, param, t, x), as
        stored (a damaged row may hold anything)."""
        return self._rows(
            "SELECT kind, idx, patient, param, t, x FROM rule_window_values ORDER BY kind, idx, patient, param, n"
        )

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _decode(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text)
    return result
