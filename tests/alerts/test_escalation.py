"""Lifecycle, on-call schedule, escalation, silences, grouping, caps, SMS acknowledgement, durability."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from alerts.dispatch import Dispatcher
from alerts.engine import parse_sms_command
from alerts.lifecycle import Alarm, LifecycleError, apply
from alerts.notify import Delivery, OutboxNotifier
from alerts.oncall import Schedule
from nabz.config import (
    AlertsConfig,
    Config,
    EscalationConfig,
    EscalationPolicy,
    EscalationStep,
    OncallConfig,
    OverrideConfig,
    RotationConfig,
)
from tests.alerts.helpers import PEOPLE, T0, Recorder, Rig, config, v

FARAH, BILAL, AISHA, OMAR = (PEOPLE[n].phone for n in ("farah", "bilal", "aisha", "omar"))


def desaturate(rig: Rig, patient: str = "p-0001", start: float = T0) -> str:
    """A deep desaturation, by the oximeter: one high-priority spo2_low alarm; returns its ack code."""
    rig.feed([v(start + i, patient=patient, source="device", spo2_pct=82.0) for i in range(10)])
    return rig.engine.open[(patient, "spo2_low")].ack_code


def test_the_lifecycle_table_refuses_moves_it_does_not_have() -> None:
    a = Alarm("a1", "demo", "p", "spo2_low", "medium", "active", "m", 90.0, 92.0, "%", T0, T0)
    acked = apply(a, "ack", T0 + 1, "farah")
    worse = apply(acked, "worsen", T0 + 2, priority="high")
    assert (worse.state, worse.priority, worse.acknowledged_by) == ("active", "high", None)
    cleared = apply(worse, "clear", T0 + 3)
    assert cleared.state == "cleared"
    with pytest.raises(LifecycleError):
        apply(cleared, "ack", T0 + 4, "farah")
    with pytest.raises(LifecycleError):
        apply(a, "worsen", T0, priority="low")


def test_rotation_and_override_in_karachi_time() -> None:
    cfg = config().oncall
    cfg = OncallConfig(
        people=cfg.people, rotations=cfg.rotations, team=cfg.team,
        overrides=[OverrideConfig(role="primary", person="omar", start="2026-11-25T20:00", end="2026-11-26T02:00")],
    )  # fmt: skip
    s = Schedule(cfg)
    # Handoffs at 08:00 PKT (03:00 UTC): on 25 November it is Farah's day, on the 26th Aisha's.
    assert [p.name for p in s.who("primary", T0)] == ["farah"]
    assert [p.name for p in s.who("primary", T0 + 18 * 3600 - 1)] == ["farah"]  # 07:59 on the 26th
    assert [p.name for p in s.who("primary", T0 + 18 * 3600)] == ["aisha"]
    assert [p.name for p in s.who("primary", T0 + 7 * 3600)] == ["omar"]  # 21:00, overridden
    assert [p.name for p in s.who("team", T0)] == ["aisha", "bilal", "farah", "omar"]


def test_escalation_primary_then_backup_then_team_and_repeats_until_acknowledged(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    code = desaturate(rig)
    raised = rig.engine.open[("p-0001", "spo2_low")].raised_at
    rig.run(raised, raised + 299)
    assert [p for p, _, _ in rig.notifier.sent] == [FARAH]
    rig.run(raised + 300, raised + 599)
    assert sorted(p for p, _, at in rig.notifier.sent if at == raised + 300) == sorted([BILAL, FARAH])
    (urdu,) = rig.notifier.texts(BILAL)
    assert "فوری" in urdu and f"ACK {code}" in urdu
    assert any(t.startswith("NABZ HIGH p-0001: REPEAT") for t in rig.notifier.texts(FARAH))
    rig.run(raised + 600, raised + 600)
    assert {p for p, _, at in rig.notifier.sent if at == raised + 600} == {AISHA, OMAR, BILAL, FARAH}
    rig.engine.acknowledge(code, "farah", raised + 700)
    n = len(rig.notifier.sent)
    rig.run(raised + 701, raised + 3000, step=10.0)
    assert len(rig.notifier.sent) == n  # acknowledged: nobody is texted again


def test_a_restart_mid_escalation_sends_the_same_sms_as_no_restart(tmp_path: Path) -> None:
    def scenario(rig: Rig, restart_every: float | None) -> list[tuple[str, str, float]]:
        desaturate(rig)
        t = T0 + 10.0
        last_restart = t
        while t <= T0 + 1500:
            if restart_every is not None and t - last_restart >= restart_every:
                rig.restart()
                last_restart = t
            rig.at(t)
            t += 7.0
        return rig.notifier.sent

    plain = scenario(Rig(tmp_path / "a"), None)
    restarted = scenario(Rig(tmp_path / "b"), restart_every=50.0)
    assert len(plain) >= 10
    assert restarted == plain  # the same SMS, to the same people, at the same times: none twice, none missed


class PowerCut(Recorder):
    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        raise SystemExit("the process is killed while the modem sends")


def test_an_sms_interrupted_by_a_crash_is_sent_again_and_the_audit_says_so(tmp_path: Path) -> None:
    rig = Rig(tmp_path, notifier=PowerCut())
    with pytest.raises(SystemExit):
        desaturate(rig)
    rig.notifier = Recorder()
    rig.restart()
    rig.at(T0 + 10)
    assert len(rig.notifier.texts(FARAH)) == 1
    assert [s["status"] for s in rig.store.sms()] == ["interrupted", "sent"]
    assert any(a["state"] == "interrupted" for a in rig.store.audit())


def test_each_alarm_is_acknowledged_on_its_own_by_sms_reply(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    code = desaturate(rig)
    rig.feed([v(T0 + i, source="ecg", hr_bpm=170.0) for i in range(20)])
    hr = rig.engine.open[("p-0001", "hr_high")]
    rig.store.add_command(T0 + 30, "sms_in", {"phone": FARAH, "text": f"ack {code}"}, "sms")
    events = rig.at(T0 + 30)
    assert {(e.kind, e.state, e.acknowledged_by) for e in events if e.state == "acknowledged"} == {
        ("spo2_low", "acknowledged", "farah")
    }
    assert rig.engine.open[("p-0001", "hr_high")].state == "active" and hr.state == "active"
    assert any(t.startswith(f"NABZ: ACK {code} p-0001 spo2_low") for t in rig.notifier.texts(FARAH))
    rig.store.add_command(T0 + 31, "sms_in", {"phone": "+15550000000", "text": f"ACK {hr.ack_code}"}, "sms")
    rig.at(T0 + 31)
    assert rig.engine.open[("p-0001", "hr_high")].state == "active"  # a stranger cannot acknowledge
    assert any(a["what"] == "sms_in" and a["state"] == "refused" for a in rig.store.audit())


def test_sms_commands_parse() -> None:
    assert parse_sms_command("ACK 4821") == ("ack", ["4821"], None)
    assert parse_sms_command(" ack 4821 4822 ") == ("ack", ["4821", "4822"], None)
    assert parse_sms_command("SNOOZE 4821 30") == ("snooze", ["4821"], 30.0)
    assert parse_sms_command("thanks") is None
    assert parse_sms_command("SNOOZE 4821 30²") is None  # str.isdigit() says yes; float() says no


def test_silences_expire_and_high_priority_cannot_be_silenced_past_the_maximum(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(AlertsConfig(silence_max_high_s=1800.0, stale_after_s=1e7)))
    rig.engine.silence("p-0001", "spo2_low", 4 * 3600, "farah", T0 - 1)
    code = desaturate(rig)
    rig.run(T0 + 10, T0 + 1790, step=30.0)
    assert rig.notifier.sent == []  # silenced: raised and published, not texted
    rig.run(T0 + 1800, T0 + 1800)
    assert [p for p, _, _ in rig.notifier.sent] == [FARAH]  # a high alarm is silenced for 30 min at most
    rig.engine.acknowledge(code, "farah", T0 + 1801)
    rig.engine.silence("p-0002", "*", 2 * 3600, "farah", T0)
    rig.feed([v(T0 + i, patient="p-0002", source="ecg", hr_bpm=140.0) for i in range(15)])  # medium
    rig.run(T0 + 15, T0 + 7199, step=60.0)
    assert not [t for t in rig.notifier.texts() if "p-0002" in t]
    rig.run(T0 + 7200, T0 + 7200)
    assert any("p-0002" in t for t in rig.notifier.texts(FARAH))


def test_alarms_of_one_patient_close_together_share_one_sms_and_high_never_waits(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(schedule=False))
    off = [v(T0 + i, source="device", spo2_pct=None, flags=["sensor_unconnected_to_user"]) for i in range(31)]
    rig.feed(off)  # sensor_off at T0+30: the first SMS about p-0001 goes at once
    rig.feed(
        [v(T0 + 31 + i, source="ecg", sqi=0.1, flags=["leads_off"]) for i in range(31)]
    )  # leads_off at T0+61
    rig.feed([v(T0 + 62 + i, source="device", battery_pct=15) for i in range(2)])  # battery_low at T0+62
    assert len(rig.notifier.sent) == 1
    rig.run(T0 + 63, T0 + 95)
    assert len(rig.notifier.sent) == 2  # leads off and battery: one SMS, a group interval after the first
    second = rig.notifier.sent[1][1]
    assert "ECG leads off" in second and "battery" in second
    rig.feed([v(T0 + 96 + i, source="ecg", hr_bpm=25.0) for i in range(12)])  # hr_low high: at once
    assert len(rig.notifier.sent) == 3 and rig.notifier.sent[2][1].startswith("NABZ HIGH p-0001")


def test_an_hourly_cap_per_recipient_but_high_priority_always_goes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(AlertsConfig(max_sms_per_hour=3, stale_after_s=1e7), schedule=False))
    for k in range(1, 6):  # five patients' batteries run low within a minute
        rig.feed([v(T0 + k, patient=f"p-000{k}", source="device", battery_pct=15)])
    assert len(rig.notifier.sent) == 3
    code = desaturate(rig, "p-0009", T0 + 10)
    assert len(rig.notifier.sent) == 4 and "p-0009" in rig.notifier.sent[3][1]
    rig.engine.acknowledge(code, "+923000000000", T0 + 20)
    rig.run(T0 + 20, T0 + 3600, step=60.0)
    assert len(rig.notifier.sent) == 4
    rig.run(T0 + 3601, T0 + 3700, step=10.0)
    assert {t.split(":")[0] for t in rig.notifier.texts()[4:]} == {"NABZ LOW p-0004", "NABZ LOW p-0005"}


def test_failures_retry_with_backoff_and_fall_back_to_the_next_notifier(tmp_path: Path) -> None:
    flaky = Recorder("modem", fail=Delivery(False, retryable=True, detail="+CMS ERROR: 331"))
    rig = Rig(tmp_path, config(schedule=False), notifier=flaky)
    desaturate(rig)
    raised = rig.engine.open[("p-0001", "spo2_low")].raised_at
    rig.run(raised, raised + 4)
    assert flaky.sent == []
    flaky.fail = None
    rig.run(raised + 5, raised + 5)  # retried after retry_min_s
    assert len(flaky.sent) == 1
    dead = Recorder("modem", fail=Delivery(False, retryable=False, detail="+CMS ERROR: 310"))
    spare = Recorder("outbox")
    rig2 = Rig(tmp_path / "2", config(schedule=False), notifier=dead)
    rig2.dispatcher = Dispatcher(rig2.cfg, rig2.store, [dead, spare])
    desaturate(rig2)
    assert len(spare.sent) == 1 and rig2.store.sms()[0]["notifier"] == "outbox"


def test_all_clear_tells_everyone_who_was_texted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(escalation=EscalationConfig(all_clear=True)))
    desaturate(rig)
    rig.run(T0 + 10, T0 + 400, step=10.0)
    rig.feed([v(T0 + 401 + i, source="device", spo2_pct=97.0) for i in range(15)])
    rig.run(T0 + 420, T0 + 500, step=10.0)
    assert rig.notifier.texts(FARAH)[-1].startswith("NABZ p-0001: CLEARED SpO2")
    assert rig.notifier.texts(BILAL)[-1].startswith("NABZ p-0001: ٹھیک")


def test_the_audit_log_is_append_only_and_records_every_transition_and_sms(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    code = desaturate(rig)
    rig.at(T0 + 11)  # the engine learns the SMS went out: the alarm's event gains notified_at
    rig.engine.acknowledge(code, "farah", T0 + 20)
    audit = rig.store.audit()
    assert [a["state"] for a in audit if a["what"] == "transition"] == ["active", "active", "acknowledged"]
    assert [a["state"] for a in audit if a["what"] == "notification"] == ["sent"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        rig.store.db.execute("UPDATE audit SET state = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        rig.store.db.execute("DELETE FROM audit")


def test_an_alarm_acknowledged_while_its_sms_waits_is_not_sent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(schedule=False))
    rig.feed([v(T0, source="device", battery_pct=15)])  # the first SMS about p-0001 goes at once
    rig.feed([v(T0 + 10 + i, source="ecg", hr_bpm=140.0) for i in range(12)])  # waits for the group interval
    assert len(rig.notifier.sent) == 1
    hr = rig.engine.open[("p-0001", "hr_high")]
    rig.engine.acknowledge(hr.ack_code, "+923000000000", T0 + 30)
    rig.run(T0 + 31, T0 + 120, step=5.0)
    assert len(rig.notifier.sent) == 1
    assert any(a["state"] == "dropped" and a["alarm_id"] == hr.alarm_id for a in rig.store.audit())


def test_an_alarm_that_worsens_while_no_sms_can_go_is_one_line_once_the_network_is_back(
    tmp_path: Path,
) -> None:
    """The raise and the "worse" notice wait together behind a failing modem: the doctor gets the
    alarm as it is now, once, not the same alarm twice in one text."""
    flaky = Recorder("modem", fail=Delivery(False, retryable=True, detail="+CMS ERROR: 331"))
    rig = Rig(tmp_path, config(schedule=False), notifier=flaky)
    rig.feed([v(T0 + i, source="ecg", hr_bpm=140.0) for i in range(15)])  # medium
    rig.feed([v(T0 + 15 + i, source="ecg", hr_bpm=165.0) for i in range(15)])  # worse: high
    assert flaky.sent == [] and rig.engine.open[("p-0001", "hr_high")].priority == "high"
    flaky.fail = None
    rig.run(T0 + 30, T0 + 200, step=5.0)
    (text,) = flaky.texts()
    code = rig.engine.open[("p-0001", "hr_high")].ack_code
    assert text.startswith("NABZ HIGH p-0001: HR 165/min (>150/min)") and text.count(f"ACK {code}") == 1
    assert not rig.store.queued()


def test_a_page_acknowledgement_of_an_alarm_that_worsened_on_the_way_is_refused(tmp_path: Path) -> None:
    """The nurse saw it at medium; by the time her command is applied it is high: a worse alarm
    must be seen before it is acknowledged (the nurse page says so, and she can look again)."""
    rig = Rig(tmp_path)
    rig.feed([v(T0 + i, spo2_pct=90.0) for i in range(70)])  # under 92 % for a minute: medium
    (alarm,) = rig.engine.open.values()
    seen = alarm.priority
    assert seen == "medium"
    rig.feed([v(T0 + 70 + i, spo2_pct=80.0) for i in range(20)])
    (alarm,) = rig.engine.open.values()
    assert alarm.priority == "high" != seen
    rig.store.add_command(
        T0 + 90, "ack", {"code": alarm.alarm_id, "by": "sana", "priority": seen}, "mqtt:sana"
    )
    assert "acknowledged" not in [e.state for e in rig.at(T0 + 90)]
    assert rig.engine.open[(alarm.patient, alarm.kind)].state == "active"
    refused = [a for a in rig.store.audit() if a["what"] == "ack" and a["state"] == "refused"]
    assert refused and "worsened to high" in refused[0]["detail"]
    rig.store.add_command(
        T0 + 91, "ack", {"code": alarm.alarm_id, "by": "sana", "priority": "high"}, "mqtt:sana"
    )
    assert "acknowledged" in [e.state for e in rig.at(T0 + 91)]


def test_a_command_that_arrives_after_its_sender_gave_up_is_refused(tmp_path: Path) -> None:
    """The nurse page waited 5 s for the broker, then told the nurse it did not go through."""
    rig = Rig(tmp_path)
    desaturate(rig)
    (alarm,) = rig.engine.open.values()
    late = {"code": alarm.alarm_id, "by": "sana", "not_after": T0 + 50}
    rig.store.add_command(T0 + 58, "ack", late, "mqtt:sana")
    assert "acknowledged" not in [e.state for e in rig.at(T0 + 58)]
    assert rig.engine.open[(alarm.patient, alarm.kind)].state == "active"
    silence = {"patient": alarm.patient, "kind": "*", "duration_s": 900, "by": "sana", "not_after": T0 + 50}
    rig.store.add_command(T0 + 59, "silence", silence, "mqtt:sana")
    rig.at(T0 + 59)
    assert rig.store.silences(T0 + 59) == []


def test_a_command_is_judged_by_when_it_arrived_not_when_its_turn_came(tmp_path: Path) -> None:
    """The service works through a backlog of vitals: a command that came in time but waited its
    turn behind them is applied (it comes on a session of its own, so the broker does not hold it
    back either)."""
    rig = Rig(tmp_path)
    desaturate(rig)
    (alarm,) = rig.engine.open.values()
    on_time = {"code": alarm.alarm_id, "by": "sana", "not_after": T0 + 50, "received_at": T0 + 49}
    rig.store.add_command(T0 + 58, "ack", on_time, "mqtt:sana")
    assert "acknowledged" in [e.state for e in rig.at(T0 + 58)]


def test_the_outbox_beside_a_modem_keeps_a_copy_but_is_no_delivery(tmp_path: Path) -> None:
    """With `notifiers = ["gsm", "outbox"]` a modem with no network must not be hidden by the file:
    the SMS stays unsent and is tried again through the modem, the service says it cannot notify,
    and the outbox holds one copy of what no phone got."""
    modem = Recorder("gsm", fail=Delivery(False, retryable=True, detail="+CMS ERROR: 331"))
    outbox = OutboxNotifier(tmp_path / "outbox.jsonl")
    rig = Rig(tmp_path, config(schedule=False), notifier=modem)
    rig.dispatcher = Dispatcher(rig.cfg, rig.store, [modem, outbox])
    desaturate(rig)
    rig.run(T0 + 10, T0 + 60, step=5.0)  # several retries
    assert modem.sent == [] and rig.dispatcher.failing
    assert all(s["status"] == "failed" for s in rig.store.sms())
    (copy,) = (json.loads(x) for x in outbox.path.read_text().splitlines())
    assert copy["text"].startswith("NABZ HIGH p-0001: SpO2 82%")
    assert rig.engine.open[("p-0001", "spo2_low")].notified_at is None
    modem.fail = None
    rig.run(T0 + 61, T0 + 250, step=5.0)  # before the repeat at 5 minutes
    assert [t[:20] for t in modem.texts()] == ["NABZ HIGH p-0001: Sp"]
    assert not rig.dispatcher.failing and rig.store.sms()[-1]["notifier"] == "gsm"
    assert rig.engine.open[("p-0001", "spo2_low")].notified_at is not None
    assert len(outbox.path.read_text().splitlines()) == 1


def test_a_failing_notifier_with_a_working_fallback_is_reported(tmp_path: Path) -> None:
    modem = Recorder("gsm", fail=Delivery(False, retryable=True, detail="modem backing off"))
    http = Recorder("http")
    rig = Rig(tmp_path, config(schedule=False), notifier=modem)
    rig.dispatcher = Dispatcher(rig.cfg, rig.store, [modem, http])
    desaturate(rig)
    assert len(http.sent) == 1 and not rig.dispatcher.failing
    assert rig.dispatcher.degraded == "gsm: modem backing off"
    modem.fail = None
    rig.feed([v(T0 + 20 + i, patient="p-0002", source="device", spo2_pct=82.0) for i in range(10)])
    assert len(modem.sent) == 1 and rig.dispatcher.degraded is None


def test_a_retried_sms_keeps_its_idempotency_keys(tmp_path: Path) -> None:
    """A provider that times out after taking a part gets the same key when it is sent again, so it
    can drop the copy; the next notification of the same alarm gets new keys."""
    flaky = Recorder("http", fail=Delivery(False, retryable=True, detail="no answer: timed out"))
    rig = Rig(tmp_path, config(schedule=False), notifier=flaky)
    desaturate(rig)
    flaky.fail = None
    rig.run(T0 + 10, T0 + 15)
    assert len(flaky.sent) == 1 and len(flaky.keys) == 2 and flaky.keys[0] == flaky.keys[1]
    rig.run(T0 + 16, T0 + 400, step=10.0)  # the repeat after 5 minutes
    assert len(flaky.sent) == 2 and flaky.keys[-1] != flaky.keys[0]


def test_an_sms_reply_acts_only_on_alarms_texted_to_that_phone(tmp_path: Path) -> None:
    """The backup has not been texted yet: their ACK of the code (a typo, or a code heard of
    second-hand) does nothing, and the primary's escalation goes on."""
    rig = Rig(tmp_path)
    code = desaturate(rig)
    rig.run(T0 + 10, T0 + 20)
    assert [p for p, _, _ in rig.notifier.sent] == [FARAH]
    rig.store.add_command(T0 + 30, "sms_in", {"phone": BILAL, "text": f"ACK {code}"}, "sms")
    rig.at(T0 + 30)
    assert rig.engine.open[("p-0001", "spo2_low")].state == "active"
    assert f"{code}: no open alarm texted to you" in rig.notifier.texts(BILAL)[-1]
    assert any(a["what"] == "sms_ack" and a["state"] == "refused" for a in rig.store.audit())
    rig.store.add_command(T0 + 31, "sms_in", {"phone": FARAH, "text": f"ACK {code}"}, "sms")
    rig.at(T0 + 31)
    assert rig.engine.open[("p-0001", "spo2_low")].state == "acknowledged"


