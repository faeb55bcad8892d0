"""Rule timers across a restart of the alert service: a condition that was building up raises its
alarm when it would have without the restart, not a whole delay later (docs/alerts.md, "Durability
and audit"). Engine-level on one SQLite store, then the service on a real broker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from alerts.engine import AlertEngine
from alerts.rules import BandRule
from alerts.service import AlertService
from alerts.store import AlertStore
from nabz import contract
from nabz.config import AlertsConfig, PatientAlertsConfig
from nabz.contract import AlarmEvent, Vitals
from tests.alerts.helpers import T0, Recorder, Rig, config, v
from tests.alerts.test_service import Clock, Watcher, _one, _running, _service, publisher, wait_for
from tests.servers import Mosquitto

Second = Callable[[float], list[Vitals]]


def _news2(t: float) -> list[Vitals]:
    """Partial NEWS2 from 60 s medians: SpO2 95 % (1) + respiration 22 (2) + pulse 125 (2) = 5,
    medium after 120 s; from second 95 the pulse is 95 (1). The median of the whole window stays
    at 125 until second 126, but a window holding only the values after a restart at second 100
    would score 4: only a restart that kept the windows raises the alarm at second 120."""
    hr = 125.0 if t < T0 + 95 else 95.0
    return [v(t, source="ecg", hr_bpm=hr, resp_bpm=22.0), v(t, source="device", spo2_pct=95.0)]


def _asystole_after_noise(t: float) -> list[Vitals]:
    """ECG unusable (lead noise) for 20 s, then a 6 s pause that the rules take at face value only
    12 s after the noise (`clean_for_s`): a restart at second 23 must not forget the noise."""
    if t < T0 + 20:
        return [v(t, source="ecg", pause_s=0.8, flags=["leads_off"])]
    return [v(t, source="ecg", pause_s=6.0)]


def _no_beat_then_ecg_asystole(t: float) -> list[Vitals]:
    """The patch says no beat and the oximeter no pulse (asystole by `NoBeatNoPulseRule`), both
    recover (the alarm clears after 10 s), then the ECG shows a 6 s pause (asystole by the pause
    `BandRule`): the second alarm must come even though a restart fell during the first."""
    i = t - T0
    if i < 10:
        return [v(t, source="device", device="ecg-0001", hr_bpm=0.0), v(t, source="device", pr_bpm=0.0)]
    if i < 40:
        return [v(t, source="device", device="ecg-0001", hr_bpm=70.0), v(t, source="device", pr_bpm=70.0)]
    return [v(t, source="ecg", pause_s=6.0)]


def _ecg_with_a_hole(t: float) -> list[Vitals]:
    """ECG vitals for 10 s, none for 90 s (the gateway lost them for good), then again: the hole
    shows at second 100 and is judged once the data have run on a minute past it."""
    return [] if T0 + 10 <= t < T0 + 100 else [v(t, source="ecg", hr_bpm=70.0)]


# What each scenario raises, and when to restart it (None: halfway through the first delay).
SCENARIOS: dict[str, tuple[Second, str, int | None]] = {
    # AF suspicion above 0.7 for 120 s (a BandRule with a fixed delay)
    "af_suspected": (lambda t: [v(t, source="ecg", af_score=0.9)], "af_suspected", None),
    "news2": (_news2, "news2", 100),
    # SpO2 90 %: medium after a delay scaled by depth (41.7 s)
    "spo2_low": (lambda t: [v(t, source="device", spo2_pct=90.0)], "spo2_low", None),
    # leads off for 30 s (a technical FlagRule)
    "leads_off": (lambda t: [v(t, source="ecg", flags=["leads_off"])], "leads_off", None),
    "asystole_after_noise": (_asystole_after_noise, "asystole", 23),
    "asystole_twice": (_no_beat_then_ecg_asystole, "asystole", 5),
    # data lost for good: a restart while nothing comes, and one after the hole showed
    "data_gap_in_the_hole": (_ecg_with_a_hole, "data_gap", 50),
    "data_gap_shown": (_ecg_with_a_hole, "data_gap", 120),
}

Seen = list[tuple[str, str, str, float, float, bool]]


def _seen(events: list[AlarmEvent]) -> Seen:
    """Each event as the on-call doctor would tell it apart: kind, state, priority, when the
    condition began, when it was raised, and whether it is the "notified" update."""
    return [
        (e.kind, e.state, e.priority, e.condition_started_at.timestamp(), e.raised_at.timestamp(),
         e.notified_at is not None)
        for e in events
    ]  # fmt: skip


def _run(
    rig: Rig,
    second: Second,
    end_s: int,
    restart_at: int | None = None,
    how: str = "planned",
    lag_s: float = 0.0,
) -> list[AlarmEvent]:
    """A second of vitals, then a tick of the runner and its save of the timers, for `end_s` s; a
    restart (new engine, same store) after second `restart_at`: "planned" (the service stops and
    saves everything), "crash" (only the last second's save), or "forgot" (as before any timers
    were saved). The vitals reach the service `lag_s` after they were taken (a spool, a backlog)."""
    events: list[AlarmEvent] = []
    for i in range(end_s):
        t, now = T0 + i, T0 + i + lag_s
        for x in second(t):
            events += rig.engine.observe(x, now)
            rig.dispatcher.step(now)
        events += rig.at(now)
        rig.engine.save_timers(now)  # as the service's runner does after each tick
        if i == restart_at:
            if how == "planned":
                rig.engine.save_timers(now, full=True)
            elif how == "forgot":
                rig.store.save_rule_timers(now, [])
            rig.restart()
    return events


def _raised(seen: Seen, kind: str) -> Seen:
    return [x for x in seen if x[0] == kind and x[1] == "active" and not x[5]]


# After a crash a hole that had not shown yet is not seen (only a planned stop saves every
# source's newest time). The NEWS2 windows' values are saved with the timers each second: a
# crash at second 100 finds them as they were (tests/alerts/test_crash_state.py: other seconds).
RESTARTS = [
    (name, how)
    for name in SCENARIOS
    for how in ("planned", "crash")
    if (name, how) != ("data_gap_in_the_hole", "crash")
]


@pytest.mark.parametrize(("name", "how"), RESTARTS)
def test_a_restart_raises_each_alarm_when_no_restart_would(tmp_path: Path, name: str, how: str) -> None:
    second, kind, restart_at = SCENARIOS[name]
    plain = _seen(_run(Rig(tmp_path / "plain"), second, 200))
    raised = _raised(plain, kind)
    assert raised, plain
    started, at = raised[0][3], raised[0][4]
    if restart_at is None:
        restart_at = int((started + at) / 2 - T0)  # halfway through the delay
        assert at - started >= 20 and started - T0 < restart_at < at - T0

    restarted = _seen(_run(Rig(tmp_path / "restarted"), second, 200, restart_at, how))
    assert restarted == plain  # every alarm, at the same second, with the same start

    # What the saved timers are for: without them the same data tell a different story (the
    # delay starts again, the noise is forgotten, a restored alarm holds the rule).
    if name != "asystole_twice":  # there the alarm's clearing frees the restored rule too
        forgot = _seen(_run(Rig(tmp_path / "forgot"), second, 200, restart_at, "forgot"))
        assert forgot != plain


def test_noise_before_a_restart_still_holds_values_back_when_the_vitals_come_late(tmp_path: Path) -> None:
    """What holds back the ECG values right after lead noise is judged by the data's own time,
    not the service's clock: with the vitals half a minute behind (a backlog), a restart keeps it."""
    second, _, restart_at = SCENARIOS["asystole_after_noise"]
    plain = _seen(_run(Rig(tmp_path / "plain"), second, 60, lag_s=30.0))
    assert _raised(plain, "asystole")
    for how in ("planned", "crash"):
        assert _seen(_run(Rig(tmp_path / how), second, 60, restart_at, how, lag_s=30.0)) == plain


