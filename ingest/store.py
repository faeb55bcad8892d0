"""The embedded store (SQLite, WAL): readings, derived vitals, dead letters, enrolment, dedup ledger.

Rules of this file:
- A message id is stored once, in one of two tables, each unique by id and each insert checking
  the other table in the same transaction, so a redelivered message cannot be stored twice: `messages` keeps the reading itself (the payload, what the nurse
  station draws strips from); `ledger` keeps only what dedup and the counts need, for ingest with
  InfluxDB as the store (`ingest.keep_payloads = false`, docs/storage.md). A lookup checks both,
  so a store switched from one to the other deduplicates across the switch.
- Every write the ingest does for one batch of MQTT messages happens in one transaction
  (`batch()`), committed before those messages are acknowledged to the broker.
- Dead letters keep the raw payload as received, the topic, the reason and a detail for people.
- `subscriptions` is each ingest worker slot's MQTT subscriptions as far as the broker's session
  goes (written before SUBSCRIBE, confirmed on SUBACK, removed at UNSUBSCRIBE), so that a slot
  knows after a restart what its kept session holds, and the old owner of a moved device when the
  new owner has it (ingest.partition, docs/scale.md).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from nabz.secrets import create_private

__all__ = ["Store", "DeadLetter", "STRIP_INDEX", "packed_id"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

STRIP_INDEX = "messages_patient_t"  # messages by patient, stream and time: what strips are read by

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    site TEXT NOT NULL,
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    patient TEXT NOT NULL,
    stream TEXT NOT NULL,
    t_ns INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    payload BLOB NOT NULL
);
-- ids as packed_id() makes them: 16 bytes for a gateway's 32 hex digits (less than half the
-- size of the ledger as `messages` rows: docs/storage.md), any other id as its text.
CREATE TABLE IF NOT EXISTS ledger (
    id BLOB NOT NULL UNIQUE,
    received_at REAL NOT NULL,
    stream TEXT NOT NULL,
    readings INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vitals (
    id TEXT NOT NULL,
    site TEXT NOT NULL,
    patient TEXT NOT NULL,
    device TEXT NOT NULL,
    source TEXT NOT NULL,
    t_ns INTEGER NOT NULL,
    hr_bpm REAL, pr_bpm REAL, spo2_pct REAL, spo2_calibrated INTEGER,
    pi_pct REAL, sqi REAL, battery_pct INTEGER, flags TEXT NOT NULL,
    pause_s REAL, af_score REAL, hrv_sdnn_ms REAL, hrv_rmssd_ms REAL, resp_bpm REAL
);
CREATE INDEX IF NOT EXISTS vitals_patient_t ON vitals (patient, t_ns);
-- each wearable's latest battery level (the nurse station's tiles at start-up): battery readings
-- come on change, so without it the station walks a day of a patient's rows to find one
CREATE INDEX IF NOT EXISTS vitals_battery ON vitals (patient, device, t_ns) WHERE battery_pct IS NOT NULL;
-- vitals.id is each derived vitals' contract id (fresh, contract.new_id), kept as packed_id()
-- makes it (since 2026-11-26 15:00 UTC; 16 bytes a row less), and looked up by nothing: it has
-- no index, since a unique index on random ids cost ~60 % of each insert (~10 -> 4 µs a row).
-- Files made before 2026-11-26 keep that index (and their text ids); neither does harm.
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
-- gateway: the one gateway whose readings of the device are accepted (NULL: any of the site's)
CREATE TABLE IF NOT EXISTS enrolment (
    device TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    since REAL NOT NULL,
    gateway TEXT
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- client: an ingest worker slot's MQTT client id; filter: a subscription of its session;
-- confirmed: the broker acknowledged it (SUBACK), so it routes that filter's messages there
CREATE TABLE IF NOT EXISTS subscriptions (
    client TEXT NOT NULL,
    filter TEXT NOT NULL,
    confirmed INTEGER NOT NULL,
    PRIMARY KEY (client, filter)
) WITHOUT ROWID;
"""


