"""A disk spill for line protocol the time-series database could not take. No network here.

Rules of this file:
- `append` returns only after the whole record is on disk (every byte written, fsynced, and the
  directory fsynced when the segment is new), so a caller may then acknowledge the MQTT messages
  it came from. If any of that fails (a full disk), the file is cut back to its size before the
  append and the error propagates: nothing half-written is ever reported safe.
- Records are replayed oldest first, each exactly as appended; a record is marked replayed only
  after the write that took it succeeded (a crash in between replays it again, and points are
  idempotent: same series and timestamp overwrite). A segment is deleted once all of it is.
- One process per directory: `Spill` holds an exclusive flock on ``<dir>/spill.lock`` while open
  and refuses to open (`SpillBusy`) when another holds it. Two writers over the same segments
  would delete each other's records.
- On-disk format, one file per segment (``<seq>.spill``, `seq` increasing and never reused: the
  larger of the last one + 1 and the wall clock in microseconds), records back to back:
  ``b"NZS" + state + uint32 length + uint32 crc32 + payload`` (little-endian; payload = UTF-8
  lines joined by newlines; state ``b"1"`` waiting, ``b"R"`` replayed). Replay progress is that
  one byte, rewritten in place: it needs no new disk block, so a spill can drain on a full disk.
- Bytes that are not a whole record (a crash mid-append) were never acknowledged. At open they
  are cut off the end of a segment, so later appends are never stranded behind them; torn bytes
  between records (spills written by older versions) are skipped, and reading resumes at the
  next valid record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spill", "SpillBusy"]

log = logging.getLogger(__name__)

_MAGIC = b"NZS1"  # a record waiting to be replayed
_REPLAYED = b"NZSR"  # the same record once the database took it
_STATE_AT = 3  # offset of the state byte in the header
_HEAD = struct.Struct("<4sII")
_SEGMENT_BYTES = 64 * 1024 * 1024
_LOCK_NAME = "spill.lock"


class SpillBusy(Exception):
    """Another process has this spill directory open."""


@dataclass(frozen=True, slots=True)
class _Record:
    offset: int
    lines: list[str]
    replayed: bool


@dataclass(frozen=True, slots=True)
class _Scan:
    records: list[_Record]
    end: int  # just past the last valid record
    skipped: int  # bytes of torn records before `end`


class Spill:
    """Append-only segments of line-protocol batches under one directory."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = _SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self._replaying = threading.Lock()  # one replay at a time: each record is marked once
        self._lock_fd: int | None = _lock_directory(self.dir)
        try:
            self._last_seq = 0
            self._pending: dict[Path, int] = {}  # segment -> lines not replayed yet, oldest first
            self._lines = 0  # their sum, kept for readers on other threads
            self._sealed: set[Path] = set()  # segments being replayed: appends go to a new one
            self._open_segments()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory (another process may then open it)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state -----------------------------------------------------------------------------------
    @property
    def pending_lines(self) -> int:
        """Lines waiting to be replayed."""
        return self._lines

    @property
    def pending_bytes(self) -> int:
        with self.lock:
            segments = list(self._pending)
        return sum(p.stat().st_size for p in segments if p.exists())

    def __bool__(self) -> bool:
        return self._lines > 0

    # --- writing ---------------------------------------------------------------------------------
    def append(self, lines: list[str]) -> None:
        """Put a batch on disk (durable when this returns; on any error nothing of it is kept)."""
        if not lines:
            return
        payload = "\n".join(lines).encode()
        record = _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self.lock:
            last = next(reversed(self._pending), None)
            new = (
                last is None or last in self._sealed or last.stat().st_size + len(record) > self.segment_bytes
            )
            path = self.dir / f"{self._next_seq():020d}.spill" if new or last is None else last
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                before = os.fstat(fd).st_size
                try:
                    _write_all(fd, record)
                    os.fsync(fd)
                    if new:
                        _fsync_dir(self.dir)  # the new segment's name must survive a power cut too
                except BaseException:
                    self._undo(fd, path, before, new)
                    raise
            finally:
                os.close(fd)
            self._pending[path] = self._pending.get(path, 0) + len(lines)
            self._lines += len(lines)

    def _undo(self, fd: int, path: Path, size: int, new: bool) -> None:
        """Take a failed append back off the disk, so that the error the caller sees is true."""
        try:
            if new:
                path.unlink()
                _fsync_dir(self.dir)
            else:
                os.ftruncate(fd, size)  # frees blocks: cannot fail for want of space
                os.fsync(fd)
        except OSError as exc:
            # The torn tail stays; no later record goes behind it (it is skipped when read, and
            # cut off at the next open).
            log.error("spill: could not take back a failed append to %s: %s", path, exc)
            if not new:
                self._sealed.add(path)

    def _next_seq(self) -> int:
        # Never reused, even once the spill was empty and ingest restarted: no file left behind
        # by an earlier segment of the same name (a crash between two unlinks) can apply to it.
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    # --- replay ----------------------------------------------------------------------------------
    def replay(self, write: Callable[[list[str]], None], *, max_records: int | None = None) -> int:
        """Hand records to `write` oldest first; stop at the first failure (it propagates).

        A segment is deleted once every record in it was written. Returns lines written.
        """
        with self._replaying:
            return self._replay(write, max_records)

    def _replay(self, write: Callable[[list[str]], None], max_records: int | None) -> int:
        done = 0
        records = 0
        while True:
            with self.lock:
                path = next(iter(self._pending), None)
                if path is None:
                    return done
                self._sealed.add(path)
            waiting = [r for r in _scan(path).records if not r.replayed] if path.exists() else []
            if waiting:
                fd = os.open(path, os.O_WRONLY)  # not O_APPEND: the state byte is rewritten in place
                try:
                    for rec in waiting:
                        if max_records is not None and records >= max_records:
                            return done
                        write(rec.lines)
                        records += 1
                        done += len(rec.lines)
                        # Not fsynced: a mark lost in a crash only replays the record again.
                        os.pwrite(fd, _REPLAYED[_STATE_AT:], rec.offset + _STATE_AT)
                        with self.lock:
                            self._pending[path] -= len(rec.lines)
                            self._lines -= len(rec.lines)
                finally:
                    os.close(fd)
            with self.lock:
                # Whatever the count said, the segment is gone: the count follows the files.
                self._lines -= self._pending.pop(path)
                self._sealed.discard(path)
                path.unlink(missing_ok=True)

    # --- files -----------------------------------------------------------------------------------
    def _open_segments(self) -> None:
        for stale in [*self.dir.glob("*.done"), *self.dir.glob("*.tmp")]:
            # Progress files of older versions: a stale one could skip new records, and replaying
            # a segment again from its start is harmless (points are idempotent).
            self._last_seq = max(self._last_seq, _seq(stale) or 0)
            stale.unlink()
        segments: list[tuple[int, Path]] = []
        for path in self.dir.glob("*.spill"):
            seq = _seq(path)
            if seq is None:
                log.error("spill: %s is not a segment name; left alone, not replayed", path)
                continue
            segments.append((seq, path))
        for seq, path in sorted(segments):
            self._last_seq = max(self._last_seq, seq)
            scan = _scan(path)
            size = path.stat().st_size
            if scan.end < size:
                log.warning("spill: cutting %d torn bytes off the end of %s", size - scan.end, path)
                with path.open("r+b") as f:
                    f.truncate(scan.end)
                    os.fsync(f.fileno())
            if scan.skipped:
                log.warning("spill: %d torn bytes inside %s are skipped", scan.skipped, path)
            lines = sum(len(r.lines) for r in scan.records if not r.replayed)
            if lines:
                self._pending[path] = lines
                self._lines += lines
            else:  # replayed to the end (a crash before the delete) or holds no whole record
                path.unlink()


def _lock_directory(directory: Path) -> int:
    path = directory / _LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpillBusy(
            f"spill directory {directory} is in use by another process (pid {holder}); "
            "each ingest worker needs a spill directory of its own"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:  # the holder's pid, for the message above; not needed for the lock itself
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(28, "No space left on device (short write)")
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seq(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None


def _scan(path: Path) -> _Scan:
    """The valid records of a segment, skipping any torn bytes between them."""
    data = path.read_bytes()
    out: list[_Record] = []
    pos = end = skipped = 0
    while pos + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + length]
        if magic in (_MAGIC, _REPLAYED) and len(body) == length and zlib.crc32(body) == crc:
            replayed = magic == _REPLAYED
            out.append(_Record(pos, [] if replayed else body.decode().split("\n"), replayed))
            skipped += pos - end
            pos = end = pos + _HEAD.size + length
            continue
        nxt = data.find(_MAGIC[:_STATE_AT], pos + 1)  # a torn record: resume at the next header
        if nxt < 0:
            break
        pos = nxt
    return _Scan(out, end, skipped)
