"""With InfluxDB as the store, the embedded store is a dedup ledger: payloads can be left out and
ids older than the dedup window are pruned, and so are derived vitals older than what the nurse
station shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ingest.pipeline import IngestCore, Message
from ingest.service import IngestService
from ingest.store import Store, packed_id
from nabz.config import Config, InfluxConfig, IngestConfig, MqttConfig
from tests.contract_doc import vectors
from tests.servers import Mosquitto, VictoriaMetrics

T = 1_795_597_300.0  # just after the documented examples' times
T0_DOC = 1_795_597_200.0  # 2026-11-25T09:00:00Z, the first documented example's time


def _doc(name: str, received_after: float) -> Message:
    (v,) = [v for v in vectors("mqtt:reading") if v.attrs["name"] == name]
    return Message(v.attrs["topic"], v.body.encode(), T + received_after)


def test_pruning_forgets_old_ids_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    core = IngestCore(store, enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"})
    assert core.handle_batch([_doc("ecg", 1000.0)]).stored == 1
    assert core.handle_batch([_doc("battery", 5000.0)]).stored == 1
    assert store.prune(received_before=T + 2000.0, chunk=1) == 1
    assert core.handle_batch([_doc("battery", 6000.0)]).duplicates == 1  # still inside the window
    assert core.handle_batch([_doc("ecg", 6000.0)]).stored == 1  # forgotten: stored again
    assert store.counter("pruned_messages") == 1


def test_payloads_can_be_left_out(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    core = IngestCore(store, enrolment={"ecg-0001": "p-0001"}, keep_payloads=False)
    assert core.handle_batch([_doc("ecg", 1.0)]).stored == 1
    assert core.handle_batch([_doc("ecg", 2.0)]).duplicates == 1
    assert store.count_readings("ecg") == 5  # counted and deduplicated all the same
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)  # no payload kept


def test_dedup_holds_across_a_switch_of_keep_payloads(tmp_path: Path) -> None:
    """A deployment that moves to InfluxDB (or back) keeps deduplicating what it stored before."""
    store = Store(tmp_path / "s.sqlite")
    enrolment = {"ecg-0001": "p-0001", "oxi-0001": "p-0001"}
    assert IngestCore(store, enrolment=enrolment).handle_batch([_doc("ecg", 1.0)]).stored == 1
    ledger = IngestCore(store, enrolment=enrolment, keep_payloads=False)
    assert ledger.handle_batch([_doc("ecg", 2.0)]).duplicates == 1
    assert ledger.handle_batch([_doc("battery", 3.0)]).stored == 1
    again = IngestCore(store, enrolment=enrolment, keep_payloads=True)
    assert again.handle_batch([_doc("battery", 4.0), _doc("ecg", 4.0)]).duplicates == 2
    assert store.counter("stored_messages") == 2 and store.counter("duplicates") == 3


def test_a_message_is_stored_once_by_workers_in_either_mode(tmp_path: Path) -> None:
    """Two workers, one keeping payloads and one not (a rolling switch of keep_payloads), both
    take the same redelivered message: the second insert sees the first in the other table."""
    first, second = Store(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite")
    with first.batch():
        assert first.add_ledger([("5b0f3c1e9a7d4e55a1c2d3e4f5a6b7c8", T, "ecg", 5)]) == [True]
    row = ("5b0f3c1e9a7d4e55a1c2d3e4f5a6b7c8", T, "s", "gw", "ecg-0001", "p-0001", "ecg", 0, 5, b"{}")
    with second.batch():
        assert second.add_messages([row, ("m2", *row[1:])]) == [False, True]
    with first.batch():
        assert first.add_ledger([("m2", T, "ecg", 5)]) == [False]
    assert first.count_readings() == 10 and first.counter("duplicates") == 2
    # A batch of which some were stored meanwhile, in either table: each says which, and only the
    # new ones count.
    with first.batch():
        ledger_ids = ["m3", "5b0f3c1e9a7d4e55a1c2d3e4f5a6b7c8", "m4", "m2"]
        assert first.add_ledger([(i, T, "ecg", 5) for i in ledger_ids]) == [True, False, True, False]
    assert first.count_readings() == 20 and first.counter("duplicates") == 4
    assert sorted(first.message_ids()) == sorted(["5b0f3c1e9a7d4e55a1c2d3e4f5a6b7c8", "m2", "m3", "m4"])


def test_packed_ids_are_one_to_one(tmp_path: Path) -> None:
    """Gateway ids (hex digits) are kept as the bytes they spell; no two ids share a key."""
    gateway_id = "5b0f3c1e9a7d4e55a1c2d3e4f5a6b7c8"
    assert packed_id(gateway_id) == bytes.fromhex(gateway_id)
    for other in ("5B0F3C1E9A7D4E55A1C2D3E4F5A6B7C8", "abc", "m00000001", "ab cd", "gw-1:42"):
        assert packed_id(other) == other  # not exactly what bytes.hex() writes: kept as text
    assert packed_id("4142") == b"AB"  # stored as a blob; the id "AB" as a text of the same bytes
    store = Store(tmp_path / "s.sqlite")
    ids = ["4142", "AB", "6162", "ab", "ab12", "AB12", gateway_id, gateway_id.upper()]
    with store.batch():
        assert store.add_ledger([(i, T, "ecg", 1) for i in ids]) == [True] * len(ids)
        assert store.add_ledger([(i, T, "ecg", 1) for i in ids]) == [False] * len(ids)
    assert store.seen_many(ids + ["6163", "ac"]) == set(ids)
    assert store.message_ids() == ids


def test_the_ledger_takes_less_than_half_the_disk_of_a_message_row(tmp_path: Path) -> None:
    """What 7 days of ids cost the ingest machine's disk at scale (docs/storage.md)."""

    def bytes_per_row(keep_payloads: bool) -> float:
        store = Store(tmp_path / f"{keep_payloads}.sqlite")
        store.strip_index(keep_payloads)
        rows = [(f"{k % 500:020x}{k // 500:012x}", T, "ecg", 113) for k in range(50_000)]  # 500 gateways
        for i in range(0, len(rows), 2_000):
            with store.batch():
                if keep_payloads:
                    store.add_messages([(m, t, "demo", "gw-0001", "ecg-0001", "p-0001", s, 10**18, n, b"")
                                        for m, t, s, n in rows[i : i + 2_000]])  # fmt: skip
                else:
                    store.add_ledger(rows[i : i + 2_000])
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = ("messages", "ledger", "sqlite_autoindex_messages_1", "sqlite_autoindex_ledger_1")
        marks = ",".join("?" * len(tables))
        (size,) = store.db.execute(
            f"SELECT SUM(pgsize) FROM dbstat WHERE name IN ({marks})", tables
        ).fetchone()
        return float(size) / len(rows)

    as_messages, as_ledger = bytes_per_row(True), bytes_per_row(False)
    assert as_ledger < 0.5 * as_messages, (as_ledger, as_messages)


