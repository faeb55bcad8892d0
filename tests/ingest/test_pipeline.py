"""IngestCore on the embedded store: every message ends stored once, as a duplicate, or in dead
letter with its reason; derived vitals come from the stored waveforms."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gateway.decode import Decoder, Notification
from hardware import MonitoredPatient, make_patients
from ingest.pipeline import IngestCore, Message, _Accepted, _merge_contiguous
from ingest.store import Store
from nabz import contract
from nabz.cli import main
from nabz.contract import Rejected
from tests.contract_doc import vectors

T0_US = 1_795_597_200_000_000


def _seconds(patient: MonitoredPatient, seconds: int) -> list[list[Message]]:
    """A simulated patient's messages as its gateway publishes them, second by second."""
    decoder = Decoder("demo", "gw-0001")
    out = []
    for second in range(seconds):
        batch = []
        for device in patient.devices:
            for n in device.advance(1.0):
                r = decoder.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + second * 1_000_000))
                assert not isinstance(r, Rejected)
                topic = contract.reading_topic("demo", "gw-0001", r.device, contract.stream_of(r))
                batch.append(Message(topic, contract.encode(r), 0.0))
        out.append(batch)
    return out


def _doc(name: str) -> Message:
    (v,) = [v for v in vectors("mqtt:reading") if v.attrs["name"] == name]
    return Message(v.attrs["topic"], v.body.encode(), 0.0)


def test_redelivered_messages_are_stored_once(tmp_path: Path) -> None:
    core = IngestCore(Store(tmp_path / "s.sqlite"), enrolment={"ecg-0001": "p-0001"})
    first = core.handle_batch([_doc("ecg"), _doc("ecg")])  # QoS 1 duplicate within one batch
    again = core.handle_batch([_doc("ecg")])  # and after a reconnect
    assert (first.stored, first.duplicates, again.stored, again.duplicates) == (1, 1, 0, 1)
    assert core.store.count_readings() == 5
    assert core.store.counter("duplicates") == 2


def test_malformed_messages_are_dead_lettered_with_reason_and_raw_payload(tmp_path: Path) -> None:
    core = IngestCore(Store(tmp_path / "s.sqlite"), enrolment={"ecg-0001": "p-0001"})
    topic = "nabz/v1/demo/gw/gw-0001/ecg-0001/hr"
    good = _doc("hr").payload
    bad = {
        "not_json": good[:40],
        "not_object": b"[1, 2, 3]",
        "unsupported_version": good.replace(b'"v": 1', b'"v": 9'),
        "missing_id": good.replace(b'"id": "0d6e1f2a3b4c4d5e8f6a7b8c9d0e1f2a", ', b""),
        "schema": good.replace(b'"hr_bpm": 72', b'"hr_bpm": "72"'),
        "out_of_range": good.replace(b'"hr_bpm": 72', b'"hr_bpm": 9000'),
        "topic_mismatch": good.replace(b'"device": "ecg-0001"', b'"device": "ecg-0009"'),
        "bad_topic": None,
        "too_large": b" " * (300 * 1024),
    }
    batch = [
        Message("nabz/v1/demo/gw/gw-0001" if reason == "bad_topic" else topic, payload or good, 1.0)
        for reason, payload in bad.items()
    ]
    result = core.handle_batch(batch)
    assert result.dead_lettered == len(bad) and result.stored == 0
    letters = core.store.dead_letters()
    assert [d.reason for d in letters] == list(bad)
    assert letters[0].payload == good[:40]
    assert core.store.counter("dead_letters.schema") == 1


def test_a_device_that_is_not_enrolled_is_kept_not_stored_as_anybodys(tmp_path: Path) -> None:
    core = IngestCore(Store(tmp_path / "s.sqlite"))
    result = core.handle_batch([_doc("battery")])
    assert result.stored == 0
    assert [d.reason for d in core.store.dead_letters()] == ["not_enrolled"]
    core.store.enrol("oxi-0001", "p-0001")
    assert core.handle_batch([_doc("battery")]).stored == 1  # enrolment is picked up without a restart


