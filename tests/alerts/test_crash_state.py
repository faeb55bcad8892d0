"""What a crash of the alerts service (nothing saved at stop) leaves of the NEWS2 score: the values
of its 60 s windows are saved each second with the timers (only what changed), so a patient
whose score was already high is scored on them after the crash, and alarmed no later than that
save period allows (docs/alerts.md, "Durability and audit"). Engine-level on one SQLite store;
the vitals are synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts.engine import AlertEngine
from alerts.rules import News2Rule
from alerts.store import AlertStore
from nabz.contract import AlarmEvent, Vitals
from tests.alerts.helpers import T0, Rig, v
from tests.alerts.test_rule_timers import SCENARIOS, Second, _raised, _run, _seen

# After a crash the windows are as the timers: as saved at the runner's last save, a second
# before at most. That second's values are lost (acknowledged to the broker, not delivered
# again): an alarm may come that much later, never a whole delay later.
_PROMISED_S = 1.0

# Beat-to-beat the pulse swings around 120/min (three of five values above 110: median 125,
# NEWS2 2); SpO2 95 % (1) and respiration 22 (2): a partial NEWS2 of 5, medium after 120 s.
# A window refilled after a crash from its first few values can score 1 for the pulse, and the
# 120 s delay starts again.
_PULSE = (126.0, 97.0, 131.0, 125.0, 99.0)


def _news2_swinging(t: float) -> list[Vitals]:
    hr = _PULSE[int(t - T0) % len(_PULSE)]
    return [v(t, source="ecg", hr_bpm=hr, resp_bpm=22.0), v(t, source="device", spo2_pct=95.0)]


def _crash_run(rig: Rig, second: Second, end_s: int, crash_at: int, *, saved: bool) -> list[AlarmEvent]:
    """As the runner: a second of vitals, a tick, the save; a crash after second `crash_at`,
    after its save or (`saved` False) before it: that second's vitals were handled and
    acknowledged, and are not delivered again."""
    events: list[AlarmEvent] = []
    for i in range(end_s):
        now = T0 + i
        for x in second(now):
            events += rig.engine.observe(x, now)
            rig.dispatcher.step(now)
        events += rig.at(now)
        if i != crash_at or saved:
            rig.engine.save_timers(now)
        if i == crash_at:
            rig.restart()
    return events


def _news2_raised(events: list[AlarmEvent]) -> tuple[str, float, float]:
    seen = _seen(events)
    raised = _raised(seen, "news2")
    assert raised, seen
    _, _, priority, started, at, _ = raised[0]
    return priority, started, at


@pytest.mark.parametrize("saved", [True, False], ids=["after-its-save", "before-its-save"])
@pytest.mark.parametrize("crash_at", [63, 71, 86, 99, 100, 104, 111, 118])
@pytest.mark.parametrize("scenario", ["swinging", "falling"])
def test_a_crash_raises_the_news2_alarm_no_later_than_the_save_period_allows(
    tmp_path: Path, scenario: str, crash_at: int, saved: bool
) -> None:
    """A crash at any second of the 120 s delay: the alarm the doctor gets has the same priority
    and start, and comes at most the save period later than with no crash ("falling": the pulse
    drops at second 95, and only the older values keep the median up until second 126)."""
    second = _news2_swinging if scenario == "swinging" else SCENARIOS["news2"][0]
    plain = _news2_raised(_run(Rig(tmp_path / "plain"), second, 260))
    crashed = _news2_raised(_crash_run(Rig(tmp_path / "crashed"), second, 260, crash_at, saved=saved))
    assert crashed[:2] == plain[:2]
    assert plain[2] <= crashed[2] <= plain[2] + _PROMISED_S, (crashed[2] - T0, plain[2] - T0)


def _building(tmp_path: Path, seconds: int = 30) -> Rig:
    """30 s of the swinging NEWS2 of 5, saved as the runner saves each second."""
    rig = Rig(tmp_path)
    _run(rig, _news2_swinging, seconds)
    return rig


def _news2_rule(rig: Rig) -> News2Rule:
    rule = next(r for r in rig.engine.rules if isinstance(r, News2Rule))
    return rule


def test_the_news2_windows_are_saved_each_second_not_only_at_a_planned_stop(tmp_path: Path) -> None:
    rig = _building(tmp_path)
    after_crash = AlertEngine(rig.cfg, AlertStore(rig.path), now=T0 + 30)
    rule = next(r for r in after_crash.rules if isinstance(r, News2Rule))
    pulse = rule.values[("p-0001", "pulse")]
    assert list(pulse.arrived) == list(_news2_rule(rig).values[("p-0001", "pulse")].arrived)
    assert pulse.median() == 125.0


def _saved_values(rig: Rig) -> list[tuple[str, int, str, str, int, float, float]]:
    with rig.store.lock:
        return rig.store.db.execute(
            "SELECT kind, idx, patient, param, n, t, x FROM rule_window_values ORDER BY param, n"
        ).fetchall()


def test_only_what_changed_is_written_each_second(tmp_path: Path) -> None:
    """After 90 s, each window holds its last 60 s (61 values): the saved copy is the same."""
    rig = _building(tmp_path, 90)
    rule = _news2_rule(rig)
    for param in ("pulse", "spo2", "resp"):
        saved = [(t, x) for _, _, _, p, _, t, x in _saved_values(rig) if p == param]
        assert saved == list(rule.values[("p-0001", param)].arrived)
    assert len(_saved_values(rig)) == 3 * 61


def _damage(rig: Rig, sql: str) -> News2Rule:
    with rig.store.tx():
        rig.store.db.execute(sql)
    rig.store.close()
    engine = AlertEngine(rig.cfg, AlertStore(rig.path), now=T0 + 30)
    return next(r for r in engine.rules if isinstance(r, News2Rule))


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("UPDATE rule_timers SET saved_at = saved_at - 3600", "saved an hour before the start"),
        ("UPDATE rule_window_values SET kind = 'no_such_rule'", "a rule no longer configured"),
        ("UPDATE rule_timers SET idx = 5 WHERE kind = 'news2'", "a rule no longer configured"),
        ("UPDATE rule_window_values SET x = 'x' WHERE n = 3 AND param = 'spo2'", "a value no vitals give"),
        (
            "UPDATE rule_window_values SET param = 'temp' WHERE n = 3 AND param = 'pulse'",
            "a parameter NEWS2 has not here",
        ),
        ("UPDATE rule_timers SET data = 'not json' WHERE kind = 'news2'", "an unreadable row"),
    ],
    ids=["too-old", "no-such-rule", "no-such-index", "bad-value", "bad-param", "not-json"],
)
def test_saved_windows_that_cannot_be_used_are_left(tmp_path: Path, sql: str, why: str) -> None:
    """The same checks as for the timers: such windows are not taken up, and the score starts
    from new values, as it did after a crash before the windows were saved."""
    rig = _building(tmp_path)
    assert _saved_values(rig)
    rule = _damage(rig, sql)
    assert rule.values == {}, why


def test_saved_windows_are_used_up_at_start(tmp_path: Path) -> None:
    """As the timers: the next process handles newer vitals, and if it fails before its own
    save, the one after it must not score on windows that old."""
    rig = _building(tmp_path)
    rig.restart()
    assert _news2_rule(rig).values
    assert _saved_values(rig) == []
    rig.engine.save_timers(T0 + 31)  # the windows taken up are saved again, whole
    assert len(_saved_values(rig)) == 3 * 30


def test_a_patient_whose_score_falls_back_leaves_no_windows_saved(tmp_path: Path) -> None:
    rig = _building(tmp_path)
    assert _saved_values(rig)
    for i in range(30, 200):  # a pulse of 80: NEWS2 3, the building condition ends
        for x in (
            v(T0 + i, source="ecg", hr_bpm=80.0, resp_bpm=16.0),
            v(T0 + i, source="device", spo2_pct=97.0),
        ):
            rig.engine.observe(x, T0 + i)
        rig.engine.save_timers(T0 + i)
    assert [r for r in rig.store.rule_timers() if r[0] == "news2"] == []
    assert _saved_values(rig) == []


def test_windows_saved_inside_the_timers_row_by_the_code_before_are_taken_up(tmp_path: Path) -> None:
    """Until 2026-11-27 a planned stop wrote the windows into the NEWS2 timers row: a store
    upgraded across that stop still restarts the score on them."""
    rig = _building(tmp_path)
    rule = _news2_rule(rig)
    state = rule.saved()["p-0001"]
    state["windows"] = {p: [list(tx) for tx in w.arrived] for (_, p), w in rule.values.items()}
    rig.store.forget_rule_timers()
    rig.store.save_rule_timers(T0 + 29, [("news2", 0, "p-0001", None, None, json.dumps(state))])
    assert _saved_values(rig) == []
    rig.restart()
    assert _news2_rule(rig).values[("p-0001", "pulse")].median() == 125.0