def _ledger_rows(n: int, received_at: float, start: int = 0) -> list[tuple[str, float, str, int]]:
    return [(f"m{k:08d}", received_at, "ecg", 25) for k in range(start, start + n)]


def test_pruning_takes_old_ids_from_both_tables_within_one_budget(tmp_path: Path) -> None:
    """A store that kept payloads and then stopped has old ids in both tables."""
    store = Store(tmp_path / "s.sqlite")
    with store.batch():
        store.add_messages(
            [(f"p{k}", T, "s", "gw", "ecg-0001", "p-0001", "ecg", k, 25, b"{}") for k in range(30)]
        )
        store.add_ledger(_ledger_rows(30, T))
        store.add_ledger(_ledger_rows(5, T + 3600.0, start=30))
    assert store.prune(T + 1.0, chunk=10, max_rows=40) == 40  # the older table first
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
    assert store.prune(T + 1.0, chunk=10, max_rows=40) == 20  # and on from there
    assert store.message_ids() == [f"m{k:08d}" for k in range(30, 35)]
    assert store.counter("pruned_messages") == 60


def _steps(store: Store, work: Callable[[], int]) -> tuple[int, int]:
    """What `work` returns, and how many thousand SQLite virtual-machine steps it took."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    store.db.set_progress_handler(tick, 1000)
    try:
        return work(), steps[0]
    finally:
        store.db.set_progress_handler(None, 0)


def test_pruning_a_large_ledger_reads_only_what_goes(tmp_path: Path) -> None:
    """At thousands of patients the ledger holds billions of ids; pruning runs every second in the
    worker's loop, so a pass must cost what it deletes, not what the ledger holds."""
    store = Store(tmp_path / "s.sqlite")
    with store.batch():
        store.add_ledger(_ledger_rows(2_000, T))
        store.add_ledger(_ledger_rows(100_000, T + 3600.0, start=2_000))
    gone, steps = _steps(store, lambda: store.prune(T + 1.0, chunk=500))
    assert gone == 2_000
    nothing, idle_steps = _steps(store, lambda: store.prune(T + 1.0, chunk=500))
    assert nothing == 0
    # reading 100,000 rows to find nothing takes ~1,000 thousand steps; the head is a handful
    assert idle_steps <= 5 and steps < 100, (steps, idle_steps)
    assert store.prune(T + 3601.0, chunk=5_000, max_rows=30_000) == 30_000  # a bounded turn
    assert store.counter("pruned_messages") == 32_000
    assert len(store.message_ids()) == 70_000