def test_a_restored_alarm_is_not_cleared_while_another_source_is_still_beyond_the_limit(
    tmp_path: Path,
) -> None:
    """HR 135 on the ECG, 100 from the patch: hr_high stays raised. After a restart with nothing
    saved, the ECG's delay starts again (and a few seconds of poor ECG signal delay it more);
    the patch's good values must not clear the alarm meanwhile: the ECG is still beyond the limit."""

    def second(t: float) -> list[Vitals]:
        poor = T0 + 30 <= t < T0 + 34
        return [
            v(t, source="ecg", hr_bpm=135.0, sqi=0.2 if poor else 0.9),
            v(t, source="device", hr_bpm=100.0),
        ]

    rig = Rig(tmp_path)
    events = rig.feed([x for i in range(30) for x in second(T0 + i)])
    assert [(e.kind, e.state) for e in events] == [("hr_high", "active")]
    rig.restart()  # nothing saved
    events = rig.feed([x for i in range(30, 90) for x in second(T0 + i)])
    assert [e for e in events if e.kind == "hr_high"] == []  # neither cleared nor raised again
    assert ("p-0001", "hr_high") in rig.engine.open


def test_a_restored_asystole_cleared_by_the_ecg_lets_the_patch_and_oximeter_raise_the_next(
    tmp_path: Path,
) -> None:
    """No beat from the patch and no pulse from the oximeter: asystole. Restart with nothing saved:
    both asystole rules stand in for it. The ECG then shows beats and its rule clears the alarm
    (the patch has lost skin contact, so it says nothing). When the patch and the oximeter again
    agree on no beat, that is a new asystole and must alarm."""

    def second(t: float) -> list[Vitals]:
        i = t - T0
        if i < 5 or i >= 40:
            return [v(t, source="device", device="ecg-0001", hr_bpm=0.0), v(t, source="device", pr_bpm=0.0)]
        return [
            v(t, source="ecg", pause_s=0.8),
            v(t, source="device", device="ecg-0001", hr_bpm=70.0, flags=["no_contact"]),
        ]

    rig = Rig(tmp_path)
    rig.feed([x for i in range(5) for x in second(T0 + i)])
    assert ("p-0001", "asystole") in rig.engine.open
    rig.restart()
    events = rig.feed([x for i in range(5, 60) for x in second(T0 + i)])
    assert [e.state for e in events if e.kind == "asystole"] == ["cleared", "active"]


