"""Every MQTT, storage and alarm example in docs/contract.md is checked against the code, and the
BLE examples are carried through the gateway's decoder to the MQTT examples: one chain of vectors
from the wearable's bytes to the database's lines."""

from __future__ import annotations

import json

import msgspec
import pytest

from firmware import nabz_codec as codec
from gateway.decode import Decoder, Notification
from ingest.lines import reading_lines
from nabz import contract
from nabz.contract import AlarmEvent, GatewayStatus, Rejected, VitalsBatch
from tests.contract_doc import vectors


def _by_name(kind: str) -> dict[str, object]:
    return {v.attrs["name"]: v for v in vectors(kind) if "name" in v.attrs}


def test_the_document_has_vectors_of_every_kind() -> None:
    kinds = {v.kind for v in vectors()}
    assert {"mqtt:reading", "mqtt:reject", "mqtt:status", "mqtt:vitals", "storage", "alarm"} <= kinds
    assert len(vectors("mqtt:reading")) >= 6


@pytest.mark.parametrize("v", vectors("mqtt:reading"), ids=lambda v: v.attrs["name"])
def test_reading_examples_are_valid(v) -> None:  # type: ignore[no-untyped-def]
    reading = contract.decode_reading(v.attrs["topic"], v.body.encode())
    assert not isinstance(reading, Rejected), reading
    assert contract.stream_of(reading) == v.attrs["topic"].rsplit("/", 1)[1]


@pytest.mark.parametrize("v", vectors("mqtt:reject"), ids=lambda v: v.attrs["reason"])
def test_reject_examples_are_rejected_for_the_stated_reason(v) -> None:  # type: ignore[no-untyped-def]
    outcome = contract.decode_reading(v.attrs["topic"], v.body.encode())
    assert isinstance(outcome, Rejected)
    assert outcome.reason == v.attrs["reason"], outcome.detail


def test_status_vitals_and_alarm_examples_are_valid() -> None:
    for v in vectors("mqtt:status"):
        status = msgspec.json.decode(v.body.encode(), type=GatewayStatus)
        assert v.attrs["topic"] == contract.status_topic(status.site, status.gateway)
    for v in vectors("mqtt:vitals"):
        batch = msgspec.json.decode(v.body.encode(), type=VitalsBatch)
        assert v.attrs["topic"] == contract.vitals_topic(batch.site)
        assert [x.source for x in batch.vitals] == ["ppg", "ecg"]
        assert batch.vitals[0].spo2_calibrated is False
        # what ingest publishes for these vitals is this message
        ((topic, again),) = contract.vitals_messages(batch.vitals, new_id=lambda i=batch.id: i)
        assert (topic, again) == (v.attrs["topic"], batch)
    (alarm,) = vectors("alarm")
    event = msgspec.json.decode(alarm.body.encode(), type=AlarmEvent)
    assert event.raised_at >= event.condition_started_at


def test_a_vitals_batch_that_mixes_sites_or_is_empty_is_malformed() -> None:
    (v,) = vectors("mqtt:vitals")
    body = json.loads(v.body)
    body["vitals"][1]["site"] = "other"
    with pytest.raises(msgspec.ValidationError, match="site"):
        msgspec.json.decode(json.dumps(body).encode(), type=VitalsBatch)
    body["vitals"] = []
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(body).encode(), type=VitalsBatch)


def test_vitals_go_out_one_message_per_site_and_at_most_the_cap_per_message() -> None:
    (v,) = vectors("mqtt:vitals")
    one = msgspec.json.decode(v.body.encode(), type=VitalsBatch).vitals[0]
    many = [
        msgspec.structs.replace(one, patient=f"p-{i:04d}") for i in range(contract.VITALS_PER_MESSAGE + 3)
    ]
    many.insert(5, msgspec.structs.replace(one, site="other"))
    out = contract.vitals_messages(many)
    assert [(topic, len(b.vitals)) for topic, b in out] == [
        ("nabz/v1/demo/vitals", contract.VITALS_PER_MESSAGE),
        ("nabz/v1/demo/vitals", 3),
        ("nabz/v1/other/vitals", 1),
    ]
    assert [x.patient for _, b in out[:2] for x in b.vitals] == [x.patient for x in many if x.site == "demo"]
    assert len({b.id for _, b in out}) == 3


def _ble(kind: str, index: int = 0) -> bytes:
    body = json.loads(vectors(f"ble:{kind}")[index].body)
    return bytes.fromhex(body["hex"].replace(" ", ""))


def _gateway_output(doc_name: str, char: str, data: bytes) -> contract.Reading:
    doc = _by_name("mqtt:reading")[doc_name]
    expected = contract.decode_reading(doc.attrs["topic"], doc.body.encode())  # type: ignore[attr-defined]
    assert not isinstance(expected, Rejected)
    decoder = Decoder(expected.site, expected.gateway, new_id=lambda: expected.id)
    rx_us = round((expected.rx or expected.t).timestamp() * 1_000_000)
    produced = decoder.decode(Notification(expected.device, char, data, rx_us))
    assert not isinstance(produced, Rejected), produced
    # Round-trip through the wire, exactly as ingest would see it.
    wire = contract.decode_reading(doc.attrs["topic"], contract.encode(produced))  # type: ignore[attr-defined]
    assert wire == expected
    return produced


def test_ble_ecg_frame_becomes_the_documented_mqtt_payload() -> None:
    _gateway_output("ecg", codec.NABZ_ECG_WAVEFORM, _ble("wave", 0))


def test_ble_ppg_frame_becomes_the_documented_mqtt_payload() -> None:
    _gateway_output("ppg", codec.NABZ_PPG_WAVEFORM, _ble("wave", 1))


def test_ble_heart_rate_becomes_the_documented_mqtt_payload() -> None:
    _gateway_output("hr", "00002a37-0000-1000-8000-00805f9b34fb", _ble("hrm", 0))


def test_ble_finger_out_becomes_the_documented_mqtt_payload() -> None:
    _gateway_output("spo2-off", "2a5f", _ble("plx_continuous", 1))


@pytest.mark.parametrize("v", vectors("storage"), ids=lambda v: v.attrs["name"])
def test_storage_examples_are_what_ingest_writes(v) -> None:  # type: ignore[no-untyped-def]
    doc = _by_name("mqtt:reading")[v.attrs["name"]]
    reading = contract.decode_reading(doc.attrs["topic"], doc.body.encode())  # type: ignore[attr-defined]
    assert not isinstance(reading, Rejected)
    expected = [line for line in v.body.splitlines() if line.strip()]
    assert reading_lines(reading, v.attrs["patient"]) == expected


def test_every_reading_example_has_its_storage_example() -> None:
    assert set(_by_name("mqtt:reading")) == set(_by_name("storage"))
