"""Tiles from messages: which value is shown, when a tile is stale, how alarms come and go."""

from __future__ import annotations

from datetime import UTC, datetime

from dashboards.station.ward import Ward
from nabz.contract import AlarmEvent, Vitals

T0 = 1_795_597_200.0


def vit(t: float, source: str, patient: str = "p-0001", device: str = "oxi-0001", **v: object) -> Vitals:
    return Vitals(id=f"v-{t}-{source}-x", site="demo", patient=patient, device=device,
                  t=datetime.fromtimestamp(t, UTC), source=source, **v)  # type: ignore[arg-type]  # fmt: skip


def alarm(
    alarm_id: str,
    state: str,
    priority: str = "high",
    kind: str = "spo2_low",
    raised: float = T0,
    **kw: object,
) -> AlarmEvent:
    return AlarmEvent(id=f"ev-{alarm_id}-{state}", alarm_id=alarm_id, site="demo", patient="p-0001", kind=kind,
                      priority=priority, state=state, message="SpO2 84% (<88%)",  # type: ignore[arg-type]
                      condition_started_at=datetime.fromtimestamp(raised - 5, UTC),
                      raised_at=datetime.fromtimestamp(raised, UTC), **kw)  # type: ignore[arg-type]  # fmt: skip


def test_ecg_heart_rate_and_oximeter_spo2_are_preferred_and_spo2_says_uncalibrated() -> None:
    w = Ward(stale_after_s=15)
    w.vitals(vit(T0, "ppg", pr_bpm=80, spo2_pct=91.0, sqi=0.8))
    tile = w.tile("p-0001", T0 + 1)
    assert tile["hr"] == {"value": 80, "source": "ppg"}
    assert tile["spo2"] == {"value": 91, "source": "ppg", "calibrated": False}
    w.vitals(vit(T0 + 1, "ecg", device="ecg-0001", hr_bpm=72.4, sqi=0.93))
    w.vitals(vit(T0 + 1, "device", spo2_pct=97.0, pr_bpm=75.0))
    tile = w.tile("p-0001", T0 + 2)
    assert tile["hr"] == {"value": 72, "source": "ecg"} and tile["spo2"]["source"] == "device"
    assert tile["sqi"] == {"ecg": 0.93, "ppg": 0.8}
    w.vitals(vit(T0 + 3, "ppg", spo2_pct=96.0, spo2_calibrated=True))
    # The oximeter still reports: its value stays; once it stops, the calibrated PPG takes over.
    assert w.tile("p-0001", T0 + 4)["spo2"]["source"] == "device"
    assert w.tile("p-0001", T0 + 17)["spo2"] == {"value": 96, "source": "ppg", "calibrated": True}


def test_a_tile_without_vitals_for_longer_than_the_limit_is_stale_and_shows_no_old_values() -> None:
    w = Ward(stale_after_s=15)
    w.add_patient("p-0003")
    assert w.tile("p-0003", T0)["stale"] and w.tile("p-0003", T0)["last_seen"] is None
    w.vitals(vit(T0, "ecg", device="ecg-0001", hr_bpm=70, sqi=0.9))
    w.vitals(vit(T0, "device", battery_pct=55))
    assert not w.tile("p-0001", T0 + 15)["stale"]
    tile = w.tile("p-0001", T0 + 15.5)
    assert tile["stale"] and tile["hr"] is None and tile["last_seen"] == T0
    assert tile["battery"]["value"] == 55  # battery is reported rarely: shown with its own time
    assert w.summary(T0 + 15.5)["stale"] == 2


def test_older_messages_do_not_overwrite_newer_values() -> None:
    w = Ward(stale_after_s=15)
    w.vitals(vit(T0 + 5, "ecg", device="ecg-0001", hr_bpm=90))
    w.vitals(vit(T0 + 1, "ecg", device="ecg-0001", hr_bpm=60))  # a spool catching up
    assert w.tile("p-0001", T0 + 6)["hr"]["value"] == 90 and w.tile("p-0001", T0 + 6)["last_seen"] == T0 + 5