def test_vitals_are_derived_from_simulated_waveforms(tmp_path: Path) -> None:
    (patient,) = make_patients(1, seed=3)
    enrolment = {d.device_id: patient.patient_id for d in patient.devices}
    core = IngestCore(Store(tmp_path / "s.sqlite"), enrolment=enrolment)
    vitals = []
    for batch in _seconds(patient, 15):
        vitals += core.handle_batch(batch).vitals
    ecg_hr = [v.hr_bpm for v in vitals if v.source == "ecg" and v.hr_bpm is not None]
    spo2 = [v for v in vitals if v.source == "ppg" and v.spo2_pct is not None]
    assert ecg_hr and abs(ecg_hr[-1] - patient.patient.hr_bpm) < 5
    assert spo2 and abs(spo2[-1].spo2_pct - patient.patient.spo2_pct) < 2  # type: ignore[operator]
    assert all(not v.spo2_calibrated for v in spo2)


def test_a_configured_spo2_calibration_is_applied_and_reported(tmp_path: Path) -> None:
    (patient,) = make_patients(1, seed=3)
    decoder = Decoder("demo", "gw-0001")
    enrolment = {d.device_id: patient.patient_id for d in patient.devices}
    table = [(0.3, 100.0), (0.6, 97.0), (1.2, 80.0)]  # as fitted against a reference oximeter
    core = IngestCore(Store(tmp_path / "s.sqlite"), enrolment=enrolment, spo2_calibration=table)
    vitals = []
    for second in range(12):
        batch = []
        for n in patient.oximeter.advance(1.0):
            r = decoder.decode(Notification(n.device_id, n.char_uuid, n.data, T0_US + second * 1_000_000))
            assert not isinstance(r, Rejected)
            batch.append(
                Message(
                    contract.reading_topic("demo", "gw-0001", r.device, contract.stream_of(r)),
                    contract.encode(r),
                    0.0,
                )
            )
        vitals += core.handle_batch(batch).vitals
    ppg = [v for v in vitals if v.source == "ppg" and v.spo2_pct is not None]
    assert ppg and all(v.spo2_calibrated for v in ppg)
    try:
        IngestCore(Store(tmp_path / "t.sqlite"), spo2_calibration=[(0.6, 97.0), (0.3, 100.0)])
    except ValueError as exc:
        assert "increasing" in str(exc)
    else:
        raise AssertionError("a table with R decreasing must be refused")


def _from(msg: Message, gateway: str, new_id: str) -> Message:
    """The same reading as published by another gateway's account (its own topic), under a new id."""
    data = json.loads(msg.payload)
    old = data["gateway"]
    data.update(gateway=gateway, id=new_id)
    return Message(
        msg.topic.replace(f"/gw/{old}/", f"/gw/{gateway}/"), json.dumps(data).encode(), msg.received_at
    )


