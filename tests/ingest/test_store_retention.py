"""With InfluxDB as the store, the embedded store is a dedup ledger: payloads can be left out and
ids older than the dedup window are pruned, and so are derived vitals older than what the nurse
station shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ingest.pipeline import IngestCore, Message
from ingest.service import IngestService
from ingest.store import Store
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
    assert store.count_readings("ecg") == 5  # counted and deduplicated all the same
    (payload,) = store.db.execute("SELECT payload FROM messages").fetchone()
    assert payload == b""


def _ledger_rows(
    n: int, received_at: float, start: int = 0
) -> list[tuple[str, float, str, str, str, str, str, int, int, bytes]]:
    return [
        (f"m{k:08d}", received_at, "s", "gw", "ecg-0001", "p-0001", "ecg", int(received_at * 1e9) + k, 25, b"")
        for k in range(start, start + n)
    ]  # fmt: skip


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
        store.add_messages(_ledger_rows(2_000, T))
        store.add_messages(_ledger_rows(100_000, T + 3600.0, start=2_000))
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
        store.add_messages(_ledger_rows(3, now - 8 * 86400.0) + _ledger_rows(2, now - 3600.0, start=3))
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