def test_a_patients_saved_rows_of_one_kind_are_taken_up_all_or_none(tmp_path: Path) -> None:
    """Asystole has two rules: a readable row for the first and a damaged one for the second
    leave both as without saved timers, not one resumed and the other not."""
    building = {
        "raised": False,
        "sources": {
            "ecg": {"band_since": {"0": T0}, "since": T0, "ok_since": None, "raised": None, "last_valid": T0}
        },
        "dirty": {},
        "calibrated_seen": None,
    }
    rig = Rig(tmp_path)
    rig.store.save_rule_timers(T0, [
        ("asystole", 0, "p-0001", None, None, json.dumps(building)),
        ("asystole", 1, "p-0001", None, None, '{"raised": false, "times": 5}'),  # fails only when read
        ("pause", 0, "p-0001", None, None, json.dumps(building)),
    ])  # fmt: skip
    rig.restart()
    asystole_pause, pause = (next(r for r in rig.engine.rules if r.kind == k) for k in ("asystole", "pause"))
    assert isinstance(asystole_pause, BandRule) and isinstance(pause, BandRule)
    assert "p-0001" not in asystole_pause.states  # not taken up
    assert pause.states["p-0001"]["ecg"].since == T0  # the pause rule's row stands alone


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


def test_a_kind_enabled_by_a_restart_alarms_though_its_rule_had_raised_unseen(tmp_path: Path) -> None:
    """spo2_low disabled for the patient: the rule raises, no alarm opens. The kind is enabled
    and the service restarted: the desaturation still going on must now alarm."""
    off = PatientAlertsConfig(disabled=["spo2_low"])
    rig = Rig(tmp_path, cfg=config(AlertsConfig(stale_after_s=1e7, patients={"p-0001": off})))
    for i in range(30):
        rig.feed([v(T0 + i, source="device", spo2_pct=82.0)])
        rig.at(T0 + i)
        rig.engine.save_timers(T0 + i, full=True)
    assert ("p-0001", "spo2_low") not in rig.engine.open
    rig.cfg = config()
    rig.restart()
    events = rig.feed([v(T0 + i, source="device", spo2_pct=82.0) for i in range(30, 60)])
    assert [(e.kind, e.state, e.priority) for e in events] == [("spo2_low", "active", "high")]