@pytest.mark.parametrize("open_s", [10.0, 2 * 86400.0])
def test_an_ack_code_is_not_given_again_for_a_day(tmp_path: Path, open_s: float) -> None:
    """An alarm clears; a reply to its SMS that comes late must not acknowledge the next alarm,
    even when the random draw offers the same code again; nor when the alarm was open (and its
    SMS repeated) for longer than a day before it cleared."""
    rig = Rig(tmp_path, config(schedule=False))
    old = desaturate(rig)
    T1 = T0 + open_s - 10  # noqa: N806
    rig.feed([v(T1 + 10 + i, source="device", spo2_pct=97.0) for i in range(15)])
    assert ("p-0001", "spo2_low") not in rig.engine.open

    class SameCode(random.Random):
        def randrange(self, *args: Any, **kw: Any) -> int:
            return int(old)

    rig.restart()  # and the service restarted meanwhile: the codes of the last day come from the store
    rig.engine.rng = SameCode()
    new = desaturate(rig, patient="p-0002", start=T1 + 60)
    assert new != old
    rig.run(T1 + 70, T1 + 80)
    rig.store.add_command(
        T1 + 90, "sms_in", {"phone": rig.cfg.alerts.on_call[0], "text": f"ACK {old}"}, "sms"
    )
    rig.at(T1 + 90)
    assert rig.engine.open[("p-0002", "spo2_low")].state == "active"


