"""Rule timers across a restart of the alert service: a condition that was building up raises its
alarm when it would have without the restart, not a whole delay later (docs/alerts.md, "Durability
and audit"). Engine-level on one SQLite store, then the service on a real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from alerts.service import AlertService
from alerts.store import AlertStore
from nabz import contract
from nabz.contract import AlarmEvent, Vitals
from tests.alerts.helpers import T0, Recorder, Rig, v
from tests.alerts.test_service import Clock, Watcher, _one, _running, _service, publisher, wait_for
from tests.servers import Mosquitto

Second = Callable[[float], list[Vitals]]

# One second of each condition, each with a delay long enough to be cut by a restart.
SCENARIOS: dict[str, tuple[Second, str]] = {
    # AF suspicion above 0.7 for 120 s (a BandRule with a fixed delay)
    "af_suspected": (lambda t: [v(t, source="ecg", af_score=0.9)], "af_suspected"),
    # partial NEWS2 2 + 2 + 2 = 6 (pulse 120, SpO2 93 %, respiration 22) for 120 s, from 60 s medians
    "news2": (
        lambda t: [v(t, source="ecg", hr_bpm=120.0, resp_bpm=22.0), v(t, source="device", spo2_pct=93.0)],
        "news2",
    ),
    # SpO2 90 %: medium after a delay scaled by depth (41.7 s)
    "spo2_low": (lambda t: [v(t, source="device", spo2_pct=90.0)], "spo2_low"),
    # leads off for 30 s (a technical FlagRule)
    "leads_off": (lambda t: [v(t, source="ecg", flags=["leads_off"])], "leads_off"),
}


def _seen(events: list[AlarmEvent]) -> list[tuple[str, str, str, float, float, bool]]:
    """Each event as the on-call doctor would tell it apart: kind, state, priority, when the
    condition began, when it was raised, and whether it is the "notified" update."""
    return [
        (e.kind, e.state, e.priority, e.condition_started_at.timestamp(), e.raised_at.timestamp(),
         e.notified_at is not None)
        for e in events
    ]  # fmt: skip


def _run(
    rig: Rig, second: Second, end_s: int, restart_at: int | None = None, *, keep_timers: bool = True
) -> list[AlarmEvent]:
    """A second of vitals, then a tick of the runner (which saves the timers), for `end_s` s; a
    restart (new engine, same store) after second `restart_at`."""
    events: list[AlarmEvent] = []
    for i in range(end_s):
        t = T0 + i
        events += rig.feed(second(t))
        events += rig.at(t)
        rig.engine.save_timers(t)  # as the service's runner does after each tick
        if i == restart_at:
            if not keep_timers:
                rig.store.save_rule_timers(t, [])  # as before there were saved timers
            rig.restart()
    return events


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_restart_while_a_condition_builds_raises_its_alarm_on_time(tmp_path: Path, name: str) -> None:
    second, kind = SCENARIOS[name]
    plain = _seen(_run(Rig(tmp_path / "plain"), second, 200))
    raised = [x for x in plain if x[0] == kind and x[1] == "active" and not x[5]]
    assert len(raised) == 1, plain
    started, at = raised[0][3], raised[0][4]
    restart_at = int((started + at) / 2 - T0)  # halfway through the delay
    assert at - started >= 20 and started - T0 < restart_at < at - T0

    restarted = _seen(_run(Rig(tmp_path / "restarted"), second, 200, restart_at))
    assert restarted == plain  # every alarm, at the same second, with the same start

    # What the saved timers are for: without them, the delay starts again after the restart.
    forgot = _seen(_run(Rig(tmp_path / "forgot"), second, 200, restart_at, keep_timers=False))
    late = [x for x in forgot if x[0] == kind and x[1] == "active" and not x[5]]
    assert late and late[0][4] >= at + (restart_at - (started - T0)) - 1


def test_timers_saved_while_an_alarm_was_open_are_not_used_once_it_has_cleared(tmp_path: Path) -> None:
    """The last save before a crash said "raised"; the alarm then cleared. Taking up that timer
    would leave the rule believing an alarm is open that is not, and a new desaturation would
    raise nothing: the saved timer is set aside, and the new desaturation raises a new alarm."""
    rig = Rig(tmp_path)
    for i in range(12):  # 82 %: high after the shortest delay
        rig.feed([v(T0 + i, source="device", spo2_pct=82.0)])
        rig.at(T0 + i)
        rig.engine.save_timers(T0 + i)  # with the open alarm they belong to
    first = rig.engine.open[("p-0001", "spo2_low")]
    events = rig.feed([v(T0 + i, source="device", spo2_pct=97.0) for i in range(12, 40)])  # no tick: no save
    assert [(e.kind, e.state) for e in events] == [("spo2_low", "cleared")]
    rig.restart()  # the crash: the saved timers still say "raised"
    assert ("p-0001", "spo2_low") not in rig.engine.open
    events = rig.feed([v(T0 + i, source="device", spo2_pct=82.0) for i in range(40, 60)])
    again = [e for e in events if e.kind == "spo2_low" and e.state == "active"]
    assert len(again) == 1 and again[0].alarm_id != first.alarm_id


def test_saved_timers_of_a_rule_no_longer_configured_or_unreadable_are_left(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.store.save_rule_timers(T0, [
        ("no_such_rule", 0, "p-0001", None, None, "{}"),
        ("af_suspected", 0, "p-0001", None, None, '{"sources": 5}'),
    ])  # fmt: skip
    rig.restart()
    second, _ = SCENARIOS["af_suspected"]
    events = _run(rig, second, 130)
    assert {(e.kind, e.state, e.condition_started_at.timestamp()) for e in events} == {
        ("af_suspected", "active", T0)  # from a fresh start, not from what could not be read
    }


@pytest.fixture
def alarms(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.url)
    yield w
    w.close()


def test_a_planned_restart_of_the_service_keeps_a_building_alarm_on_time(
    mosquitto: Mosquitto, alarms: Watcher, tmp_path: Path
) -> None:
    """On a real broker: the service stops 60 s into a 120 s AF delay (saving its timers), vitals
    published while it is down wait in its session, and the new process raises the alarm when
    the first one would have: 120 s after the condition began, not 120 s after the restart."""
    second, _ = SCENARIOS["af_suspected"]

    def publish(pub: paho.Client, clock: Clock, start: int, end: int) -> None:
        for i in range(start, end):
            clock.now = T0 + i
            (x,) = second(T0 + i)
            pub.publish(contract.vitals_topic("demo"), _one(x), qos=1).wait_for_publish(5)

    def seen_until(service: AlertService, t: float) -> Callable[[], bool]:
        return lambda: (row := service.engine.latest.get("p-0001")) is not None and row["t"].timestamp() >= t  # type: ignore[attr-defined]

    _, clock, first = _service(mosquitto, tmp_path, "test-alerts-timers", Recorder())
    with _running(first, mosquitto.url) as pub:
        publish(pub, clock, 0, 60)
        wait_for(seen_until(first, T0 + 59))
    assert ("af_suspected", 0, "p-0001") in {
        row[:3] for row in AlertStore(tmp_path / "alerts.sqlite").rule_timers()
    }

    pub = publisher(mosquitto.url)  # while no alert service runs: the broker keeps these for it
    try:
        publish(pub, clock, 60, 80)
    finally:
        pub.loop_stop()
        pub.disconnect()
    _, clock, later = _service(mosquitto, tmp_path, "test-alerts-timers", Recorder())
    with _running(later, mosquitto.url) as pub:
        publish(pub, clock, 80, 119)
        wait_for(seen_until(later, T0 + 118))
        assert alarms.get("p-0001", "af_suspected") is None  # 118 s: not yet
        publish(pub, clock, 119, 125)
        wait_for(lambda: alarms.get("p-0001", "af_suspected") is not None)
    event = alarms.get("p-0001", "af_suspected")
    assert event is not None and event.state == "active"
    assert event.condition_started_at.timestamp() == T0
    assert event.message.endswith("for 120 s"), event.message