def test_an_asystole_restored_without_timers_and_cleared_by_one_rule_frees_the_other(tmp_path: Path) -> None:
    """Asystole has two rules (the ECG pause; the patch and the oximeter agreeing on no beat).
    Restored without timers, both hold the alarm raised; the second clears it when the patch and
    the oximeter report beats again. The ECG pause rule must then raise the next asystole."""
    rig = Rig(tmp_path)
    rig.feed([x for i in range(5) for x in _no_beat_then_ecg_asystole(T0 + i)])
    assert ("p-0001", "asystole") in rig.engine.open
    rig.restart()  # nothing saved
    events = rig.feed([x for i in range(5, 60) for x in _no_beat_then_ecg_asystole(T0 + i)])
    assert [e.state for e in events if e.kind == "asystole"] == ["cleared", "active"]


def test_an_alarm_restored_without_timers_clears_on_good_data(tmp_path: Path) -> None:
    """With no usable saved timers an open alarm is restored as raised; valid values back inside
    the limit for `clear_after_s` clear it, as they would have without the restart."""
    rig = Rig(tmp_path)
    rig.feed([v(T0 + i, source="device", spo2_pct=82.0) for i in range(12)])
    assert ("p-0001", "spo2_low") in rig.engine.open
    rig.restart()  # nothing saved: the alarm alone is restored
    events = rig.feed([v(T0 + i, source="device", spo2_pct=97.0) for i in range(12, 40)])
    assert [(e.kind, e.state) for e in events] == [("spo2_low", "cleared")]
    assert (
        events[0].cleared_at is not None and events[0].cleared_at.timestamp() == T0 + 22
    )  # 10 s of good data