def test_an_sms_ack_of_an_alarm_that_worsened_since_its_sms_is_refused_until_the_doctor_has_seen_it(
    tmp_path: Path,
) -> None:
    """The doctor's ACK to the MEDIUM text crosses the HIGH one: it is not taken (the escalation of
    a worse alarm goes on); the answer says it is now HIGH, and the next ACK is taken."""
    modem = Recorder("gsm")
    rig = Rig(tmp_path, config(schedule=False), notifier=modem)
    rig.feed([v(T0 + i, source="ecg", hr_bpm=140.0) for i in range(15)])  # medium, texted
    alarm = rig.engine.open[("p-0001", "hr_high")]
    phone = rig.cfg.alerts.on_call[0]
    assert modem.texts(phone)[0].startswith("NABZ MEDIUM p-0001: HR")
    modem.fail = Delivery(False, retryable=True, detail="+CMS ERROR: 331")
    rig.feed([v(T0 + 15 + i, source="ecg", hr_bpm=175.0) for i in range(15)])  # worse: high, not yet texted
    rig.store.add_command(T0 + 30, "sms_in", {"phone": phone, "text": f"ACK {alarm.ack_code}"}, "sms")
    rig.at(T0 + 30)
    assert rig.engine.open[("p-0001", "hr_high")].state == "active"
    assert any(a["what"] == "sms_ack" and "worsened to high" in a["detail"] for a in rig.store.audit())
    modem.fail = None
    rig.run(T0 + 31, T0 + 60, step=5.0)
    assert any("is now HIGH" in t and f"ACK {alarm.ack_code} again" in t for t in modem.texts(phone))
    rig.store.add_command(T0 + 61, "sms_in", {"phone": phone, "text": f"ACK {alarm.ack_code}"}, "sms")
    rig.at(T0 + 61)
    assert rig.engine.open[("p-0001", "hr_high")].state == "acknowledged"