def test_derived_vitals_older_than_the_window_are_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    core = IngestCore(store, enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"}, keep_payloads=False)
    for name in ("hr", "spo2", "battery"):  # the documented examples' device vitals: 09:00:01, :02, :02
        assert core.handle_batch([_doc(name, 1.0)]).vitals
    second = int(T0_DOC + 2) * 10**9

    def times() -> list[int]:
        return [t for (t,) in store.db.execute("SELECT t_ns FROM vitals ORDER BY rowid")]

    assert times() == [second - 10**9, second, second]
    assert store.prune_vitals(second - 10**9) == 0
    assert store.prune_vitals(second) == 1
    assert times() == [second, second]
    assert store.prune_vitals(second + 1) == 2 and times() == []
    assert store.counter("pruned_vitals") == 3


def test_derived_vitals_keep_their_ids_in_16_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    core = IngestCore(store, enrolment={"oxi-0001": "p-0001"}, keep_payloads=False)
    assert core.handle_batch([_doc("spo2", 1.0)]).vitals
    rows = store.db.execute("SELECT typeof(id), length(id) FROM vitals").fetchall()
    assert rows and all(r == ("blob", 16) for r in rows)


def _vitals_row(t: float) -> tuple[object, ...]:
    return (f"v{t}", "test", "p-0001", "oxi-0001", "device", int(t * 1e9), None, 72.0, 97.0, 0, None, None,
            None, "", None, None, None, None, None)  # fmt: skip


def test_a_running_ingest_with_influxdb_keeps_its_embedded_store_bounded(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """Past the dedup window ids go, past `ingest.vitals_window_h` derived vitals go (InfluxDB has
    them); what is newer stays, for dedup and the nurse station."""
    now = time.time()
    store = Store(tmp_path / "ingest.sqlite")
    with store.batch():
        store.add_ledger(_ledger_rows(3, now - 8 * 86400.0) + _ledger_rows(2, now - 3600.0, start=3))
        store.add_vitals([_vitals_row(now - 8 * 86400.0), _vitals_row(now - 71 * 3600.0)])
    cfg = Config(
        site="test",
        mqtt=MqttConfig(url=mosquitto.url),
        ingest=IngestConfig(store_path=str(store.path), heartbeat_s=0.0),
        influx=InfluxConfig(url=victoria.url, token="t", spill_dir=str(tmp_path / "spill")),
    )
    ingest = IngestService(cfg, store=store, client_id="retention-ingest")
    ingest.start()
    try:
        deadline = time.monotonic() + 15.0
        while (store.counter("pruned_messages"), store.counter("pruned_vitals")) != (3, 1):
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)
    finally:
        ingest.stop()
    assert store.message_ids() == ["m00000003", "m00000004"]
    assert store.db.execute("SELECT id FROM vitals").fetchall() == [(f"v{now - 71 * 3600.0}",)]