def test_saved_timers_that_cannot_be_used_are_left(tmp_path: Path) -> None:
    """Rows of a rule no longer configured, of another version's shape, or too old when the
    service starts: the rules start afresh and the alarms come as without a restart."""
    rig = Rig(tmp_path)
    rig.store.save_rule_timers(T0, [
        ("no_such_rule", 0, "p-0001", None, None, "{}"),
        ("af_suspected", 0, "p-0001", None, None, '{"sources": 5}'),
        ("af_suspected", -1, "p-0002", None, None, '{"raised": false, "sources": {}}'),
        ("leads_off", 0, "p-0001", None, None, "not json"),
    ])  # fmt: skip
    rig.restart()
    second, _, _ = SCENARIOS["af_suspected"]
    events = _run(rig, second, 130)
    assert {(e.kind, e.state, e.condition_started_at.timestamp()) for e in events} == {
        ("af_suspected", "active", T0)  # from a fresh start, not from what could not be read
    }

    old = Rig(tmp_path / "old")
    for i in range(60):
        old.feed([v(T0 + i, source="ecg", af_score=0.9)])
    old.engine.save_timers(T0 + 59, full=True)
    assert old.store.rule_timers()
    old.store.close()
    store = AlertStore(old.path)
    soon = AlertEngine(old.cfg, store, now=T0 + 59 + 60)  # a minute later: taken up
    later = AlertEngine(old.cfg, store, now=T0 + 59 + 3600)  # an hour later: not
    assert soon._by_kind["af_suspected"][0].states and not later._by_kind["af_suspected"][0].states  # noqa: SLF001


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
    the first one would have: 120 s after the condition began, not 120 s after the restart (and
    not later: were the 40 s published while it was down lost, the gap would restart the delay)."""

    def second(t: float) -> list[Vitals]:  # AF suspected, and a partial NEWS2 of 5 building alongside
        return [
            v(t, source="ecg", af_score=0.9, hr_bpm=125.0, resp_bpm=22.0),
            v(t, source="device", spo2_pct=95.0),
        ]

    def publish(pub: paho.Client, clock: Clock, start: int, end: int) -> None:
        for i in range(start, end):
            clock.now = T0 + i
            for x in second(T0 + i):
                pub.publish(contract.vitals_topic("demo"), _one(x), qos=1).wait_for_publish(5)

    def seen_until(service: AlertService, t: float) -> Callable[[], bool]:
        return lambda: (row := service.engine.latest.get("p-0001")) is not None and row["t"].timestamp() >= t  # type: ignore[attr-defined]

    _, clock, first = _service(mosquitto, tmp_path, "test-alerts-timers", Recorder())
    with _running(first, mosquitto.url) as pub:
        publish(pub, clock, 0, 60)
        wait_for(seen_until(first, T0 + 59))
    store = AlertStore(tmp_path / "alerts.sqlite")
    saved = {row[:3]: json.loads(row[6]) for row in store.rule_timers()}
    assert saved[("af_suspected", 0, "p-0001")]["sources"]["ecg"]["last_valid"] == T0 + 59
    pulse = [row for row in store.rule_window_values() if row[:4] == ("news2", 0, "p-0001", "pulse")]
    assert len(pulse) == 60  # saved with the timers, each second and at the stop
    store.close()

    pub = publisher(mosquitto.url)  # while no alert service runs: the broker keeps these for it
    try:
        publish(pub, clock, 60, 100)  # 40 s: more than af's max_gap_s, were they not delivered
    finally:
        pub.loop_stop()
        pub.disconnect()
    _, clock, later = _service(mosquitto, tmp_path, "test-alerts-timers", Recorder())
    with _running(later, mosquitto.url) as pub:
        publish(pub, clock, 100, 119)
        wait_for(seen_until(later, T0 + 118))
        assert alarms.get("p-0001", "af_suspected") is None  # 118 s: not yet
        publish(pub, clock, 119, 125)
        wait_for(lambda: alarms.get("p-0001", "af_suspected") is not None)
    event = alarms.get("p-0001", "af_suspected")
    assert event is not None and event.state == "active"
    assert event.condition_started_at.timestamp() == T0
    assert event.message.endswith("for 120 s"), event.message


def test_data_flowing_normally_saves_no_data_gap_timers_but_a_planned_stop_saves_every_source(
    tmp_path: Path,
) -> None:
    """Each second only the patients with a hole to judge (or an open data_gap episode) are
    written; the newest time of every patient's every source is written at a planned stop only."""
    rig = Rig(tmp_path)
    for i in range(5):
        for p in ("p-0001", "p-0002"):
            rig.engine.observe(v(T0 + i, source="ecg", patient=p, device=f"ecg-{p[2:]}", hr_bpm=70.0), T0 + i)
        rig.engine.save_timers(T0 + i)
    assert [r for r in rig.store.rule_timers() if r[0] == "data_gap"] == []
    rig.engine.save_timers(T0 + 5, full=True)
    saved = {r[2]: json.loads(r[6]) for r in rig.store.rule_timers() if r[0] == "data_gap"}
    assert saved == {
        "p-0001": {"raised": False, "open_since": None, "last": [["ecg-0001", "ecg", T0 + 4]], "holes": []},
        "p-0002": {"raised": False, "open_since": None, "last": [["ecg-0002", "ecg", T0 + 4]], "holes": []},
    }


def _gap_story(events: list[AlarmEvent]) -> list[tuple[str, float, float | None]]:
    """data_gap events as the nurse's list tells them: state, raised and cleared (data time)."""
    return [
        (e.state, e.raised_at.timestamp(), e.cleared_at.timestamp() if e.cleared_at else None)
        for e in events
        if e.kind == "data_gap" and (e.state != "active" or e.notified_at is None)  # not "notified"
    ]


def _hole_then_flow(t: float) -> list[Vitals]:
    """70 s of ECG lost from second 5: shows at 75, judged (raised) at 135, cleared at 195."""
    return [] if T0 + 5 <= t < T0 + 75 else [v(t, source="ecg", hr_bpm=70.0)]


@pytest.mark.parametrize("how", ["planned", "crash"])
def test_a_data_gap_open_across_a_restart_clears_when_no_restart_would(tmp_path: Path, how: str) -> None:
    plain = _gap_story(_run(Rig(tmp_path / "plain"), _hole_then_flow, 220))
    assert plain == [("active", T0 + 135, None), ("cleared", T0 + 135, T0 + 195)]
    assert _gap_story(_run(Rig(tmp_path / how), _hole_then_flow, 220, 150, how)) == plain
    # with nothing saved the restored alarm counts from when the data were lost: it clears at once
    forgot = _gap_story(_run(Rig(tmp_path / "forgot"), _hole_then_flow, 220, 150, "forgot"))
    assert forgot[1][2] == T0 + 151


