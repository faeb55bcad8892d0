"""A disk spill for line protocol the time-series database could not take. No network here.

Rules of this file:
- `append` returns only after the lines are on disk (written and fsynced), so a caller may then
  acknowledge the MQTT messages they came from: while the database is down, data moves from the
  broker's queue to this spill, and nothing is lost if ingest is killed right after.
- Records are replayed oldest first, each exactly as appended; a record is removed only after the
  write that took it succeeded (a crash in between replays it again, and points are idempotent:
  same series and timestamp overwrite).
- On-disk format, one file per segment (``<seq>.spill``), records back to back:
  ``b"NZS1" + uint32 length + uint32 crc32 + payload`` (little-endian; payload = UTF-8 lines joined
  by newlines). A torn record at the end of a segment (a crash mid-append) was never
  acknowledged and is dropped when read.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["Spill"]

_MAGIC = b"NZS1"
_HEAD = struct.Struct("<4sII")
_SEGMENT_BYTES = 64 * 1024 * 1024


class Spill:
    """Append-only segments of line-protocol batches under one directory."""

    def __init__(self, directory: str | Path, *, segment_bytes: int = _SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self._segments = sorted(self.dir.glob("*.spill"))
        self._lines = sum(self._count_lines(p) for p in self._segments)
        self._sealed: set[Path] = set()  # segments being replayed: appends go to a new one

    # --- state -----------------------------------------------------------------------------------
    @property
    def pending_lines(self) -> int:
        """Lines waiting to be replayed."""
        return self._lines

    @property
    def pending_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._segments if p.exists())

    def __bool__(self) -> bool:
        return self._lines > 0

    # --- writing ---------------------------------------------------------------------------------
    def append(self, lines: list[str]) -> None:
        """Put a batch on disk (durable when this returns)."""
        if not lines:
            return
        payload = "\n".join(lines).encode()
        record = _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self.lock:
            path = self._segments[-1] if self._segments else None
            if path is None or path in self._sealed or path.stat().st_size + len(record) > self.segment_bytes:
                seq = int(path.stem) + 1 if path is not None else 1
                path = self.dir / f"{seq:012d}.spill"
                self._segments.append(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, record)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._lines += len(lines)

    # --- replay ----------------------------------------------------------------------------------
    def replay(self, write: Callable[[list[str]], None], *, max_records: int | None = None) -> int:
        """Hand records to `write` oldest first; stop at the first failure (it propagates).

        A segment is deleted once every record in it was written. Returns lines written.
        """
        done = 0
        records = 0
        while True:
            with self.lock:
                if not self._segments:
                    return done
                path = self._segments[0]
                self._sealed.add(path)
            batches = list(self._read(path))
            skip = self._progress(path)
            for i, lines in enumerate(batches):
                if i < skip:
                    continue
                if max_records is not None and records >= max_records:
                    return done
                write(lines)
                records += 1
                done += len(lines)
                with self.lock:
                    self._lines -= len(lines)
                self._save_progress(path, i + 1)
            with self.lock:
                self._segments.remove(path)
                self._sealed.discard(path)
                path.unlink(missing_ok=True)
                self._progress_path(path).unlink(missing_ok=True)

    # --- files -----------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> list[list[str]]:
        if not path.exists():
            return []
        data = path.read_bytes()
        out: list[list[str]] = []
        pos = 0
        while pos + _HEAD.size <= len(data):
            magic, length, crc = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size : pos + _HEAD.size + length]
            if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                break  # a torn record from a crash mid-append: never acknowledged
            out.append(body.decode().split("\n"))
            pos += _HEAD.size + length
        return out

    def _count_lines(self, path: Path) -> int:
        return sum(len(b) for b in self._read(path)[self._progress(path) :])

    @staticmethod
    def _progress_path(path: Path) -> Path:
        return path.with_suffix(".done")

    def _progress(self, path: Path) -> int:
        p = self._progress_path(path)
        return int(p.read_text() or 0) if p.exists() else 0

    def _save_progress(self, path: Path, records: int) -> None:
        tmp = self._progress_path(path).with_suffix(".tmp")
        tmp.write_text(str(records))
        os.replace(tmp, self._progress_path(path))