def test_an_alarm_whose_escalation_names_nobody_on_call_goes_to_everyone(tmp_path: Path) -> None:
    """Low alarms go to the primary; with no primary rotation they went to nobody, silently."""
    base = config()
    oncall = OncallConfig(
        people=base.oncall.people, rotations=[r for r in base.oncall.rotations if r.role != "primary"],
        team=base.oncall.team,
    )  # fmt: skip
    rig = Rig(tmp_path, Config(site="demo", alerts=base.alerts, oncall=oncall))
    rig.feed([v(T0, source="device", battery_pct=15)])  # battery_low: low priority, primary only
    assert sorted(p for p, _, _ in rig.notifier.sent) == sorted([AISHA, BILAL, FARAH, OMAR])
    assert rig.engine.nobody_on_call == 1
    assert any(a["state"] == "nobody_on_call" for a in rig.store.audit())


def test_an_escalation_naming_no_role_or_person_is_refused_at_start(tmp_path: Path) -> None:
    esc = EscalationConfig(low=EscalationPolicy(steps=[EscalationStep(after_s=0.0, notify=["primay"])]))
    with pytest.raises(ValueError, match="primay"):
        Rig(tmp_path, config(escalation=esc))


def test_hand_overs_keep_their_local_time_across_a_daylight_saving_change() -> None:
    """London: 08:00 hand-overs; the clocks went back on 25 October 2026."""
    cfg = OncallConfig(
        timezone="Europe/London", people=PEOPLE,
        rotations=[RotationConfig(role="primary", members=["aisha", "farah"], start="2026-10-20T08:00")],
    )  # fmt: skip
    s = Schedule(cfg)
    nov_2_0800 = 1_793_606_400.0  # 2026-11-02 08:00 GMT
    # Turns from 08:00 on 20 October: the 1 November shift is Aisha's; Farah's starts at 08:00, not 07:00.
    assert [p.name for p in s.who("primary", nov_2_0800 - 1800)] == ["aisha"]
    assert [p.name for p in s.who("primary", nov_2_0800)] == ["farah"]


