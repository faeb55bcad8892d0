"""The gateway's on-disk spool: every decoded reading waits here until the broker acknowledges it.

Rules of this file:
- SQLite in WAL mode with synchronous=FULL: a row that `put` returned is on disk, and survives
  `kill -9` and power loss.
- Rows leave only through `ack` (the broker's PUBACK for that message) or the documented overflow
  policy below. Order is insertion order (rowid), which keeps each device's readings in order.
- One owner thread; other threads hand it acknowledgements through a queue (see gateway.service).
- Marks (small named strings: a serial link's position, waveform sequence state) are written in
  the same transaction as the rows they describe, so after a crash they agree exactly.
- Other processes may read the file (`snapshot`, for `nabz gateway status`); only the gateway writes.

Overflow policy (when the payloads waiting exceed `max_bytes`): the oldest raw-waveform rows go
first, since vital-sign readings are small and clinically denser; if only vital signs remain, the
oldest of those go. Every dropped row is counted (`dropped_messages`, `dropped_readings`), logged
with counts, and reported in the gateway status at once, so an overflow is never silent. The
limit counts payload bytes; SQLite's pages, index and write-ahead log add a bounded overhead on
disk (measured in tests/gateway/test_spool.py; docs/gateway.md sizes a Pi's card with it).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from nabz.secrets import create_private

__all__ = ["Spool", "SpooledMessage", "SpoolSnapshot", "snapshot"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    stream TEXT NOT NULL,
    readings INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    device TEXT NOT NULL,
    characteristic TEXT NOT NULL,
    data BLOB NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL, payload BLOB NOT NULL);
"""

_WAVEFORM_STREAMS = ("ecg", "ppg")


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    seq: int
    id: str
    topic: str
    payload: bytes
    readings: int