_VITALS_ADDED = ("pause_s", "af_score", "hrv_sdnn_ms", "hrv_rmssd_ms", "resp_bpm")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: float
    topic: str
    payload: bytes
    reason: str
    detail: str


def packed_id(message_id: str) -> bytes | str:
    """An id as the ledger and the vitals table keep it: lowercase hex digits (what gateways and
    `contract.new_id` make) as the bytes they spell, anything else as it is. One-to-one: only an
    id that `bytes.hex` gives back exactly is packed, and SQLite never finds a blob equal to a
    text."""
    try:
        packed = bytes.fromhex(message_id)
    except ValueError:
        return message_id
    return packed if packed.hex() == message_id else message_id


def _message_id(key: bytes | str) -> str:
    return key.hex() if isinstance(key, bytes) else key


def _add_column(db: sqlite3.Connection, sql: str) -> None:
    try:
        _while_locked(lambda: db.execute(sql))
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


def _while_locked(do: Callable[[], _T], timeout_s: float = 30.0) -> _T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return do()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    """One SQLite file; safe to share between threads of one process (a lock serialises writers)."""

    def __init__(self, path: str | Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        """`synchronous`: "FULL" syncs the log at every commit, so a commit survives a power loss
        (ingest asks for it when the store is the only copy of the readings: no InfluxDB);
        "NORMAL" survives a crash of the process, and a power loss may take the last commits."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous: NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_private(self.path)  # readings are health data: owner only
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # Several workers open one new file at once: switching it to WAL can meet a lock that
        # SQLite's busy timeout does not wait for. Wait here instead.
        _while_locked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.synchronous = synchronous
        fresh = not _while_locked(
            lambda: self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchall()
        )
        _while_locked(lambda: self.db.executescript(_SCHEMA))
        if fresh:
            self.strip_index(True)
        # Files made before the ECG rhythm columns existed get them (SQLite adds NULL columns in place).
        # Several workers open one file at once: another may add a column between the look and
        # the ALTER, so "duplicate column" means done.
        have = {r[1] for r in self.db.execute("PRAGMA table_info(vitals)")}
        for column in _VITALS_ADDED:
            if column not in have:
                _add_column(self.db, f"ALTER TABLE vitals ADD COLUMN {column} REAL")
        if "gateway" not in {
            r[1] for r in self.db.execute("PRAGMA table_info(enrolment)")
        }:  # before 2026-11-27
            _add_column(self.db, "ALTER TABLE enrolment ADD COLUMN gateway TEXT")
        self.lock = threading.RLock()

    def strip_index(self, keep: bool) -> None:
        """Keep or drop the index by patient, stream and time that strips are read with.

        A new store has it. Ingest drops it when the store keeps no payloads (InfluxDB is the
        store): ids then go to the `ledger` table, and the station reads the index's absence as
        "the waveforms are in InfluxDB" (and reads them there) instead of looking for samples
        that are not kept. Dropping it frees its
        share of a `messages` table kept from before. Dropping it from, or building it for, a
        large existing table walks the whole index or table once, holding the write lock: that
        is logged first, and if the lock cannot be had (other workers busy) the index stays as it
        is, logged, until the next start."""
        have = bool(self.db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (STRIP_INDEX,)).fetchall())
        if have == keep:
            return
        rows = self.db.execute("SELECT MAX(rowid) FROM messages").fetchone()[0] or 0
        if rows > 1_000_000:
            log.warning("ingest store: %s the strip index over ~%d messages; this can take a while",
                        "building" if keep else "dropping", rows)  # fmt: skip
        sql = (
            f"CREATE INDEX IF NOT EXISTS {STRIP_INDEX} ON messages (patient, stream, t_ns)"
            if keep
            else f"DROP INDEX IF EXISTS {STRIP_INDEX}"
        )
        try:
            _while_locked(lambda: self.db.execute(sql))
        except sqlite3.OperationalError as exc:
            log.error("ingest store: could not %s the strip index (%s); will try at the next start",
                      "build" if keep else "drop", exc)  # fmt: skip

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        """One transaction for a batch of writes; `durable`: its commit survives a power loss even
        when the store runs with synchronous=NORMAL (what it holds has no other copy)."""
        with self.lock:
            if durable and self.synchronous != "FULL":
                self.db.execute("PRAGMA synchronous=FULL")
            try:
                with self._transaction():
                    yield
            finally:
                if durable and self.synchronous != "FULL":
                    self.db.execute(f"PRAGMA synchronous={self.synchronous}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            try:
                self.db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (busy, disk full, I/O) can leave the transaction open; left so,
                # every later BEGIN would fail ("within a transaction") and nothing be stored again.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    # --- readings -----------------------------------------------------------------------------
    def seen_many(self, message_ids: Sequence[str]) -> set[str]:
        """Which of these message ids are stored already, in either table (a query per 500 ids)."""
        found: set[str] = set()
        with self.lock:
            for i in range(0, len(message_ids), 500):
                part = message_ids[i : i + 500]
                marks = ",".join("?" * len(part))
                found.update(
                    r[0] for r in self.db.execute(f"SELECT id FROM messages WHERE id IN ({marks})", part)
                )
                keys = [packed_id(x) for x in part]
                found.update(
                    _message_id(r[0])
                    for r in self.db.execute(f"SELECT id FROM ledger WHERE id IN ({marks})", keys)
                )
        return found

    def add_messages(
        self, rows: Sequence[tuple[str, float, str, str, str, str, str, int, int, bytes]]
    ) -> list[bool]:
        """Store reading messages (inside `batch()`); per row, False if its id was stored already.

        A row is (id, received_at, site, gateway, device, patient, stream, t_ns, readings, payload).
        """
        stored: list[bool] = []
        readings = 0
        for row in rows:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO messages (id, received_at, site, gateway, device, patient, stream, "
                "t_ns, readings, payload) SELECT ?,?,?,?,?,?,?,?,?,? "
                "WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE id = ?)",
                (*row, packed_id(row[0])),
            )
            stored.append(cur.rowcount == 1)
            if stored[-1]:
                readings += row[8]
        self._count_stored(stored, readings)
        return stored

    def add_ledger(self, rows: Sequence[tuple[str, float, str, int]]) -> list[bool]:
        """Record reading messages without their payload (inside `batch()`); per row, False if its
        id was recorded already. A row is (id, received_at, stream, readings)."""
        stored: list[bool] = []
        readings = 0
        for message_id, received_at, stream, n in rows:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO ledger (id, received_at, stream, readings) SELECT ?,?,?,? "
                "WHERE NOT EXISTS (SELECT 1 FROM messages WHERE id = ?)",
                (packed_id(message_id), received_at, stream, n, message_id),
            )
            stored.append(cur.rowcount == 1)
            if stored[-1]:
                readings += n
        self._count_stored(stored, readings)
        return stored

    def _count_stored(self, stored: list[bool], readings: int) -> None:
        n = sum(stored)
        self.bump("stored_messages", n)
        self.bump("stored_readings", readings)
        self.bump("duplicates", len(stored) - n)

    def prune(self, received_before: float, *, chunk: int = 5000, max_rows: int | None = None) -> int:
        """Forget stored messages received before this time (epoch s). Returns how many went.

        The oldest rows come first in rowid order (rows are appended as they are received), so
        this walks from the head and stops at the first row received at or after the cutoff:
        each pass reads what it deletes and one row more, however large the ledger (a
        query for ``received_at < ?`` would read every row of it to find that nothing is left).
        A chunk per transaction, so that writers are never held up long. A row stamped later
        than rows after it (ingest's clock stepped back) holds those back until it is old too.
        With `max_rows` it stops after about that many, and the next call goes on. Both
        tables of ids (`messages`, `ledger`) are pruned, `messages` first."""
        gone = 0
        for table in ("messages", "ledger"):
            left = None if max_rows is None else max_rows - gone
            if left is None or left > 0:
                gone += self._prune_head(
                    table, "received_at", received_before, chunk, left, "pruned_messages"
                )
        return gone

    def prune_vitals(self, t_before_ns: int, *, chunk: int = 5000, max_rows: int | None = None) -> int:
        """Forget derived vitals timed before this (ns since the epoch), from the head of the
        table as `prune` does: vitals are appended in about time order (a gateway's backlog after
        an outage comes later, and goes once the rows before it have gone)."""
        return self._prune_head("vitals", "t_ns", t_before_ns, chunk, max_rows, "pruned_vitals")

    def _prune_head(
        self, table: str, column: str, before: float, chunk: int, max_rows: int | None, counter: str
    ) -> int:
        with self.lock:  # the common case, nothing old yet: one row read, no write transaction
            head = self.db.execute(f"SELECT {column} < ? FROM {table} ORDER BY rowid LIMIT 1", (before,))
            if not any(is_old for (is_old,) in head.fetchall()):
                return 0
        gone = 0
        while max_rows is None or gone < max_rows:
            with self.batch():
                cur = self.db.execute(
                    f"SELECT rowid, {column} < ? FROM {table} ORDER BY rowid LIMIT ?", (before, chunk)
                )
                old, last = 0, 0
                for rowid, is_old in cur:  # read lazily: a pass with nothing to do reads one row
                    if not is_old:
                        break
                    old, last = old + 1, rowid
                cur.close()
                if old:
                    self.db.execute(f"DELETE FROM {table} WHERE rowid <= ?", (last,))
                    self.bump(counter, old)
            gone += old
            if old < chunk:
                break
        return gone

    def add_vitals(self, rows: Sequence[tuple[object, ...]]) -> None:
        self.db.executemany(
            "INSERT INTO vitals (id, site, patient, device, source, t_ns, hr_bpm, pr_bpm, spo2_pct, "
            "spo2_calibrated, pi_pct, sqi, battery_pct, flags, pause_s, af_score, hrv_sdnn_ms, hrv_rmssd_ms, "
            "resp_bpm) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ((packed_id(str(r[0])), *r[1:]) for r in rows),
        )

    def dead_letter(self, topic: str, payload: bytes, reason: str, detail: str, received_at: float) -> None:
        self.db.execute(
            "INSERT INTO dead_letter (received_at, topic, payload, reason, detail) VALUES (?,?,?,?,?)",
            (received_at, topic, payload, reason, detail),
        )
        self.bump("dead_letters", 1)
        self.bump(f"dead_letters.{reason}", 1)

    def dead_letters(self) -> list[DeadLetter]:
        with self.lock:
            rows = self.db.execute(
                "SELECT received_at, topic, payload, reason, detail FROM dead_letter ORDER BY seq"
            ).fetchall()
        return [DeadLetter(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def count_readings(self, stream: str | None = None) -> int:
        """Readings in the messages stored (and not pruned yet), of one stream or all."""
        where, args = ("WHERE stream = ?", (stream,)) if stream is not None else ("", ())
        with self.lock:
            row = self.db.execute(
                f"SELECT (SELECT COALESCE(SUM(readings), 0) FROM messages {where}) "
                f"+ (SELECT COALESCE(SUM(readings), 0) FROM ledger {where})",
                args * 2,
            ).fetchone()
        return int(row[0])

    def message_ids(self) -> list[str]:
        """The ids of the messages stored (and not pruned yet), each table in the order stored."""
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT id FROM messages ORDER BY rowid")] + [
                _message_id(r[0]) for r in self.db.execute("SELECT id FROM ledger ORDER BY rowid")
            ]

    # --- enrolment -----------------------------------------------------------------------------
    def enrol(
        self, device: str, patient: str, gateway: str | None = None, *, any_gateway: bool = False
    ) -> None:
        """Enrol `device` to `patient`. With `gateway`, only that gateway's readings of the device
        are accepted (ingest dead-letters others as `wrong_gateway`); `any_gateway` lifts that;
        with neither, a binding is kept while the patient stays the same and dropped when the
        device goes to another patient (another home)."""
        if gateway is not None and any_gateway:
            raise ValueError("a gateway, or any gateway: not both")
        explicit = gateway is not None or any_gateway
        with self.lock:
            self.db.execute(
                "INSERT INTO enrolment (device, patient, since, gateway) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(device) DO UPDATE SET patient = excluded.patient, since = excluded.since, "
                "gateway = CASE WHEN ? THEN excluded.gateway WHEN enrolment.patient = excluded.patient "
                "THEN enrolment.gateway END",
                (device, patient, time.time(), gateway, explicit),
            )

    def enrolment(self) -> dict[str, str]:
        with self.lock:
            return {r[0]: r[1] for r in self.db.execute("SELECT device, patient FROM enrolment")}

    def enrolment_gateways(self) -> dict[str, str]:
        """device -> the gateway it is bound to, for the devices that are."""
        with self.lock:
            rows = self.db.execute("SELECT device, gateway FROM enrolment WHERE gateway IS NOT NULL")
            return {r[0]: r[1] for r in rows}

    # --- the ingest workers' MQTT subscriptions -------------------------------------------------
    def subscriptions(self, client: str) -> dict[str, bool]:
        """A worker slot's subscriptions: filter -> confirmed by the broker."""
        with self.lock:
            rows = self.db.execute("SELECT filter, confirmed FROM subscriptions WHERE client = ?", (client,))
            return {r[0]: bool(r[1]) for r in rows}

    def note_subscriptions(
        self,
        client: str,
        *,
        added: Collection[str] = (),
        confirmed: Collection[str] = (),
        removed: Collection[str] = (),
        unconfirm_all: bool = False,
    ) -> None:
        """Record, in one transaction, what a worker slot asks of the broker: `added` before it
        subscribes (unconfirmed), `confirmed` when the broker has acknowledged them, `removed`
        as it unsubscribes; `unconfirm_all` first when its session at the broker is new (empty)."""
        if not (added or confirmed or removed or unconfirm_all):
            return
        with self.batch():
            if unconfirm_all:
                self.db.execute("UPDATE subscriptions SET confirmed = 0 WHERE client = ?", (client,))
            self.db.executemany(
                "INSERT OR IGNORE INTO subscriptions (client, filter, confirmed) VALUES (?, ?, 0)",
                ((client, f) for f in added),
            )
            self.db.executemany(
                "UPDATE subscriptions SET confirmed = 1 WHERE client = ? AND filter = ?",
                ((client, f) for f in confirmed),
            )
            self.db.executemany(
                "DELETE FROM subscriptions WHERE client = ? AND filter = ?", ((client, f) for f in removed)
            )

    def subscription_clients(self) -> list[str]:
        """Every worker slot with subscriptions noted."""
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT client FROM subscriptions")]

    def confirmed_subscriptions(self, filters: Collection[str]) -> set[tuple[str, str]]:
        """(client, filter) for each of these filters that a slot's session has, confirmed."""
        out: set[tuple[str, str]] = set()
        wanted = list(filters)
        with self.lock:
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                marks = ",".join("?" * len(part))
                rows = self.db.execute(
                    f"SELECT client, filter FROM subscriptions WHERE confirmed = 1 AND filter IN ({marks})",
                    part,
                )
                out.update((r[0], r[1]) for r in rows)
        return out

    # --- counters --------------------------------------------------------------------------
    def bump(self, name: str, by: int) -> None:
        if by:
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counter(self, name: str) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def counters(self) -> dict[str, int]:
        with self.lock:
            return {str(k): int(v) for k, v in self.db.execute("SELECT name, value FROM counters")}

    def close(self) -> None:
        with self.lock:
            self.db.close()