def test_a_wearable_enrolled_to_another_patient_and_back_is_no_data_gap(tmp_path: Path) -> None:
    """Enrolled to the wrong patient for two minutes and moved back: neither patient lost data."""
    rig = Rig(tmp_path)
    seq = [
        v(T0 + i, source="ecg", patient="p-0002" if 10 <= i < 130 else "p-0001", hr_bpm=70.0)
        for i in range(260)
    ]
    assert [e for e in rig.feed(seq) if e.kind == "data_gap"] == []


def test_saved_times_are_used_up_at_start(tmp_path: Path) -> None:
    """A planned stop saves every source's newest time. If the next process handles (and
    acknowledges) two more minutes of vitals and then fails without saving, the process after it
    must not take those times up again: every patient would seem to have lost two minutes."""
    rig = Rig(tmp_path)
    rig.feed([v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(10)])
    rig.engine.save_timers(T0 + 10, full=True)
    rig.restart()
    rig.feed([v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(10, 130)])  # never saved
    rig.restart()
    events = rig.feed([v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(130, 260)])
    assert [e for e in events if e.kind == "data_gap"] == []


def test_a_wearable_that_stops_after_a_hole_is_not_saved_every_second_for_good(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(AlertsConfig(stale_after_s=300)))
    rig.feed([v(T0 + i, source="ecg", hr_bpm=70.0) for i in (*range(10), 80)])  # a hole, then silence
    rig.engine.save_timers(T0 + 81)
    assert [r[0] for r in rig.store.rule_timers()] == ["data_gap"]  # the hole to judge is kept
    later = T0 + 81 + 600  # other patients' data run on; the stale-data alarm has this wearable
    rig.feed(
        [
            v(t, source="ppg", patient="p-0002", device="oxi-0002", spo2_pct=97.0)
            for t in range(int(T0), int(later))
        ]
    )
    rig.engine.save_timers(later)
    assert rig.store.rule_timers() == []


@pytest.mark.parametrize(
    "state",
    [
        {"raised": True, "open_since": None, "last": [], "holes": []},
        {"raised": False, "open_since": T0, "last": [], "holes": []},
        {"raised": False, "open_since": None, "last": [["ecg-0001", "ecg", float("nan")]], "holes": []},
        {"raised": False, "open_since": None, "last": ["xy1"], "holes": []},
        {"raised": False, "open_since": None, "last": [], "holes": [["ecg-0001", "ecg", T0, T0 + 70, "12"]]},
        {"raised": False, "open_since": None, "last": [], "holes": [["ecg-0001", "ecg", T0 + 70, T0, []]]},
    ],
    ids=[
        "raised-without-time",
        "time-without-raised",
        "nan",
        "not-a-triple",
        "filled-not-a-list",
        "backwards",
    ],
)
def test_a_damaged_data_gap_row_is_set_aside(tmp_path: Path, state: dict[str, object]) -> None:
    """Saved with the patient's open data_gap alarm: the rule then starts from that alarm alone,
    as with nothing saved, and the alarm still clears once the data flow."""
    rig = Rig(tmp_path)
    _run(rig, _hole_then_flow, 140)
    alarm = rig.engine.open[("p-0001", "data_gap")]
    row = ("data_gap", 0, "p-0001", alarm.alarm_id, alarm.priority, json.dumps(state))
    rig.store.save_rule_timers(T0 + 140, [row])
    rig.restart()
    gap = next(r for r in rig.engine.rules if r.kind == "data_gap")
    assert gap.sources == {}  # type: ignore[union-attr]
    assert gap.open_since == {"p-0001": alarm.condition_started_at}  # type: ignore[union-attr]
    events = rig.feed([v(T0 + i, source="ecg", hr_bpm=70.0) for i in range(140, 150)])
    assert [(e.kind, e.state) for e in events] == [("data_gap", "cleared")]
