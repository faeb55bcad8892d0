"""The spool keeps every message until acknowledged, in order, across a reopen, and says when it
overflows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.spool import Spool


def _rows(
    n: int, stream: str = "ecg", size: int = 100, start: int = 0
) -> list[tuple[str, str, bytes, str, int]]:
    return [(f"id-{start + i:06d}", f"t/{stream}", b"x" * size, stream, 10) for i in range(n)]


def test_messages_come_out_in_order_and_leave_only_when_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows(5))
    first = spool.peek(0, 3)
    assert [m.id for m in first] == ["id-000000", "id-000001", "id-000002"]
    assert spool.ack([first[0].seq, first[2].seq]) == 20
    assert spool.depth == 3
    assert [m.id for m in spool.peek(0, 10)] == ["id-000001", "id-000003", "id-000004"]
    assert spool.counter("published_readings") == 20


def test_unacknowledged_messages_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    # Another process spools 50 messages, acknowledges 20, and is killed without closing anything.
    code = (
        "import os, signal\n"
        "from gateway.spool import Spool\n"
        f"s = Spool({str(path)!r})\n"
        "s.put([(f'id-{i:06d}', 't', b'p', 'hr', 1) for i in range(50)])\n"
        "s.ack([m.seq for m in s.peek(0, 20)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    spool = Spool(path)
    assert spool.depth == 30
    assert [m.id for m in spool.peek(0, 100)] == [f"id-{i:06d}" for i in range(20, 50)]


def test_overflow_drops_oldest_waveforms_first_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1000)
    spool.put(_rows(3, "hr", size=100))
    spool.put(_rows(7, "ecg", size=100, start=3))  # 1000 bytes: at the limit, nothing dropped
    assert spool.counter("dropped_messages") == 0
    spool.put(_rows(2, "ecg", size=100, start=10))  # 1200 bytes: two oldest ECG go
    assert spool.counter("dropped_messages") == 2
    assert spool.counter("dropped_readings") == 20
    ids = [m.id for m in spool.peek(0, 100)]
    assert ids[:3] == ["id-000000", "id-000001", "id-000002"]  # vital signs kept
    assert "id-000003" not in ids and "id-000004" not in ids
    assert spool.size_bytes <= 1000


def test_bad_frames_are_kept_with_their_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.dead_letter("ecg-0001", "2a37", b"\x10", "ble_decode", "2a37: truncated")
    assert spool.counter("dead_letters") == 1
    assert spool.dead_letters() == [("ecg-0001", "2a37", b"\x10", "ble_decode", "2a37: truncated")]