def test_alarms_show_while_open_colour_the_tile_by_their_highest_priority_and_leave_when_cleared() -> None:
    w = Ward(stale_after_s=15)
    w.alarm(alarm("a1", "active", "medium", kind="battery_low"))
    w.alarm(alarm("a2", "active", "high"))
    tile = w.tile("p-0001", T0)
    assert tile["alarm_priority"] == "high" and [a["alarm_id"] for a in tile["alarms"]] == ["a2", "a1"]
    assert tile["unacknowledged"] == 2
    w.alarm(
        alarm(
            "a2", "acknowledged", acknowledged_by="sana", acknowledged_at=datetime.fromtimestamp(T0 + 9, UTC)
        )
    )
    tile = w.tile("p-0001", T0 + 10)
    assert tile["unacknowledged"] == 1 and tile["alarms"][0]["acknowledged_by"] == "sana"
    w.alarm(alarm("a2", "cleared"))
    assert [a["alarm_id"] for a in w.tile("p-0001", T0)["alarms"]] == ["a1"]
    w.alarm(alarm("a2", "active"))  # the retained message of a cleared alarm, replayed: ignored
    assert w.open_alarm("a2") is None
    assert w.summary(T0)["open_alarms"] == {"high": 0, "medium": 1, "low": 0}
    w.alarm(alarm("a0", "active", kind="battery_low", raised=T0 - 100))  # an older alarm of that kind
    assert w.open_alarm("a1") is not None and w.open_alarm("a0") is None


def test_the_lowest_battery_of_the_patients_wearables_is_shown_and_each_ones_flags_kept() -> None:
    """Both wearables report as the "device" source: the oximeter's full battery must not hide
    the patch's nearly flat one, nor its message without flags clear the patch's no-contact."""
    w = Ward(stale_after_s=15)
    w.vitals(vit(T0, "device", device="ecg-0001", battery_pct=6, flags=["no_contact"]))
    w.vitals(vit(T0 + 1, "device", device="oxi-0001", battery_pct=95))
    tile = w.tile("p-0001", T0 + 2)
    assert tile["battery"]["value"] == 6 and tile["battery"]["device"] == "ecg-0001"
    assert tile["flags"] == ["no_contact"]


def test_readings_dated_ahead_of_the_station_clock_do_not_keep_a_silent_patient_live() -> None:
    """A gateway clock 4 minutes fast (ingest accepts up to 5): the patient's data stop, and the
    tile must go stale after the usual 15 s, not after four minutes more."""
    w = Ward(stale_after_s=15)
    w.vitals(vit(T0 + 240, "device", spo2_pct=96.0), received_at=T0)
    assert not w.stale("p-0001", T0 + 10)
    assert w.stale("p-0001", T0 + 20) and w.tile("p-0001", T0 + 20)["spo2"] is None


def test_a_site_alarm_leaves_no_tile_once_it_is_over() -> None:
    """ "No data from the site" is raised on the pseudo-patient site-<site>: its tile shows while
    the alarm is open and goes when it clears (before, an empty tile stayed, counted as stale)."""
    w = Ward(stale_after_s=15)

    def site(state: str) -> AlarmEvent:
        return AlarmEvent(id=f"ev-s-{state}", alarm_id="s1", site="demo", patient="site-demo", kind="site_quiet",
                          priority="high", state=state, message="no data from the site",  # type: ignore[arg-type]
                          condition_started_at=datetime.fromtimestamp(T0, UTC),
                          raised_at=datetime.fromtimestamp(T0, UTC))  # fmt: skip

    w.alarm(site("active"))
    assert "site-demo" in w.patients
    w.alarm(site("cleared"))
    assert "site-demo" not in w.patients and w.summary(T0)["patients"] == 0
