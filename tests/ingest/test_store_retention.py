"""With InfluxDB as the store, the embedded store is a dedup ledger: payloads can be left out and
ids older than the dedup window are pruned."""

from __future__ import annotations

from pathlib import Path

from ingest.pipeline import IngestCore, Message
from ingest.store import Store
from tests.contract_doc import vectors

T = 1_795_597_300.0  # just after the documented examples' times


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