def test_a_worsened_alarm_whose_new_policy_names_nobody_goes_to_everyone(tmp_path: Path) -> None:
    """High alarms go to a night role covered by overrides only: a medium alarm that reached the
    primary and worsens by day must still be texted as worse, to everyone, not wait for a repeat."""
    base = config()
    night = OverrideConfig(role="night", person="omar", start="2026-11-25T22:00", end="2026-11-26T06:00")
    oncall = OncallConfig(people=base.oncall.people, rotations=base.oncall.rotations, team=base.oncall.team,
                          overrides=[night])  # fmt: skip
    esc = EscalationConfig(high=EscalationPolicy(steps=[EscalationStep(after_s=0.0, notify=["night"])]))
    rig = Rig(tmp_path, Config(site="demo", alerts=base.alerts, oncall=oncall, escalation=esc))
    rig.feed([v(T0 + i, source="ecg", hr_bpm=140.0) for i in range(15)])  # medium: the primary
    assert [p for p, _, _ in rig.notifier.sent] == [FARAH]
    rig.feed([v(T0 + 15 + i, source="ecg", hr_bpm=175.0) for i in range(15)])  # high at 14:00: no night
    worse = [(p, t[:16]) for p, t, at in rig.notifier.sent if at < T0 + 40][1:]
    assert sorted(p for p, _ in worse) == sorted([AISHA, BILAL, FARAH, OMAR])
    assert rig.engine.nobody_on_call == 1
