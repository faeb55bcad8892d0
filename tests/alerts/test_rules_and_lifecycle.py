"""Alarm rules and lifecycle on synthetic vitals sequences (time injected; nothing sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.engine import AlertEngine
from alerts.lifecycle import Alarm, LifecycleError, apply
from alerts.notify import Delivery, sms_text
from alerts.store import AlertStore
from nabz.config import AlertsConfig
from nabz.contract import Vitals

T0 = 1_795_597_200.0


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, text: str, alarm_id: str, at: float) -> Delivery:
        self.sent.append((to, text))
        return Delivery(True)


def _v(t: float, patient: str = "p-0001", **values: object) -> Vitals:
    source = values.pop("source", "ppg")
    return Vitals(
        id=f"v{t:.3f}".replace(".", "x"), site="demo", patient=patient, device="oxi-0001",
        t=datetime.fromtimestamp(t, UTC), source=source, sqi=values.pop("sqi", 0.9), **values,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path) -> tuple[AlertEngine, Outbox]:
    outbox = Outbox()
    return AlertEngine(AlertsConfig(), "demo", outbox, AlertStore(tmp_path / "a.sqlite")), outbox


def _feed(engine: AlertEngine, values: list[tuple[float, dict[str, object]]]) -> list:
    events = []
    for t, kw in values:
        events += engine.observe(_v(t, **kw), now=t)
    return events


def test_a_brief_dip_below_the_limit_raises_nothing(engine) -> None:
    e, outbox = engine
    seq = [(T0 + i, {"spo2_pct": 89.0}) for i in range(10)] + [
        (T0 + 10 + i, {"spo2_pct": 96.0}) for i in range(20)
    ]
    assert _feed(e, seq) == []
    assert outbox.sent == []


def test_a_sustained_mild_desaturation_raises_after_the_full_delay(engine) -> None:
    e, outbox = engine
    events = _feed(e, [(T0 + i, {"spo2_pct": 89.0}) for i in range(20)])
    (raised,) = events
    assert raised.kind == "spo2_low" and raised.state == "active" and raised.priority == "medium"
    held = raised.raised_at.timestamp() - raised.condition_started_at.timestamp()
    assert 13.0 <= held <= 16.0  # 15 s at 1 point below the limit, less a little for depth
    assert len(outbox.sent) == 1 and "SpO2" in outbox.sent[0][1]


def test_a_deep_desaturation_raises_sooner_and_at_high_priority(engine) -> None:
    e, _ = engine
    (raised,) = _feed(e, [(T0 + i, {"spo2_pct": 82.0}) for i in range(20)])
    assert raised.priority == "high"
    assert raised.raised_at.timestamp() - raised.condition_started_at.timestamp() <= 5.0


def test_poor_signal_quality_neither_raises_nor_clears(engine) -> None:
    e, _ = engine
    assert _feed(e, [(T0 + i, {"spo2_pct": 70.0, "sqi": 0.1}) for i in range(60)]) == []


def test_an_alarm_is_raised_once_and_clears_after_recovery_with_hysteresis(engine) -> None:
    e, outbox = engine
    low = [(T0 + i, {"spo2_pct": 84.0}) for i in range(30)]
    edge = [(T0 + 30 + i, {"spo2_pct": 91.0}) for i in range(30)]  # above 90 but inside the 2-point band
    ok = [(T0 + 60 + i, {"spo2_pct": 97.0}) for i in range(15)]
    events = _feed(e, low + edge + ok)
    assert [ev.state for ev in events] == ["active", "cleared"]
    assert events[1].cleared_at.timestamp() >= T0 + 60 + 10
    assert len(outbox.sent) == 1


def test_heart_rate_rules_use_the_ecg(engine) -> None:
    e, _ = engine
    events = _feed(e, [(T0 + i, {"hr_bpm": 160.0, "source": "ecg"}) for i in range(15)])
    assert [(ev.kind, ev.priority) for ev in events] == [("hr_high", "high")]
    events = _feed(
        e, [(T0 + 100 + i, {"hr_bpm": 32.0, "source": "ecg", "patient": "p-0002"}) for i in range(15)]
    )
    assert [(ev.kind, ev.patient) for ev in events] == [("hr_low", "p-0002")]


def test_stale_data_raises_when_a_patient_goes_quiet_and_clears_when_data_returns(engine) -> None:
    e, _ = engine
    e.observe(_v(T0, spo2_pct=97.0), now=T0)
    assert e.tick(T0 + 299) == []
    (stale,) = e.tick(T0 + 300)
    assert stale.kind == "stale_data" and stale.state == "active"
    assert e.tick(T0 + 400) == []  # one alarm, not one per tick
    (back,) = e.observe(_v(T0 + 401, spo2_pct=97.0), now=T0 + 401)
    assert back.kind == "stale_data" and back.state == "cleared"


def test_acknowledging_one_alarm_leaves_the_others_alone(engine) -> None:
    e, _ = engine
    _feed(e, [(T0 + i, {"spo2_pct": 82.0}) for i in range(10)])
    _feed(e, [(T0 + i, {"hr_bpm": 170.0, "source": "ecg"}) for i in range(15)])
    spo2 = e.open[("p-0001", "spo2_low")]
    ack = e.acknowledge(spo2.alarm_id, "dr.aisha", now=T0 + 20)
    assert ack.state == "acknowledged" and ack.acknowledged_by == "dr.aisha"
    assert e.open[("p-0001", "hr_high")].state == "active"
    audit = e.store.audit()
    assert [a["state"] for a in audit] == ["active", "active", "acknowledged"]


def test_the_lifecycle_refuses_moves_that_are_not_in_its_table() -> None:
    a = Alarm("a1", "demo", "p", "spo2_low", "high", "active", "m", 80.0, 90.0, "%", T0, T0)
    cleared = apply(apply(a, "ack", T0 + 1, "n"), "clear", T0 + 2)
    assert cleared.state == "cleared" and cleared.acknowledged_by == "n"
    with pytest.raises(LifecycleError):
        apply(cleared, "ack", T0 + 3, "n")


def test_open_alarms_survive_a_restart_of_the_engine(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "a.sqlite")
    e1 = AlertEngine(AlertsConfig(), "demo", Outbox(), store)
    _feed(e1, [(T0 + i, {"spo2_pct": 82.0}) for i in range(10)])
    outbox = Outbox()
    e2 = AlertEngine(AlertsConfig(), "demo", outbox, AlertStore(tmp_path / "a.sqlite"))
    assert ("p-0001", "spo2_low") in e2.open
    _feed(e2, [(T0 + 100 + i, {"spo2_pct": 82.0}) for i in range(10)])
    assert outbox.sent == []  # still the same open alarm: nobody is texted twice


def test_the_sms_fits_one_message_and_names_patient_value_and_local_time() -> None:
    a = Alarm("abcdef123456", "demo", "p-0002", "spo2_low", "high", "active", "SpO2 84% below 90% for 7 s",
              84.0, 90.0, "%", T0 + 5, T0 + 12)  # fmt: skip
    text = sms_text(a, "Asia/Karachi")
    assert len(text) <= 160
    assert text.startswith("NABZ HIGH p-0002: SpO2 84% below 90% for 7 s.")
    assert "14:00 PKT" in text  # 09:00:05 UTC is 14:00 in Karachi
    assert "ACK abcdef" in text
