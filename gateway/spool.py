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
- Held rows: the readings of a device nobody on the server takes yet (gateway.hold) wait in a
  table of their own, `held`, so that they neither hold up the other devices' rows nor are sent
  into nothing: `hold` moves a device's rows there and later rows of the device go there at once,
  `release` moves them back to the end of the spool, in order. Held rows count towards the limit
  and are the first to go when the spool is full, waveforms first (counted like any dropped row,
  and as `dropped_held`): a wearable nobody enrolled must not cost the enrolled ones their outage
  budget, and when every device is held (a server whose ingest has not subscribed again after a
  restart) nothing is dropped that would not have been dropped anyway. Moving rows needs room for a
  copy: on a full card a move is left for later (the rows stay where they are), never made room for.

Overflow policy (when the payloads waiting exceed `max_bytes`): the oldest raw-waveform rows go
first, since vital-sign readings are small and clinically denser; if only vital signs remain, the
oldest of those go. Every dropped row is counted (`dropped_messages`, `dropped_readings`), logged
with counts, and reported in the gateway status at once (held rows: logged once a minute at most,
and reported in the next status), so an overflow is never silent. The
limit counts payload bytes; SQLite's pages, index and write-ahead log add a bounded overhead on
disk (measured in tests/gateway/test_spool.py; docs/gateway.md sizes a Pi's card with it).

A full disk (SQLite's "database or disk is full", whatever filled the card) is an overflow too,
not a crash: the spool gives up the reserve file it keeps beside itself (`spool.reserve`, 4 MB,
the size of the write-ahead log between checkpoints, so that the log can be checkpointed and rows
deleted), lowers its limit to 80 % of what it holds (or half the reserve, if more; 256 kB at
least), drops the oldest rows by the same policy in small transactions, and writes again (if that
is not enough room, the oldest make room for the new batch); the event
is counted (`disk_full`) and logged. Only if nothing can be freed are the new readings counted as
dropped. Once the disk has room for the reserve again (checked each minute), the limit is back.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    prefix TEXT NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    stream TEXT NOT NULL,
    readings INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS held_by_device ON held (device, seq);
CREATE INDEX IF NOT EXISTS held_by_stream ON held (stream, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL, payload BLOB NOT NULL);
"""

_WAVEFORM_STREAMS = ("ecg", "ppg")
_RESERVE_BYTES = 4 * 1024 * 1024
_WAL_LIMIT_BYTES = 16 * 1024 * 1024
_TIGHT_WAL_PAGES = 64  # after a full disk: checkpoint every 64 pages (256 kB of log)
_MIN_LIMIT_BYTES = 256 * 1024  # a full disk lowers the limit, but not below this
_DROP_CHUNK = 64  # rows dropped per transaction by the overflow policy
_MOVE_CHUNK = 500  # rows moved to or from the held rows per transaction
_MOVE_MARK = "heldmove/"  # mark: a device's rows are being moved ("hold" or "release")
_RESERVE_CHECK_S = 60.0


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)


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
        self.max_bytes = max_bytes  # lowered while the disk is full, back once it has room
        self._configured_max = max_bytes
        create_private(self.path)  # readings are health data: owner only
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # After a checkpoint the write-ahead log is truncated to this, so it cannot grow unbounded
        # while a long backlog drains.
        self.db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM held").fetchone()
        self._held_depth, self._held_bytes = int(row[0]), int(row[1])
        # device -> the topic prefix of its readings, for every device with held rows
        self._held: dict[str, str] = dict(
            self.db.execute("SELECT device, MIN(prefix) FROM held GROUP BY device")
        )
        # Devices with rows in both tables: a move a full disk cut short, a hold (`_moving`) or a
        # release (`_releasing`), as the mark written with its chunks says. Each is finished
        # before the other is begun, so a device's rows keep their order. A mark of a device with
        # no held rows left (the overflow policy dropped them) describes no move: all its rows are
        # in the spool, and its later rows go there (its spool rows would otherwise wait for a hold
        # nobody retries).
        moves = {k[len(_MOVE_MARK) :]: v for k, v in self.marks(_MOVE_MARK).items()}
        self._moving = {d for d, v in moves.items() if v == "hold" and d in self._held}
        self._releasing = {d for d, v in moves.items() if v == "release" and d in self._held}
        # Devices the server takes again whose release a full card cut short (the gateway's
        # `Holds.releases`): their held rows are readings someone takes, under the spool's own
        # policy (waveforms first), not the first to go as rows nobody takes (found by review).
        self.taken: Container[str] = ()
        self._held_drops = (0, 0)  # (messages, readings) dropped from the held rows, not logged yet
        self._held_drops_logged_at = float("-inf")
        self._reserve = self.path.with_suffix(".reserve")
        self._reserve_checked = 0.0
        self._keep_reserve()

    # --- writing -------------------------------------------------------------------------
    def put(self, items: list[tuple[str, str, bytes, str, int]], marks: dict[str, str] | None = None) -> int:
        """Append (id, topic, payload, stream, readings) rows and set `marks`, in one durable
        transaction. Returns the readings the overflow policy dropped to make room (normally 0),
        held rows not counted: those are news nobody can act on now (logged once a minute,
        counted in the status), and a wearable held for days at the limit drops one at every
        put (found by review: the status went out every second); a full disk is made room on as
        the module docstring says, never raised."""
        if not items and not marks:
            return 0
        dropped = 0
        try:
            self._insert(items, marks)
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
            dropped = self._make_room()
            try:
                self._insert(items, marks)
            except sqlite3.Error as again:  # rolled back: these rows are not in the table
                if not _is_full(again):
                    raise
                # the newest come first: the oldest make room for them, as much as they need
                need = sum(len(p) for (_, _, p, _, _) in items)
                limit, self.max_bytes = self.max_bytes, max(0, self._bytes + self._held_bytes - 2 * need)
                dropped += self._overflow()
                self.max_bytes = limit
                try:
                    self._insert(items, marks)
                    return dropped
                except sqlite3.Error as last:
                    if not _is_full(last):
                        raise
                lost = sum(r for (_, _, _, _, r) in items)
                log.error("spool: disk full and nothing left to free: %d new readings not kept", lost)
                self._count_lost(len(items), lost)
                return dropped + lost
        if self._bytes + self._held_bytes > self.max_bytes:
            dropped += self._overflow()
        if time.monotonic() - self._reserve_checked >= _RESERVE_CHECK_S:
            self._keep_reserve()
        return dropped

    def _insert(self, items: list[tuple[str, str, bytes, str, int]], marks: dict[str, str] | None) -> None:
        """The rows and marks, committed (or, on any error, not at all). Rows of a held device go
        to the held rows."""
        now = time.time()
        held: list[tuple[str, str, str, str, bytes, str, int, float]] = []
        if self._held:
            rest = []
            for item in items:
                device = self._held_device(item[1])
                if device is None:
                    rest.append(item)
                else:
                    held.append((device, self._held[device], *item, now))
            items = rest
        with self._tx():
            self.db.executemany(
                "INSERT INTO spool (id, topic, payload, stream, readings, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, t, p, s, r, now) for (i, t, p, s, r) in items],
            )
            self.db.executemany(
                "INSERT INTO held (device, prefix, id, topic, payload, stream, readings, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                held,
            )
            if marks:
                self.db.executemany(
                    "INSERT INTO marks (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    list(marks.items()),
                )
        self._depth += len(items)
        self._bytes += sum(len(p) for (_, _, p, _, _) in items)
        self._held_depth += len(held)
        self._held_bytes += sum(len(h[4]) for h in held)

    def _held_device(self, topic: str) -> str | None:
        """The held device a new row belongs to, if any (not one still being moved: its new rows
        go behind its old ones in the spool, to move with them in order)."""
        for device, prefix in self._held.items():
            if topic.startswith(prefix) and device not in self._moving:
                return device
        return None

    # --- held rows (gateway.hold) ----------------------------------------------------------
    @property
    def held_devices(self) -> list[str]:
        return sorted(self._held)

    @property
    def held_depth(self) -> int:
        return self._held_depth

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def hold(self, device: str, prefix: str) -> bool:
        """Hold a device's readings (topics starting with `prefix`): its rows move to the held
        rows in their order (those in flight too: if one is taken after all, `release` names it),
        and its later rows go there at once. Moved in small transactions; reads the spool once. A
        full disk leaves the rest in the spool, and the device's new rows behind them: False
        (call again)."""
        if device in self._releasing and not self._finish_release(device):
            return False
        self._held[device] = prefix
        self._moving.add(device)
        after = 0
        while True:
            seqs = [int(q) for (q,) in self.db.execute(
                "SELECT seq FROM spool WHERE seq > ? AND substr(topic, 1, ?) = ? ORDER BY seq LIMIT ?",
                (after, len(prefix), prefix, _MOVE_CHUNK),
            )]  # fmt: skip
            if not seqs:
                break
            if not self._durably(self._move_to_held, device, prefix, seqs):
                return False
            after = seqs[-1]
        self._moving.discard(device)
        self._moved(device)
        return True

    def _moved(self, device: str) -> None:
        """A move is over: its mark goes (on a full disk it stays, and the next move clears it)."""
        try:
            with self._tx():
                self.db.execute("DELETE FROM marks WHERE name = ?", (_MOVE_MARK + device,))
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise

    def moving(self, device: str) -> bool:
        """Whether a device's rows are in both tables (a move, either way, a full disk cut short)."""
        return device in self._moving or device in self._releasing

    def holding(self, device: str) -> bool:
        """Whether a device's rows are still partly in the spool (a hold a full disk cut short)."""
        return device in self._moving

    def releasing(self, device: str) -> bool:
        """Whether a device's rows are partly back in the spool (a release a full disk cut short)."""
        return device in self._releasing

    def _move_to_held(self, device: str, prefix: str, seqs: list[int]) -> None:
        marks = ",".join("?" * len(seqs))
        with self._tx():
            self._mark_move(device, "hold")
            row = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM spool WHERE seq IN ({marks})", seqs
            ).fetchone()
            self.db.execute(
                "INSERT INTO held (device, prefix, id, topic, payload, stream, readings, created) "
                f"SELECT ?, ?, id, topic, payload, stream, readings, created FROM spool WHERE seq IN ({marks}) "
                "ORDER BY seq",
                [device, prefix, *seqs],
            )
            self.db.execute(f"DELETE FROM spool WHERE seq IN ({marks})", seqs)
        self._depth -= int(row[0])
        self._bytes -= int(row[1])
        self._held_depth += int(row[0])
        self._held_bytes += int(row[1])

    def held_oldest(self, device: str) -> SpooledMessage | None:
        """The oldest held row of a device (its seq numbers the held rows, not the spool)."""
        row = self.db.execute(
            "SELECT seq, id, topic, payload, readings FROM held WHERE device = ? ORDER BY seq LIMIT 1",
            (device,),
        ).fetchone()
        return SpooledMessage(int(row[0]), row[1], row[2], bytes(row[3]), int(row[4])) if row else None

    def release(self, device: str, delivered: Collection[str] = ()) -> bool:
        """A device's readings are taken: its held rows whose message ids are `delivered` (the
        probe, or a row that was in flight when it was held) are gone, counted as published; the
        others move to the end of the spool in their order (small transactions), and its later
        rows stay there. A full disk that nothing frees leaves the rest held: False."""
        if delivered:
            ids = sorted(delivered)
            marks = ",".join("?" * len(ids))

            def forget() -> None:
                with self._tx():
                    gone = self.db.execute(
                        "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(LENGTH(payload)), 0) "
                        f"FROM held WHERE device = ? AND id IN ({marks})",
                        [device, *ids],
                    ).fetchone()
                    self.db.execute(f"DELETE FROM held WHERE device = ? AND id IN ({marks})", [device, *ids])
                    self._bump("published_messages", int(gone[0]))
                    self._bump("published_readings", int(gone[1]))
                self._held_depth -= int(gone[0])
                self._held_bytes -= int(gone[2])

            if not self._durably(forget):
                return False
        prefix = self._held.get(device)
        if device in self._moving and prefix is not None and not self.hold(device, prefix):
            return False  # a hold cut short is finished first: its rows in the spool are the newer
        if not self._finish_release(device):
            return False
        self._held.pop(device, None)
        return True

    def _finish_release(self, device: str) -> bool:
        while True:
            seqs = [int(q) for (q,) in self.db.execute(
                "SELECT seq FROM held WHERE device = ? ORDER BY seq LIMIT ?", (device, _MOVE_CHUNK)
            )]  # fmt: skip
            if not seqs:
                break
            if not self._durably(self._move_to_spool, device, seqs):
                return False
            # Rows in both tables only once a chunk moved: a release a full card stopped at its
            # first chunk left the device "moving" for nothing, and a later hold moved every row
            # back and aside again (found by review).
            self._releasing.add(device)
        self._releasing.discard(device)
        self._moved(device)
        return True

    def _mark_move(self, device: str, way: str) -> None:
        self.db.execute(
            "INSERT INTO marks (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (_MOVE_MARK + device, way),
        )

    def _move_to_spool(self, device: str, seqs: list[int]) -> None:
        marks = ",".join("?" * len(seqs))
        with self._tx():
            self._mark_move(device, "release")
            row = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM held WHERE seq IN ({marks})", seqs
            ).fetchone()
            self.db.execute(
                "INSERT INTO spool (id, topic, payload, stream, readings, created) "
                f"SELECT id, topic, payload, stream, readings, created FROM held WHERE seq IN ({marks}) ORDER BY seq",
                seqs,
            )
            self.db.execute(f"DELETE FROM held WHERE seq IN ({marks})", seqs)
        self._held_depth -= int(row[0])
        self._held_bytes -= int(row[1])
        self._depth += int(row[0])
        self._bytes += int(row[1])

    def _durably(self, write: Callable[..., None], *args: Any) -> bool:
        """Run a write that moves rows; False on a full disk (no room is made for a move: that
        would drop readings to shuffle others, found by review)."""
        try:
            write(*args)
            return True
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
            log.error("spool: the disk is full: held rows not moved now (%s)", exc)
            return False

    def _held_limit(self) -> int:
        """Bytes held rows may take now: what the rest of the spool leaves under the limit."""
        return max(0, self.max_bytes - self._bytes)

    def _drop_held(self, limit: int, exclude: Collection[str] = ()) -> int:
        """Drop the oldest held rows (but those of the devices `exclude`d) until the held rows
        take `limit` bytes at most, or none is left to drop; returns readings.
        Logged one line a minute at most, with counts: a wearable held for days at the limit
        drops a row at every put (found by review: 1,200 lines a minute)."""
        msgs, readings = self._drop_oldest("held", limit, exclude)
        if msgs:  # (a device left with no rows stays held: its later rows still come here)
            msgs, readings = msgs + self._held_drops[0], readings + self._held_drops[1]
            self._held_drops = (msgs, readings)
            if time.monotonic() - self._held_drops_logged_at >= 60.0:
                self._held_drops_logged_at = time.monotonic()
                self._held_drops = (0, 0)
                log.error(
                    "spool: dropped the oldest held messages of devices nobody on the server takes: %d "
                    "(%d readings) since the last such line; held rows may take %d bytes now (%d "
                    "readings dropped in all)",
                    msgs, readings, limit, self.counter("dropped_readings"),
                )  # fmt: skip
        return readings

    def _drop_oldest(self, table: str, limit: int, exclude: Collection[str] = ()) -> tuple[int, int]:
        """The overflow policy on one table ("spool" or "held"): its oldest rows, waveforms first,
        dropped and counted until its payloads take `limit` bytes at most, in small transactions
        (a full disk leaves room for a short write-ahead log only; one big deletion would need
        more than it frees). Stops early, keeping what it dropped, if even that cannot be
        written. Returns (messages, readings) dropped."""
        held = table == "held"
        msgs = readings = 0
        but = f" AND device NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        while (self._held_bytes if held else self._bytes) > limit:
            rows = (
                self.db.execute(
                    f"SELECT seq, readings, LENGTH(payload) FROM {table} WHERE stream IN (?, ?){but} "
                    "ORDER BY seq LIMIT ?",
                    (*_WAVEFORM_STREAMS, *exclude, _DROP_CHUNK),
                ).fetchall()
                or self.db.execute(
                    f"SELECT seq, readings, LENGTH(payload) FROM {table} WHERE 1{but} ORDER BY seq LIMIT ?",
                    (*exclude, _DROP_CHUNK),
                ).fetchall()
            )
            if not rows:
                break
            over = self._held_bytes if held else self._bytes
            chunk, size = [], 0
            for seq, n, length in rows:
                if over - size <= limit:
                    break
                chunk.append((int(seq), int(n)))
                size += int(length)
            try:
                with self._tx():
                    self.db.execute(
                        f"DELETE FROM {table} WHERE seq IN ({','.join('?' * len(chunk))})",
                        [q for q, _ in chunk],
                    )
                    self._bump("dropped_messages", len(chunk))
                    self._bump("dropped_readings", sum(r for _, r in chunk))
                    if held:
                        self._bump("dropped_held", len(chunk))
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise
                log.error("spool: the disk is too full to drop rows from (%s)", exc)
                break
            if held:
                self._held_bytes -= size
                self._held_depth -= len(chunk)
            else:
                self._bytes -= size
                self._depth -= len(chunk)
            msgs += len(chunk)
            readings += sum(r for _, r in chunk)
        return msgs, readings

    def _make_room(self) -> int:
        """The disk is full: free the reserve, lower the limit, drop by the overflow policy."""
        # what the reserve frees (half of it: the write-ahead log needs room too) can hold readings
        freed = _RESERVE_BYTES // 2 if self._reserve.exists() else 0
        self._reserve.unlink(missing_ok=True)
        held = self._bytes + self._held_bytes
        self.max_bytes = max(_MIN_LIMIT_BYTES, min(self.max_bytes, max(freed, int(held * 0.8))))
        log.error(
            "spool: the disk is full (%s); limit lowered to %d bytes of readings, dropping the oldest",
            self.path.parent, self.max_bytes,
        )  # fmt: skip
        # a short write-ahead log, checkpointed often, while the disk is short of room
        self.db.execute(f"PRAGMA wal_autocheckpoint={_TIGHT_WAL_PAGES}")
        self.db.execute(f"PRAGMA journal_size_limit={_TIGHT_WAL_PAGES * 4096}")
        self._checkpoint()
        dropped = self._overflow() if self._bytes + self._held_bytes > self.max_bytes else 0
        try:
            with self._tx():
                self._bump("disk_full", 1)
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
        self._checkpoint()
        return dropped

    def _checkpoint(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("spool: checkpoint failed: %s", exc)

    def _count_lost(self, messages: int, readings: int) -> None:
        try:
            with self._tx():
                self._bump("dropped_messages", messages)
                self._bump("dropped_readings", readings)
        except sqlite3.Error as exc:
            log.error("spool: could not count %d dropped readings: %s", readings, exc)

    def _keep_reserve(self) -> None:
        """Keep `_RESERVE_BYTES` of the disk for a full disk's cleanup, while the disk has room."""
        self._reserve_checked = time.monotonic()
        if self._reserve.exists():
            return
        try:
            if shutil.disk_usage(self._reserve.parent).free < 4 * _RESERVE_BYTES:
                return
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, bytes(_RESERVE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            if self.max_bytes < self._configured_max:
                log.warning("spool: the disk has room again; limit back to %d bytes", self._configured_max)
                self.max_bytes = self._configured_max
                self.db.execute("PRAGMA wal_autocheckpoint=1000")
                self.db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        except OSError as exc:
            log.warning("spool: could not keep a reserve file (%s)", exc)
            self._reserve.unlink(missing_ok=True)

    def set_marks(self, marks: dict[str, str]) -> bool:
        """Set marks that describe no rows (the dead-man's state), durably. On a full disk they
        are not written (False, logged): no reading is dropped for them."""
        try:
            with self._tx():
                self.db.executemany(
                    "INSERT INTO marks (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    list(marks.items()),
                )
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
            log.warning("spool: disk full: marks %s not updated", ", ".join(marks))
            return False
        return True

    def marks(self, prefix: str = "") -> dict[str, str]:
        """Marks whose name starts with `prefix`."""
        rows = self.db.execute(
            "SELECT name, value FROM marks WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def save_status(self, payload: bytes, at: float) -> None:
        """The latest status message, for `nabz gateway status` (read by another process)."""
        try:
            self.db.execute(
                "INSERT INTO status (id, at, payload) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET at = excluded.at, payload = excluded.payload",
                (at, payload),
            )
        except sqlite3.Error as exc:  # a copy for the command line: never worth stopping for
            if not _is_full(exc):
                raise
            log.warning("spool: disk full: the local copy of the status is not updated")

    def dead_letter(self, device: str, characteristic: str, data: bytes, reason: str, detail: str) -> None:
        """Keep a frame the gateway could not decode, with the reason, and count it."""
        try:
            self._dead_letter(device, characteristic, data, reason, detail)
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
            self._make_room()
            try:
                self._dead_letter(device, characteristic, data, reason, detail)
            except sqlite3.Error as again:
                if not _is_full(again):
                    raise
                log.error("spool: disk full: a bad frame from %s (%s) is not kept", device, reason)

    def _dead_letter(self, device: str, characteristic: str, data: bytes, reason: str, detail: str) -> None:
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
        try:
            return self._ack(seqs)
        except sqlite3.Error as exc:
            if not _is_full(exc):
                raise
        readings = 0
        for chunk in _chunks(seqs, 32):  # small transactions: a short log, checkpointed between
            try:
                readings += self._ack(chunk)
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise
                self._make_room()
                readings += self._ack(chunk)
            self._checkpoint()
        return readings

    def _ack(self, seqs: list[int]) -> int:
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
        """Drop by the policy until under the limit: rows nobody takes first (`_drop_held`), then
        the spool's oldest (waveforms first), a taken device's rows still held counting with the
        spool's and going last. Returns the readings dropped that someone takes (news for the
        status: see `put`)."""
        taken = [d for d in self._held if d in self.taken]
        taken_bytes = 0
        if taken:
            marks = ",".join("?" * len(taken))
            (taken_bytes,) = self.db.execute(
                f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM held WHERE device IN ({marks})", taken
            ).fetchone()
        self._drop_held(max(0, self._held_limit() - taken_bytes) + taken_bytes, exclude=taken)
        msgs, readings = self._drop_oldest("spool", max(0, self.max_bytes - taken_bytes))
        if taken and self._bytes + self._held_bytes > self.max_bytes:  # nothing else left to drop
            more, more_readings = self._drop_oldest("held", self._held_limit())
            msgs, readings = msgs + more, readings + more_readings
        if msgs:
            log.error(
                "spool full (%d bytes, limit %d): dropped the %d oldest messages (%d readings); "
                "%d dropped in all since the spool was created",
                self._bytes + self._held_bytes, self.max_bytes, msgs, readings, self.counter("dropped_readings"),
            )  # fmt: skip
        return readings

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
    held: int = 0  # of `depth`: messages of devices nobody on the server takes yet
    held_bytes: int = 0  # of `payload_bytes`


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
        try:  # (a spool from before the held rows has no such table)
            held, held_size, held_oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created) FROM held"
            ).fetchone()
        except sqlite3.OperationalError:
            held, held_size, held_oldest = 0, 0, None
        counters = {str(k): int(v) for k, v in db.execute("SELECT name, value FROM counters")}
        row = db.execute("SELECT at, payload FROM status WHERE id = 1").fetchone()
    finally:
        db.close()
    files = sum(f.stat().st_size for f in p.parent.glob(p.name + "*") if f.is_file())
    oldest = min((t for t in (oldest, held_oldest) if t is not None), default=None)
    return SpoolSnapshot(
        depth=int(depth) + int(held),
        payload_bytes=int(size) + int(held_size),
        file_bytes=files,
        oldest_created=float(oldest) if oldest is not None else None,
        counters=counters,
        status_at=float(row[0]) if row else None,
        status=bytes(row[1]) if row else None,
        held=int(held),
        held_bytes=int(held_size),
    )


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self.db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                self.db.execute("ROLLBACK")
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:  # a full disk at commit: the transaction must not stay open
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