def test_a_device_bound_to_its_home_gateway_is_not_taken_from_another(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.enrol("oxi-0001", "p-0001", "gw-0001")
    core = IngestCore(
        store, enrolment={"oxi-0001": "p-0001"}
    )  # the configuration's enrolment keeps the binding
    battery = _doc("battery")  # published by gw-0001
    stranger = _from(battery, "gw-0002", "1" * 32)
    result = core.handle_batch([stranger, battery])
    assert (result.stored, result.dead_lettered) == (1, 1)
    (letter,) = store.dead_letters()
    assert letter.reason == "wrong_gateway" and letter.payload == stranger.payload
    assert "enrolled at gateway gw-0001, not gw-0002" in letter.detail

    # The wearable goes to another home: enrolled again there, it is taken from the new gateway
    # at once (no restart), and no longer from the old one.
    store.enrol("oxi-0001", "p-0001", gateway="gw-0002")
    assert core.handle_batch([_from(battery, "gw-0002", "2" * 32)]).stored == 1
    assert core.handle_batch([_from(battery, "gw-0001", "3" * 32)]).dead_lettered == 1

    # Enrolled to another patient without a gateway: the binding goes with the old patient.
    store.enrol("oxi-0001", "p-0002")
    assert core.handle_batch([_from(battery, "gw-0001", "4" * 32)]).stored == 1
    store.enrol("oxi-0001", "p-0002", "gw-0003")
    store.enrol("oxi-0001", "p-0002", any_gateway=True)
    assert core.handle_batch([_from(battery, "gw-0009", "5" * 32)]).stored == 1
    assert store.counter("dead_letters.wrong_gateway") == 2


def test_nabz_enrol_binds_a_device_to_a_gateway_from_the_command_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "nabz.toml"
    config.write_text(f'[ingest]\nstore_path = "{tmp_path / "s.sqlite"}"\n')
    assert main(["enrol", "ecg-0001", "p-0001", "--gateway", "gw-0001", "--config", str(config)]) == 0
    assert "ecg-0001 -> p-0001 (read by gateway gw-0001 only)" in capsys.readouterr().out
    store = Store(tmp_path / "s.sqlite")
    assert store.enrolment_gateways() == {"ecg-0001": "gw-0001"}
    assert main(["enrol", "ecg-0001", "p-0001", "--config", str(config)]) == 0  # kept: same patient
    assert store.enrolment_gateways() == {"ecg-0001": "gw-0001"}
    assert main(["enrol", "ecg-0001", "p-0001", "--any-gateway", "--config", str(config)]) == 0
    assert store.enrolment_gateways() == {} and "(any gateway)" in capsys.readouterr().out


def test_nabz_enrol_and_deadletter_say_which_store_they_use(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Run from the wrong directory with the default (relative) store path, `nabz deadletter`
    refuses instead of showing an empty store it made, and `nabz enrol` says that it made a new
    store and where: an enrolment ingest never reads leaves the patient unmonitored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NABZ_CONFIG", raising=False)
    assert main(["deadletter"]) == 2
    err = capsys.readouterr().err
    assert f"no ingest store at {tmp_path / 'var' / 'nabz.sqlite'}" in err and "working directory" in err
    assert not (tmp_path / "var" / "nabz.sqlite").exists()

    assert main(["enrol", "ecg-0001", "p-0001"]) == 0
    out = capsys.readouterr()
    assert f"ecg-0001 -> p-0001 (any gateway) in {tmp_path / 'var' / 'nabz.sqlite'}" in out.out
    assert "made a new one" in out.err and "[ingest] store_path" in out.err
    assert main(["enrol", "oxi-0001", "p-0001"]) == 0  # the store is there now: nothing to warn of
    assert capsys.readouterr().err == ""
    assert main(["deadletter"]) == 0


def test_a_store_from_before_gateway_bindings_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    Store(path).enrol("ecg-0001", "p-0001")
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE e2 (device TEXT PRIMARY KEY, patient TEXT NOT NULL, since REAL NOT NULL);"
        "INSERT INTO e2 SELECT device, patient, since FROM enrolment; DROP TABLE enrolment;"
        "ALTER TABLE e2 RENAME TO enrolment;"
    )
    db.close()
    store = Store(path)  # as a file written before 2026-11-27 opens
    assert store.enrolment() == {"ecg-0001": "p-0001"} and store.enrolment_gateways() == {}
    store.enrol("ecg-0001", "p-0001", "gw-0001")
    assert store.enrolment_gateways() == {"ecg-0001": "gw-0001"}


def test_nabz_enrol_refuses_an_empty_or_malformed_id(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "nabz.toml"
    config.write_text(f'[ingest]\nstore_path = "{tmp_path / "s.sqlite"}"\n')
    assert main(["enrol", "ecg-0001", "p-0001", "--gateway", "", "--config", str(config)]) == 2
    assert main(["enrol", "ecg-0001", "p 0001", "--config", str(config)]) == 2
    assert "is not an id" in capsys.readouterr().err
    assert Store(tmp_path / "s.sqlite").enrolment() == {}


def test_workers_opening_an_old_store_at_once_each_add_the_column_or_find_it_added(tmp_path: Path) -> None:
    import sqlite3

    from ingest.store import _add_column

    db = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    db.execute("CREATE TABLE enrolment (device TEXT PRIMARY KEY)")
    _add_column(db, "ALTER TABLE enrolment ADD COLUMN gateway TEXT")
    _add_column(db, "ALTER TABLE enrolment ADD COLUMN gateway TEXT")  # the second worker: no error
    assert [r[1] for r in db.execute("PRAGMA table_info(enrolment)")] == ["device", "gateway"]


def test_a_message_another_worker_stored_meanwhile_is_not_analysed_twice(tmp_path: Path) -> None:
    """Two workers get one message (a redelivery during a hand-over, a gateway resend): worker B
    looks its id up before worker A commits it and inserts after. The store keeps one copy, and
    only A derives vitals from it: B's would be a second set published to alerts and stored."""
    import time
    from datetime import UTC, datetime

    a_store, b_store = Store(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite")
    a_store.enrol("hr-0001", "p-0001")
    r = contract.HrReading(v=1, id="c" * 32, site="test", gateway="gw-0001", device="hr-0001",
                           t=datetime.now(UTC), hr_bpm=70.0)  # fmt: skip
    m = Message(contract.reading_topic("test", "gw-0001", "hr-0001", "hr"), contract.encode(r), time.time())
    a = IngestCore(a_store)
    a_result = []

    class SinkB:  # B's InfluxDB write: A commits the same message meanwhile
        def write(self, lines: list[str]) -> None:
            if not a_result:
                a_result.append(a.handle_batch([m]))

    b_result = IngestCore(b_store, sink=SinkB(), keep_payloads=True).handle_batch([m])
    assert (a_result[0].stored, len(a_result[0].vitals)) == (1, 1)
    assert (b_result.stored, b_result.duplicates, b_result.vitals) == (0, 1, [])
    assert a_store.db.execute("SELECT COUNT(*) FROM vitals").fetchone()[0] == 1


def test_frames_taken_together_give_the_vitals_of_frames_taken_one_at_a_time(tmp_path: Path) -> None:
    """A batch joins each device's back-to-back frames before the analysis (a gateway's backlog,
    or a busy ingest, brings many in one batch); what the nurse and the alarms get must not
    depend on it. Only the vitals' times may move, by the jitter of the frames' own times (a
    joined chunk is timed by its first frame; the analysis places each frame it is given alone).
    (Across a lost frame the PPG's values may move too, by the sample or so that jitter moves
    the hole: not asserted here.)"""
    (patient,) = make_patients(1, seed=5)
    enrolment = {d.device_id: patient.patient_id for d in patient.devices}
    messages = [m for second in _seconds(patient, 25) for m in second]

    def vitals(batch_size: int, name: str) -> list[dict[str, object]]:
        core = IngestCore(Store(tmp_path / f"{name}.sqlite"), enrolment=enrolment)
        out = []
        for k in range(0, len(messages), batch_size):
            out += core.handle_batch(messages[k : k + batch_size]).vitals
        rows = [
            {k: v for k, v in contract.as_dict(x).items() if k != "id"} | {"t": x.t.timestamp()} for x in out
        ]
        return sorted(rows, key=lambda row: (str(row["device"]), str(row["source"]), float(row["t"])))  # type: ignore[arg-type]

    alone, together = vitals(1, "alone"), vitals(len(messages), "together")
    assert len(alone) > 80 and sum(row["source"] == "ecg" for row in alone) > 15
    assert [{**row, "t": None} for row in together] == [{**row, "t": None} for row in alone]
    assert max(abs(float(a["t"]) - float(b["t"])) for a, b in zip(alone, together, strict=True)) < 0.1  # type: ignore[arg-type]


def test_frames_whose_times_drift_from_their_samples_are_not_joined_past_the_tolerance() -> None:
    """A long backlog of frames stamped 0.5 % slower than their samples: joined, each chunk's
    samples keep within 50 ms of every frame's own time (the processors follow a chunk's first
    time as the clock; offsets added up over a joined run would be taken for a hole later)."""
    t0 = 1_795_597_200.0
    frames = []
    for k in range(300):  # 50 samples at 250 Hz = 0.2 s, stamped 0.201 s apart
        r = contract.EcgReading(
            v=1, id=f"{k:032x}", site="demo", gateway="gw-0001", device="ecg-0001",
            t=datetime.fromtimestamp(t0 + 0.201 * k, UTC), seq=k, rate_hz=250,
            signal_uv=np.arange(50, dtype=np.int64) + 50 * k,  # type: ignore[arg-type]
        )  # fmt: skip
        frames.append(_Accepted(Message("t", b"", 0.0), r, "p-0001", t0 + 0.201 * k, "ecg"))
    chunks = _merge_contiguous(frames)
    assert 1 < len(chunks) < 300  # joined, but not all into one
    assert sum(len(c.reading.signal_uv) for c in chunks) == 300 * 50  # type: ignore[union-attr]
    at = 0
    for c in chunks:
        n = len(c.reading.signal_uv)  # type: ignore[union-attr]
        assert c.reading.signal_uv[0] == at * 50  # type: ignore[union-attr,index]
        for k in range(at, at + n // 50):  # each frame of the chunk against the chunk's clock
            assert abs(frames[k].t - (c.t + (k - at) * 0.2)) <= 0.05 + 1e-6
        at += n // 50
