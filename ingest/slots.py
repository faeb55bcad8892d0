"""Ingest worker slots on one box: one process per slot, every slot on the same `workers`, and the
slots a smaller `workers` (or the single worker a larger one) left behind.

- A running slot holds an exclusive flock on ``<store file>.slot-<client id>.lock`` beside the
  embedded store (one deployment's workers share that store), the file saying its pid and
  `workers`. A second process in the same slot would take the
  broker session from the first at every reconnect, each getting part of its patients' streams
  (two analyses, wrong rates, alarms raised twice): it refuses to start instead. So does a
  slot started with another `workers` than the slots running (a rolling change of `workers`
  would have two slots owning one patient).
- A slot left behind keeps, at the broker, a persistent session with its subscriptions: mosquitto
  would go on sharing the readings of the devices it had with their new owners (every other
  message parked in a session nobody starts again), and the single worker's session would queue
  every reading. `retired_slots` names them, from the store's subscription notes, the spill
  directories and the slots' lock files (a slot's lock file goes only once it is retired, so one
  whose drain was cut short is found again); worker 0 drains and ends each (ingest.service),
  under its lock.

`retired_slots` is pure; `SlotLock` is the file shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ingest.partition import slot_client_id

__all__ = ["SlotBusy", "SlotLock", "lock_path", "lock_slots", "retired_slots", "slot_holders"]

_INFIX = ".slot-"
_TAKE_TRIES = 10  # a look at the lock by another starting slot (`slot_holders`) lasts microseconds


class SlotBusy(Exception):
    """The slot is running in another process (or a slot runs with another `workers`)."""


def lock_path(store_path: str | Path, client_id: str) -> Path:
    store = Path(store_path)
    return store.parent / f"{store.name}{_INFIX}{client_id}.lock"


def lock_slots(store_path: str | Path) -> dict[str, Path]:
    """Client id -> lock file, for every slot that has run beside this store and not retired."""
    store = Path(store_path)
    head = f"{store.name}{_INFIX}"
    return {p.name[len(head) : -len(".lock")]: p for p in store.parent.glob(f"{glob.escape(head)}*.lock")}


def retired_slots(base: str, workers: int, seen: Iterable[str]) -> list[str]:
    """Of the client ids `seen` (the store's subscription notes, spill directories, lock files), the slots of
    `base` that this `workers` does not run: ``<base>-<k>`` with k >= workers (or any k with one
    worker), and ``<base>`` itself (the single worker's session) with several."""
    live = {slot_client_id(base, w, workers) for w in range(max(1, workers))}
    return sorted({c for c in seen if _slot_of(base, c) and c not in live})


def _slot_of(base: str, client: str) -> bool:
    """Whether a client id is one of `base`'s slots: ``<base>`` or ``<base>-<k>``."""
    return re.fullmatch(rf"{re.escape(base)}(-\d+)?", client) is not None


@dataclass
class SlotLock:
    path: Path
    fd: int

    @classmethod
    def take(cls, path: Path, workers: int) -> SlotLock:
        """The slot's lock, or SlotBusy naming the process that holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        for attempt in range(_TAKE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 == _TAKE_TRIES:
                    holder = _read(fd)
                    os.close(fd)
                    raise SlotBusy(f"pid {holder[0]}" if holder else "another process") from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {workers}\n".encode(), 0)
        return cls(path, fd)

    def release(self, *, remove: bool = False) -> None:
        if self.fd < 0:
            return
        if remove:  # a retired slot's: nothing will take it again
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = -1


def slot_holders(store_path: str | Path, base: str) -> dict[str, tuple[int, int]]:
    """The slots of `base` running now beside this store: client id -> (pid, workers)."""
    out: dict[str, tuple[int, int]] = {}
    for client, path in lock_slots(store_path).items():
        if not _slot_of(base, client):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held exclusively: running
                holder = _read(fd)
                if holder is not None:
                    out[client] = holder
        finally:
            os.close(fd)
    return out


def _read(fd: int) -> tuple[int, int] | None:
    try:
        pid, workers = os.pread(fd, 64, 0).decode().split()
        return int(pid), int(workers)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
