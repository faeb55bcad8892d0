"""The ward as the nurse station shows it: one tile per patient, built from derived vitals and
alarm events. Pure: messages and `now` in, plain dicts (the JSON the page draws) out.

Rules of this file:
- A tile shows the latest value of each quantity with the time it came; a quantity older than
  `stale_after_s` is not shown as current, and a tile with no vitals for that long is stale.
- Heart rate: the ECG's, else the ECG patch's own, else the pulse rate from the oximeter or PPG.
  SpO2: the oximeter's own while it reports, else the estimate from the raw PPG (as the alarm
  rules choose, docs/alerts.md "SpO2 sources"). Either is "uncalibrated" unless its message says
  `spo2_calibrated` (docs/contract.md "Derived vitals").
- Alarms: one per patient and kind, the latest event wins; a cleared alarm leaves the tile. An
  event for an alarm already cleared is an old retained message and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nabz.contract import AlarmEvent, Vitals

__all__ = ["Ward", "Value", "PRIORITY_RANK"]

PRIORITY_RANK = {"high": 3, "medium": 2, "low": 1}
_QUANTITIES = ("hr_bpm", "pr_bpm", "spo2_pct", "sqi", "battery_pct", "resp_bpm")


@dataclass(frozen=True, slots=True)
class Value:
    x: float
    t: float  # epoch s of the message it came in
    device: str
    calibrated: bool = False


@dataclass
class _Patient:
    values: dict[str, Value] = field(default_factory=dict)  # "<source>.<quantity>" -> latest
    flags: dict[str, tuple[float, list[str]]] = field(
        default_factory=dict
    )  # "<source>.<device>" -> (t, flags)
    last_seen: float | None = None
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> event as plain data
    cleared: dict[str, None] = field(default_factory=dict)  # the last alarm ids known cleared, oldest first


_BATTERY_KEPT_S = 86400.0
SITE_PREFIX = "site-"  # the pseudo-patient of a site-wide alarm (alerts.watchdog.site_patient)
_CLEARED_KEPT = 64  # cleared alarm ids remembered per patient (late events of them are ignored)


def _ts(x: Any) -> float | None:
    return None if x is None else float(x.timestamp())


class Ward:
    def __init__(self, stale_after_s: float, labels: dict[str, str] | None = None) -> None:
        self.stale_after_s = stale_after_s
        self.labels = dict(labels or {})
        self.patients: dict[str, _Patient] = {}

    def add_patient(self, patient: str) -> None:
        self.patients.setdefault(patient, _Patient())

    # --- input --------------------------------------------------------------------------------
    def vitals(self, v: Vitals, received_at: float | None = None) -> None:
        """One vitals message, received at `received_at` by the station's clock: a time after
        that (a gateway clock running fast: ingest accepts up to 5 minutes ahead) counts as that,
        or a patient whose data stopped would look live for minutes."""
        p = self.patients.setdefault(v.patient, _Patient())
        t = v.t.timestamp() if received_at is None else min(v.t.timestamp(), received_at)
        for q in _QUANTITIES:
            x = getattr(v, q)
            if x is None:
                continue
            # a battery is each wearable's own: the patch's low level is not hidden by the oximeter's
            key = f"{v.source}.{q}" if q != "battery_pct" else f"{v.source}.{q}.{v.device}"
            old = p.values.get(key)
            if old is None or old.t <= t:
                p.values[key] = Value(float(x), t, v.device, q == "spo2_pct" and v.spo2_calibrated)
        where = f"{v.source}.{v.device}"  # one wearable's flags are not cleared by another's
        old_flags = p.flags.get(where)
        if old_flags is None or old_flags[0] <= t:
            p.flags[where] = (t, list(v.flags))
        p.last_seen = t if p.last_seen is None else max(p.last_seen, t)

    def alarm(self, e: AlarmEvent) -> None:
        self.alarm_data(
            {
                "alarm_id": e.alarm_id,
                "patient": e.patient,
                "kind": e.kind,
                "priority": e.priority,
                "state": e.state,
                "message": e.message,
                "raised_at": _ts(e.raised_at),
                "acknowledged_at": _ts(e.acknowledged_at),
                "acknowledged_by": e.acknowledged_by,
            }
        )

    def alarm_data(self, a: dict[str, Any]) -> None:
        """An alarm as plain data (from an event, or the alerts store at start-up)."""
        if a["state"] == "cleared" and a["patient"] not in self.patients:
            return  # a retained clear of a patient not on the ward (a site alarm long over): no tile
        p = self.patients.setdefault(a["patient"], _Patient())
        if a["alarm_id"] in p.cleared:
            return
        if a["state"] == "cleared":
            p.cleared[a["alarm_id"]] = None
            if len(p.cleared) > _CLEARED_KEPT:  # bounded: a retained message is one per kind
                del p.cleared[next(iter(p.cleared))]
            current = p.alarms.get(a["kind"])
            if current is not None and current["alarm_id"] == a["alarm_id"]:
                del p.alarms[a["kind"]]
            if a["patient"].startswith(SITE_PREFIX) and not p.alarms and p.last_seen is None:
                del self.patients[a["patient"]]  # the site's alarm is over: its tile goes with it
            return
        current = p.alarms.get(a["kind"])
        if (
            current is not None
            and current["alarm_id"] != a["alarm_id"]
            and current["raised_at"] > a["raised_at"]
        ):
            return  # an older alarm of this kind, replayed
        p.alarms[a["kind"]] = dict(a)

    # --- output -------------------------------------------------------------------------------
    def open_alarm(self, alarm_id: str) -> dict[str, Any] | None:
        for p in self.patients.values():
            for a in p.alarms.values():
                if a["alarm_id"] == alarm_id:
                    return a
        return None

    def stale(self, patient: str, now: float) -> bool:
        p = self.patients.get(patient)
        return p is None or p.last_seen is None or now - p.last_seen > self.stale_after_s

    def _fresh(self, p: _Patient, key: str, now: float) -> Value | None:
        v = p.values.get(key)
        return v if v is not None and now - v.t <= self.stale_after_s else None

    def _pick(self, p: _Patient, keys: tuple[str, ...], now: float) -> tuple[str, Value] | None:
        for k in keys:
            v = self._fresh(p, k, now)
            if v is not None:
                return k.split(".")[0], v
        return None

    def tile(self, patient: str, now: float) -> dict[str, Any]:
        p = self.patients.get(patient) or _Patient()
        hr = self._pick(p, ("ecg.hr_bpm", "device.hr_bpm", "device.pr_bpm", "ppg.pr_bpm"), now)
        spo2 = self._pick(p, ("device.spo2_pct", "ppg.spo2_pct"), now)
        sqi = {s: round(v.x, 2) for s in ("ecg", "ppg") if (v := self._fresh(p, f"{s}.sqi", now))}
        # each wearable's latest level of the last day (batteries report on change), the lowest shown
        battery = [v for k, v in p.values.items() if ".battery_pct" in k and now - v.t <= _BATTERY_KEPT_S]
        low = min(battery, key=lambda v: v.x) if battery else None
        flags = sorted({f for t, fs in p.flags.values() if now - t <= self.stale_after_s for f in fs})
        alarms = sorted(
            p.alarms.values(), key=lambda a: (-PRIORITY_RANK.get(a["priority"], 0), a["raised_at"])
        )
        unacked = [a for a in alarms if a["state"] == "active"]
        top = alarms[0]["priority"] if alarms else None
        return {
            "patient": patient,
            "label": self.labels.get(patient, patient),
            "hr": None if hr is None else {"value": round(hr[1].x), "source": hr[0]},
            "spo2": None
            if spo2 is None
            else {"value": round(spo2[1].x), "source": spo2[0], "calibrated": spo2[1].calibrated},
            "sqi": sqi,
            "battery": None if low is None else {"value": round(low.x), "device": low.device, "t": low.t},
            "flags": flags,
            "last_seen": p.last_seen,
            "stale": self.stale(patient, now),
            "alarm_priority": top,
            "unacknowledged": len(unacked),
            "alarms": alarms,
        }

    def tiles(self, now: float) -> list[dict[str, Any]]:
        return [
            self.tile(pid, now) for pid in sorted(self.patients, key=lambda x: (self.labels.get(x, x), x))
        ]

    def summary(self, now: float) -> dict[str, Any]:
        by_priority = {"high": 0, "medium": 0, "low": 0}
        for p in self.patients.values():
            for a in p.alarms.values():
                by_priority[a["priority"]] = by_priority.get(a["priority"], 0) + 1
        return {
            "patients": len(self.patients),
            "stale": sum(1 for pid in self.patients if self.stale(pid, now)),
            "open_alarms": by_priority,
        }