class Spool:
    """A durable FIFO of MQTT messages waiting for a broker acknowledgement."""

    def __init__(self, path: str | Path, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        create_private(self.path)  # readings are health data: owner only
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # After a checkpoint the write-ahead log is truncated to this, so it cannot grow unbounded
        # while a long backlog drains.
        self.db.execute("PRAGMA journal_size_limit=16777216")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])

    # --- writing -------------------------------------------------------------------------
    def put(self, items: list[tuple[str, str, bytes, str, int]], marks: dict[str, str] | None = None) -> int:
        """Append (id, topic, payload, stream, readings) rows and set `marks`, in one durable
        transaction. Returns the readings the overflow policy dropped to make room (normally 0)."""
        if not items and not marks:
            return 0
        now = time.time()
        with self._tx():
            self.db.executemany(
                "INSERT INTO spool (id, topic, payload, stream, readings, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, t, p, s, r, now) for (i, t, p, s, r) in items],
            )
            if marks:
                self.db.executemany(
                    "INSERT INTO marks (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    list(marks.items()),
                )
        self._depth += len(items)
        self._bytes += sum(len(p) for (_, _, p, _, _) in items)
        if self._bytes > self.max_bytes:
            return self._overflow()
        return 0

    def marks(self, prefix: str = "") -> dict[str, str]:
        """Marks whose name starts with `prefix`."""
        rows = self.db.execute(
            "SELECT name, value FROM marks WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def save_status(self, payload: bytes, at: float) -> None:
        """The latest status message, for `nabz gateway status` (read by another process)."""
        self.db.execute(
            "INSERT INTO status (id, at, payload) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET at = excluded.at, payload = excluded.payload",
            (at, payload),
        )

    def dead_letter(self, device: str, characteristic: str, data: bytes, reason: str, detail: str) -> None:
        """Keep a frame the gateway could not decode, with the reason, and count it."""
        with self._tx():
            self.db.execute(
                "INSERT INTO dead_letter (at, device, characteristic, data, reason, detail) VALUES (?,?,?,?,?,?)",
                (time.time(), device, characteristic, data, reason, detail),
            )
            self._bump("dead_letters", 1)

    # --- reading and acknowledging ---------------------------------------------------------
    def peek(self, after_seq: int, limit: int) -> list[SpooledMessage]:
        """The oldest rows with seq > after_seq, in order."""
        rows = self.db.execute(
            "SELECT seq, id, topic, payload, readings FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [SpooledMessage(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4])) for r in rows]

    def ack(self, seqs: list[int]) -> int:
        """Delete acknowledged rows; returns how many readings they held."""
        if not seqs:
            return 0
        with self._tx():
            readings = 0
            size = 0
            deleted = 0
            for chunk in _chunks(seqs, 500):
                marks = ",".join("?" * len(chunk))
                row = self.db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(readings),0), COALESCE(SUM(LENGTH(payload)),0) "
                    f"FROM spool WHERE seq IN ({marks})",
                    chunk,
                ).fetchone()
                deleted += int(row[0])
                readings += int(row[1])
                size += int(row[2])
                self.db.execute(f"DELETE FROM spool WHERE seq IN ({marks})", chunk)
            self._bump("published_messages", deleted)
            self._bump("published_readings", readings)
        self._depth -= deleted
        self._bytes -= size
        return readings

    # --- state -----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.db.execute("SELECT name, value FROM counters")}

    def dead_letters(self) -> list[tuple[str, str, bytes, str, str]]:
        rows = self.db.execute(
            "SELECT device, characteristic, data, reason, detail FROM dead_letter ORDER BY seq"
        ).fetchall()
        return [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def close(self) -> None:
        self.db.close()

    # --- internals -------------------------------------------------------------------------
    def _overflow(self) -> int:
        dropped_msgs = dropped_readings = 0
        with self._tx():
            while self._bytes > self.max_bytes:
                row = (
                    self.db.execute(
                        "SELECT seq, readings, LENGTH(payload) FROM spool WHERE stream IN (?, ?) ORDER BY seq LIMIT 1",
                        _WAVEFORM_STREAMS,
                    ).fetchone()
                    or self.db.execute(
                        "SELECT seq, readings, LENGTH(payload) FROM spool ORDER BY seq LIMIT 1"
                    ).fetchone()
                )
                if row is None:
                    break
                self.db.execute("DELETE FROM spool WHERE seq = ?", (row[0],))
                dropped_msgs += 1
                dropped_readings += int(row[1])
                self._bytes -= int(row[2])
                self._depth -= 1
            self._bump("dropped_messages", dropped_msgs)
            self._bump("dropped_readings", dropped_readings)
        log.error(
            "spool full (%d bytes > limit %d): dropped the %d oldest messages (%d readings); "
            "%d dropped in all since the spool was created",
            self._bytes,
            self.max_bytes,
            dropped_msgs,
            dropped_readings,
            self.counter("dropped_readings"),
        )
        return dropped_readings

    def _bump(self, name: str, by: int) -> None:
        if by:
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


@dataclass(frozen=True, slots=True)
class SpoolSnapshot:
    """What another process can see of a spool (for `nabz gateway status`)."""

    depth: int
    payload_bytes: int
    file_bytes: int
    oldest_created: float | None
    counters: dict[str, int]
    status_at: float | None
    status: bytes | None


def snapshot(path: str | Path) -> SpoolSnapshot:
    """Read a spool without writing to it (the gateway may be running)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no spool at {p}")
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
    try:
        depth, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created) FROM spool"
        ).fetchone()
        counters = {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}
        row = db.execute("SELECT at, payload FROM status WHERE id = 1").fetchone()
    finally:
        db.close()
    files = sum(f.stat().st_size for f in p.parent.glob(p.name + "*") if f.is_file())
    return SpoolSnapshot(
        depth=int(depth),
        payload_bytes=int(size),
        file_bytes=files,
        oldest_created=float(oldest) if oldest is not None else None,
        counters=counters,
        status_at=float(row[0]) if row else None,
        status=bytes(row[1]) if row else None,
    )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
