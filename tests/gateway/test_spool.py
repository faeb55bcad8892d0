"""The spool keeps every message until acknowledged, in order, across a reopen, and says when it
overflows."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.service import Gateway
from gateway.spool import Spool, snapshot
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz.broker import free_port
from nabz.config import Config, GatewayConfig, MqttConfig


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


def test_a_full_disk_drops_the_oldest_waveforms_and_keeps_spooling_instead_of_crashing(
    tmp_path: Path,
) -> None:
    """The card fills up (logs, another program): SQLite answers 'database or disk is full'. Here
    SQLite's own page limit gives that same error. Before, the gateway crashed on it, and again
    after every restart, with the readings in memory lost each time."""
    spool = Spool(tmp_path / "s.sqlite")  # the configured limit (512 MB) is far away
    spool.put(_rows(5, "hr", size=100))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages + 1200}")  # ~4.8 MB more, then "full"
    for k in range(2000):
        spool.put(_rows(2, "ecg", size=2000, start=100 + 2 * k))  # never raises
    assert spool.counter("disk_full") >= 1 and spool.counter("dropped_messages") > 0
    ids = [m.id for m in spool.peek(0, 10_000)]
    assert ids[:5] == [f"id-{i:06d}" for i in range(5)]  # vital signs kept
    assert ids[-1] == "id-004099"  # the newest readings kept, the oldest waveforms gone
    assert len(ids) == len(set(ids)) == spool.depth  # each row once, and counted as it is
    assert spool.size_bytes == sum(len(m.payload) for m in spool.peek(0, 10_000))
    assert spool.counter("dropped_messages") == 5 + 4000 - len(ids)  # dropped is what is gone
    assert 2 * 1024 * 1024 <= spool.max_bytes < 512 * 1024 * 1024
    published = spool.ack([m.seq for m in spool.peek(0, 10_000)])  # acknowledging still works
    assert published == 10 * len(ids) and spool.depth == 0


def test_on_a_full_disk_a_small_spools_oldest_waveforms_make_room_for_the_newest(tmp_path: Path) -> None:
    """The card is full with the spool holding little (another program filled it): the new
    readings still go in, in place of the oldest waveforms, not counted as lost."""
    spool = Spool(tmp_path / "s.sqlite")
    spool.put(_rows(300, "ecg", size=1000))
    pages = spool.db.execute("PRAGMA page_count").fetchone()[0]
    spool.db.execute(f"PRAGMA max_page_count = {pages + 2}")
    for k in range(20):
        spool.put(_rows(5, "ecg", size=1000, start=1000 + 5 * k))
    ids = [m.id for m in spool.peek(0, 10_000)]
    assert ids[-1] == "id-001099" and len(ids) == len(set(ids)) == spool.depth
    assert spool.counter("dropped_messages") == 300 + 100 - len(ids)


def test_bad_frames_are_kept_with_their_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.dead_letter("ecg-0001", "2a37", b"\x10", "ble_decode", "2a37: truncated")
    assert spool.counter("dead_letters") == 1
    assert spool.dead_letters() == [("ecg-0001", "2a37", b"\x10", "ble_decode", "2a37: truncated")]


def test_the_spool_stays_bounded_on_disk_while_it_overflows(tmp_path: Path) -> None:
    limit = 4 * 1024 * 1024
    spool = Spool(tmp_path / "s.sqlite", max_bytes=limit)
    for batch in range(60):  # 60 batches of 500 ECG-sized messages: 24 MB offered, 4 MB allowed
        spool.put(_rows(500, "ecg", size=800, start=batch * 500))
    spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    on_disk = sum(f.stat().st_size for f in tmp_path.glob("s.sqlite*"))
    assert spool.size_bytes <= limit
    assert spool.counter("dropped_messages") == 30_000 - spool.depth
    assert on_disk < 1.6 * limit, on_disk  # pages, row headers, free pages: measured 1.42x here


def test_an_overflow_is_said_at_once_in_the_status_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1_795_597_200.0]
    cfg = Config(
        site="test",
        mqtt=MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}"),  # nobody there: an outage
        gateway=GatewayConfig(spool_path=str(tmp_path / "s.sqlite"), spool_max_mb=1, status_interval_s=3600),
    )
    gw = Gateway(cfg, VirtualTransport(make_patients(1, 3)[0].devices), clock=lambda: clock[0])
    gw.start()
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.spool"):
            gw.step()  # the birth of the local status
            for _ in range(40):
                clock[0] += 60.0  # a minute of readings per step
                gw.step()
        dropped = gw.stats().dropped
        assert dropped > 0 and gw.spool.size_bytes <= 1024 * 1024
        snap = snapshot(tmp_path / "s.sqlite")
        assert snap.status is not None
        status = json.loads(snap.status)["status"]
        assert status["spool_dropped_readings"] == dropped  # the latest status already says it
        assert any("spool full" in r.message and "dropped" in r.message for r in caplog.records)
    finally:
        gw.stop()
