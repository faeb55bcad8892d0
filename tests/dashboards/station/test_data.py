"""The station reads what ingest and alerts wrote: written here through their own store classes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from alerts.lifecycle import Alarm, to_event
from alerts.silences import Silence
from alerts.store import AlertStore
from dashboards.station.data import Records
from ingest.store import Store

T0 = 1_795_597_200.0


def _vitals_row(k: int, t: float, source: str, **v: float) -> tuple[object, ...]:
    cols = ("hr_bpm", "pr_bpm", "spo2_pct", "spo2_calibrated", "pi_pct", "sqi", "battery_pct")
    vals = [v.get(c) for c in cols]
    return (
        f"id-{k}",
        "demo",
        "p-0001",
        "dev-1",
        source,
        int(t * 1e9),
        *vals,
        "",
        None,
        None,
        None,
        None,
        None,
    )


def test_trends_are_bucketed_means_with_their_range(tmp_path: Path) -> None:
    store = Store(tmp_path / "nabz.sqlite")
    with store.batch():
        store.add_vitals([_vitals_row(k, T0 + k, "ecg", hr_bpm=60.0 + k % 10, sqi=0.9) for k in range(600)])
    rec = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite")
    got = rec.trend("p-0001", T0, T0 + 600, bucket_s=60)
    hr = got["ecg.hr_bpm"]
    assert len(hr) == 10 and all(p[1:] == (64.5, 60.0, 69.0) for p in hr)
    assert hr[0][0] == T0 + 30  # the middle of the first bucket
    assert "device.spo2_pct" not in got and rec.trend("p-0002", T0, T0 + 600, 60) == {}
    # At start-up: the newest row (when data last came) and the rows of the last minute.
    latest = rec.latest_vitals(["p-0001", "p-0009"], now=T0 + 600)
    assert [v.t.timestamp() for v in latest][0] == T0 + 599 and latest[0].hr_bpm == 69.0
    assert {v.t.timestamp() for v in latest[1:]} == {T0 + k for k in range(541, 600)}
    assert all(v.patient == "p-0001" and v.sqi == 0.9 for v in latest)


def test_waveforms_come_back_as_segments_and_missing_payloads_are_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "nabz.sqlite")
    with store.batch():
        for k in range(4):
            payload = json.dumps({"v": 1, "stream": "ecg", "rate_hz": 250, "flags": ["leads_off"] if k == 2 else [],
                                  "signal_uv": [k] * 250}).encode()  # fmt: skip
            store.add_messages([(f"m-{k}", T0, "demo", "gw-1", "ecg-1", "p-0001", "ecg", int((T0 + k) * 1e9), 250,
                                 payload if k != 3 else b"")])  # fmt: skip
    rec = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite")
    device, segs, empty, source = rec.waveforms("p-0001", "ecg", T0, T0 + 10)
    assert (
        device == "ecg-1"
        and [s.t0 for s in segs] == [T0, T0 + 1, T0 + 2]
        and empty == 1
        and source == "store"
    )
    assert segs[2].flags == ("leads_off",) and list(segs[1].samples) == [1] * 250
    assert rec.waveforms("p-0001", "ppg", T0, T0 + 10) == (None, [], 0, "store")


def test_alarms_and_silences_are_read_without_the_sms_code(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "alerts.sqlite")
    a = Alarm("alarm-1", "demo", "p-0001", "spo2_low", "high", "active", "SpO2 84%", 84.0, 88.0, "%",
              T0 - 5, T0, ack_code="4821")  # fmt: skip
    store.record(a, to_event(a, "ev-00000001"), T0)
    store.record(replace(a, state="cleared", cleared_at=T0 + 60), to_event(a, "ev-00000002"), T0 + 60)
    b = replace(
        a, alarm_id="alarm-2", kind="battery_low", priority="low", raised_at=T0 + 100, ack_code="1234"
    )
    store.record(b, to_event(b, "ev-00000003"), T0 + 100)
    store.add_silence(Silence("sil-1", "*", "sensor_off", T0, T0 + 3600, "sana", "night"))
    rec = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite")
    assert [x["alarm_id"] for x in rec.alarms("p-0001")] == ["alarm-2", "alarm-1"]
    assert all("ack_code" not in x for x in rec.alarms() + rec.open_alarms())
    assert [x["alarm_id"] for x in rec.open_alarms()] == ["alarm-2"]
    assert rec.alarm("alarm-1")["state"] == "cleared"  # type: ignore[index]
    assert [s["silence_id"] for s in rec.silences(T0 + 10, "p-0001")] == ["sil-1"]
    assert rec.silences(T0 + 4000) == []


def test_files_that_do_not_exist_yet_read_as_empty(tmp_path: Path) -> None:
    rec = Records(tmp_path / "none.sqlite", tmp_path / "none-either.sqlite")
    assert (
        rec.enrolled_patients() == set() and rec.alarms() == [] and rec.latest_vitals(["p-0001"], 0.0) == []
    )
    assert rec.waveforms("p-0001", "ecg", 0.0, 10.0) == (
        None,
        [],
        0,
        None,
    )  # not "kept elsewhere": nothing yet
    assert not (tmp_path / "none.sqlite").exists()  # read-only: nothing created


def test_a_store_without_payloads_has_no_strips_and_says_so(tmp_path: Path) -> None:
    from ingest.pipeline import IngestCore

    store = Store(tmp_path / "nabz.sqlite")
    IngestCore(store, keep_payloads=False)  # InfluxDB as the store: ingest drops the strip index
    with store.batch():
        store.add_messages([("m-0", T0, "demo", "gw-1", "ecg-1", "p-0001", "ecg", int(T0 * 1e9), 250, b"")])
    rec = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite")
    assert rec.waveforms("p-0001", "ecg", T0 - 10, T0 + 10) == (None, [], None, None)
    IngestCore(store, keep_payloads=True)  # payloads kept again: the index is built again
    assert rec.waveforms("p-0001", "ecg", T0 - 10, T0 + 10) == (None, [], 1, "store")


def test_at_start_each_wearables_last_battery_level_is_read(tmp_path: Path) -> None:
    """Batteries report when they change: the patch's 5 % an hour ago must not be hidden by the
    oximeter's 100 % ten minutes ago (before, only the newest battery row of the patient was read)."""
    from dashboards.station.ward import Ward

    store = Store(tmp_path / "nabz.sqlite")
    store.enrol("ecg-0001", "p-0001")
    store.enrol("oxi-0001", "p-0001")
    now = T0 + 7200
    patch = _vitals_row(1, now - 3600, "device", battery_pct=5)
    oxi = _vitals_row(2, now - 600, "device", battery_pct=100)
    rows = [(*patch[:3], "ecg-0001", *patch[4:]), (*oxi[:3], "oxi-0001", *oxi[4:])]
    rows += [_vitals_row(10 + k, now - 3000 + k, "ecg", hr_bpm=70.0) for k in range(2_000)]  # no battery
    with store.batch():
        store.add_vitals(rows)
    got = Records(tmp_path / "nabz.sqlite", tmp_path / "alerts.sqlite").latest_vitals(["p-0001"], now)
    assert {(v.device, v.battery_pct) for v in got if v.battery_pct is not None} == {
        ("ecg-0001", 5),
        ("oxi-0001", 100),
    }
    w = Ward(stale_after_s=15)
    for v in got:
        w.vitals(v, now)
    assert w.tile("p-0001", now)["battery"] == {"value": 5, "device": "ecg-0001", "t": now - 3600}
