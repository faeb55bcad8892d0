"""Technical alarms: the equipment or the data, not the patient. Pure; time is injected.

Rules of this file:
- Vitals-driven rules (sensor off, leads off, poor signal, battery, data gaps) use the vitals' own
  time; clock-driven ones (stale data, gateway and device offline) use `now` from the runner, so
  they fire at any hour even when nothing arrives at all — the failure home users fear most.
- A technical condition must persist (`after_s`) before it is an alarm: a finger moved for a
  moment or a gateway reconnecting is not worth waking anyone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from alerts.lifecycle import Priority
from alerts.rules import Band, BandRule, Condition, _opt_float
from nabz.config import AlertsConfig
from nabz.contract import GatewayStatus, Vitals

__all__ = ["FlagRule", "GapRule", "StaleTracker", "GatewayTracker", "technical_rules"]

_SENSOR_OFF = frozenset(
    {"sensor_off", "sensor_unconnected_to_user", "sensor_disconnected", "sensor_displaced"}
)
_LEADS_OFF = frozenset({"leads_off", "no_contact"})
_GAP_FRAMES = 20  # unrecoverable frames between two gateway status messages worth an alarm (~10 s of ECG)
_GAP_CLEAR_S = 600.0  # ... cleared after ten minutes without more


@dataclass(slots=True)
class _Episode:
    since: float | None = None
    ok_since: float | None = None
    raised: bool = False


@dataclass(slots=True)
class FlagRule:
    """`test(v)` says True (condition present), False (absent) or None (this message cannot tell)."""

    kind: str
    priority: Priority
    after_s: float
    clear_after_s: float
    test: Callable[[Vitals], bool | None]
    text: str
    states: dict[str, _Episode] = field(default_factory=dict)

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        self.states[patient] = _Episode(since=started_at, raised=True)

    def forget_restored(self, patient: str) -> None:
        """Nothing: one rule per kind, and its episode ends when the alarm does."""

    def saved(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """Each patient whose condition is building or raised: its episode, for `resume`."""
        return {
            p: {"since": e.since, "ok_since": e.ok_since, "raised": e.raised}
            for p, e in self.states.items()
            if e.since is not None or e.raised
        }

    def resume(self, patient: str, state: dict[str, Any]) -> Callable[[], None]:
        episode = _Episode(
            since=_opt_float(state["since"]),
            ok_since=_opt_float(state["ok_since"]),
            raised=bool(state["raised"]),
        )
        return lambda: self.states.__setitem__(patient, episode)

    def observe(self, v: Vitals, lim: object = None) -> Condition | None:
        present = self.test(v)
        if present is None:
            return None
        t = v.t.timestamp()
        st = self.states.setdefault(v.patient, _Episode())
        if present:
            st.ok_since = None
            if st.since is None:
                st.since = t
            if not st.raised and t - st.since >= self.after_s:
                st.raised = True
                text = f"{self.text} for {t - st.since:.0f} s ({v.device})"
                return Condition(v.patient, self.kind, True, self.priority, t - st.since, self.after_s, "s",
                                 st.since, t, text, True)  # fmt: skip
            return None
        if not st.raised:
            st.since = None
            return None
        if st.ok_since is None:
            st.ok_since = t
        if t - st.ok_since < self.clear_after_s:
            return None
        since = st.since or t
        self.states[v.patient] = _Episode()
        return Condition(v.patient, self.kind, False, self.priority, None, None, "s", since, t,
                         f"{self.text}: resolved ({v.device})", True)  # fmt: skip


@dataclass(slots=True)
class _Hole:
    start: float  # the data time before the hole
    end: float  # ... and after it, when it showed
    filled: list[float]  # data times that came later from inside it


@dataclass(slots=True)
class _Source:
    patient: str  # whose data they are now (a device can be enrolled to another patient)
    last: float  # the newest data time
    hole: _Hole | None = None  # the hole not judged yet


@dataclass(slots=True)
class GapRule:
    """A hole of `gap_s` or more in one device's derived data that is still not filled once the
    data have run on `grace_s` past it: the data in it are lost for good. A late delivery fills
    it: a gateway's spool arrives in order and leaves no hole at all, and the frames a wearable
    resends after a BLE drop-out come after the live frames that showed the hole (within a
    minute at most: the gateway's resend timeout), so the hole is judged only after that."""

    gap_s: float
    stale_s: float = float("inf")  # a longer silence is the stale-data alarm's to report
    clear_after_s: float = 60.0
    grace_s: float = 60.0
    kind: str = "data_gap"
    sources: dict[tuple[str, str], _Source] = field(default_factory=dict)  # (device, source)
    open_since: dict[str, float] = field(default_factory=dict)  # patient -> data back since
    newest: float = float("-inf")  # the newest data time seen from any device

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        self.open_since[patient] = started_at

    def forget_restored(self, patient: str) -> None:
        """Nothing: one rule per kind, and its episode ends when the alarm does."""

    def saved(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """Each second: each patient's holes not judged yet and open episode, while their data
        could still come (a device silent for longer is the stale-data alarm's: its hole is
        judged if it comes back, but not saved every second for good). At a planned stop
        (`full`): also the newest time of every source, so that a hole open across the restart
        shows when the data come back. The newest times are not saved each second: after a
        crash the vitals handled since the last save are not delivered again (they were
        acknowledged), and an older time would show a hole that is not there."""
        recent = self.newest - self.stale_s - max(self.grace_s, self.clear_after_s)
        out: dict[str, dict[str, Any]] = {}

        def entry(patient: str) -> dict[str, Any]:
            since = self.open_since.get(patient)
            return out.setdefault(
                patient, {"raised": since is not None, "open_since": since, "last": [], "holes": []}
            )

        for patient, since in self.open_since.items():
            if full or since >= recent:
                entry(patient)
        for (device, source), src in self.sources.items():
            h = src.hole
            if h is not None and (full or h.end >= recent):
                entry(src.patient)["holes"].append([device, source, h.start, h.end, list(h.filled)])
            if full:
                entry(src.patient)["last"].append([device, source, src.last])
        return out

    def resume(self, patient: str, state: dict[str, Any]) -> Callable[[], None]:
        """Raises ValueError on anything it cannot take up as it was saved (the row is set aside)."""
        raised, since = state["raised"], state["open_since"]
        if raised is not (since is not None) or (since is not None and not _is_time(since)):
            raise ValueError(f"open_since {since!r} disagrees with raised {raised!r}")
        sources: dict[tuple[str, str], _Source] = {}
        for device, source, last in state["last"]:
            if not (isinstance(device, str) and isinstance(source, str) and _is_time(last)):
                raise ValueError(f"bad newest time {[device, source, last]!r}")
            sources[(device, source)] = _Source(patient, last)
        for device, source, a, b, filled in state["holes"]:
            if not (isinstance(device, str) and isinstance(source, str) and isinstance(filled, list)
                    and all(_is_time(x) for x in (a, b, *filled)) and a < b):  # fmt: skip
                raise ValueError(f"bad hole {[device, source, a, b, filled]!r}")
            src = sources.setdefault((device, source), _Source(patient, b))
            src.hole = _Hole(a, b, list(filled))

        def apply() -> None:
            self.sources.update(sources)
            if since is not None:
                self.open_since[patient] = since

        return apply

    def observe(self, v: Vitals, lim: object = None) -> Condition | None:
        if v.source == "device":
            return None  # device numbers come at irregular intervals (battery: on change)
        t = v.t.timestamp()
        self.newest = max(self.newest, t)
        key = (v.device, v.source)
        src = self.sources.get(key)
        if src is None or src.patient != v.patient:  # new, or enrolled to another patient
            self.sources[key] = _Source(v.patient, t)
            return self._flowing(v.patient, t)
        prev = src.last
        src.last = max(prev, t)
        hole = src.hole
        if hole is not None and hole.start < t < hole.end:
            hole.filled.append(t)
        out = None
        if hole is not None and t >= hole.end + self.grace_s:
            src.hole = None
            out = self._judge(v, hole, t)
        if self.gap_s <= t - prev < self.stale_s and src.hole is None:
            src.hole = _Hole(prev, t, [])
        return out if out is not None else self._flowing(v.patient, t)

    def _flowing(self, patient: str, t: float) -> Condition | None:
        back = self.open_since.get(patient)
        if back is not None and t - back >= self.clear_after_s:
            del self.open_since[patient]
            return Condition(patient, self.kind, False, "low", None, self.gap_s, "s", back, t,
                             "data flowing again", True)  # fmt: skip
        return None

    def _judge(self, v: Vitals, hole: _Hole, now: float) -> Condition | None:
        """The widest stretch of the hole that nothing filled, if it is still `gap_s` or more."""
        times = sorted([hole.start, *hole.filled, hole.end])
        lost, since = max((b - a, a) for a, b in zip(times, times[1:], strict=False))
        if lost < self.gap_s:
            return None
        self.open_since[v.patient] = now
        text = f"{lost:.0f} s of {v.source.upper()} data lost ({v.device})"
        return Condition(v.patient, self.kind, True, "low", lost, self.gap_s, "s", since, now, text, True)


def _is_time(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(slots=True)
class StaleTracker:
    """No data from an enrolled device for `after_s` (by the runner's clock, at any hour)."""

    after_s: float
    devices: dict[str, str] = field(default_factory=dict)  # device -> patient
    last_seen: dict[str, float] = field(default_factory=dict)  # device -> now when last heard
    raised: dict[str, float] = field(default_factory=dict)  # patient -> since
    kind: str = "stale_data"

    def enrol(self, device: str, patient: str, now: float) -> None:
        self.devices[device] = patient
        self.last_seen.setdefault(device, now)  # never heard from: counts from now

    def seen(self, device: str, patient: str, now: float) -> None:
        self.devices[device] = patient
        self.last_seen[device] = now

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        self.raised[patient] = started_at

    def tick(self, now: float) -> list[Condition]:
        quiet: dict[str, list[tuple[str, float]]] = {}
        for device, patient in self.devices.items():
            last = self.last_seen.get(device, now)
            if now - last >= self.after_s:
                quiet.setdefault(patient, []).append((device, last))
        out: list[Condition] = []
        for patient, items in quiet.items():
            if patient in self.raised:
                continue
            since = min(last for _, last in items)
            self.raised[patient] = since
            names = ", ".join(sorted(d for d, _ in items))
            out.append(Condition(patient, self.kind, True, "medium", now - since, self.after_s, "s", since, now,
                                 f"no data for {(now - since) / 60:.0f} min ({names})", True))  # fmt: skip
        for patient in [p for p in self.raised if p not in quiet]:
            since = self.raised.pop(patient)
            out.append(Condition(patient, self.kind, False, "medium", None, self.after_s, "s", since, now,
                                 "data flowing again", True))  # fmt: skip
        return out


def _plain(text: str | None) -> str:
    """A gateway's free-text reason as it may appear in an alarm and its SMS: letters, digits and
    a little punctuation, 40 characters at most (it is the gateway's word, not ours)."""
    return "".join(c for c in (text or "") if c.isascii() and (c.isalnum() or c in " _.,:-/()"))[:40].strip()


@dataclass(slots=True)
class GatewayTracker:
    """Gateway offline (its Last Will, or a clean shutdown) and devices missing from an online
    gateway's list, each for `after_s`; alarms are per patient behind that gateway."""

    after_s: float
    patient_of: Callable[[str], str | None]  # device -> patient
    devices: dict[str, set[str]] = field(default_factory=dict)  # gateway -> devices last listed
    offline: dict[str, tuple[float, str]] = field(default_factory=dict)  # gateway -> (since, reason)
    missing: dict[str, float] = field(default_factory=dict)  # device -> since
    raised: dict[tuple[str, str], float] = field(default_factory=dict)  # (patient, kind) -> since
    gap_frames: dict[str, int] = field(default_factory=dict)  # device -> unrecoverable frames, all time
    gaps: dict[str, tuple[float, int]] = field(default_factory=dict)  # device -> (when, frames lost)
    faults: dict[str, float] = field(default_factory=dict)  # device -> since it reported a sensor fault
    # gateway -> device -> since when its statuses have listed it (the longest-listing gateway owns it)
    listing: dict[str, dict[str, float]] = field(default_factory=dict)

    def restore(self, patient: str, kind: str, started_at: float) -> None:
        self.raised[(patient, kind)] = started_at

    def status(self, s: GatewayStatus, now: float) -> None:
        """A gateway's status. A wearable belongs to the gateway that has listed it longest (offline
        or not): another gateway's words about it are left out, so a gateway (or someone holding its
        credentials) speaks for its own wearables only. A wearable moved to another home moves once
        its old gateway stops listing it."""
        if s.state == "offline":
            self.offline.setdefault(s.gateway, (now, _plain(s.reason) or "offline"))
            return
        self.offline.pop(s.gateway, None)
        mine = self.listing.get(s.gateway, {})
        since = {d: mine.get(d, now) for d in (*s.devices, *(h.device for h in s.health))}
        others = {
            d
            for g, ds in self.listing.items()
            if g != s.gateway
            for d, t in ds.items()
            if t < since.get(d, t)
        }
        health = [h for h in s.health if h.device not in others]
        s = msgspec.structs.replace(s, devices=[d for d in s.devices if d not in others], health=health)
        listed = set(s.devices) | {h.device for h in s.health}
        self.listing[s.gateway] = {d: since[d] for d in listed}
        lost = {h.device for h in s.health if h.state == "lost"}
        elsewhere = {d for g, ds in self.listing.items() if g != s.gateway for d in ds}
        for d in (self.devices.get(s.gateway, set()) - listed - elsewhere) | lost:  # moved on: not missing
            # A device the gateway reports lost has been away its `lost_after_s` already.
            self.missing.setdefault(d, now - (self.after_s if d in lost else 0.0))
        for d in listed - lost:
            self.missing.pop(d, None)
        self.devices[s.gateway] = self.devices.get(s.gateway, set()) | listed
        for h in s.health:
            if h.device_state == "sensor_fault":  # the wearable's own word: its sensor stopped answering
                self.faults.setdefault(h.device, now)
            elif h.device_state is not None:
                self.faults.pop(h.device, None)
        for h in s.health:  # waveform frames the gateway could not get back: lost for good
            before = self.gap_frames.get(h.device)
            self.gap_frames[h.device] = h.gap_frames
            if before is not None and h.gap_frames - before >= _GAP_FRAMES:
                self.gaps[h.device] = (now, h.gap_frames - before)

    def tick(self, now: float) -> list[Condition]:
        want: dict[tuple[str, str], tuple[float, str]] = {}
        # An alarm already raised (or restored after a restart) stays while the cause lasts, even
        # if this process has only just seen the cause again.
        for gw, (since, reason) in self.offline.items():
            for d in sorted(self.devices.get(gw, set())):
                p = self.patient_of(d)
                key = (p or "", "gateway_offline")
                if p is not None and (now - since >= self.after_s or key in self.raised):
                    want.setdefault(key, (since, f"home gateway {gw} offline: {reason}"))
        for d, since in self.missing.items():
            p = self.patient_of(d)
            key = (p or "", "device_offline")
            if p is not None and (now - since >= self.after_s or key in self.raised):
                want.setdefault(key, (since, f"{d} not connected to its gateway"))
        for d, since in self.faults.items():
            p = self.patient_of(d)
            key = (p or "", "device_fault")
            if p is not None and (now - since >= self.after_s or key in self.raised):
                want.setdefault(key, (since, f"{d} reports a sensor fault"))
        for d, (when, frames) in list(self.gaps.items()):
            p = self.patient_of(d)
            if p is None or now - when >= _GAP_CLEAR_S:
                del self.gaps[d]
                continue
            want.setdefault(
                (p, "gateway_data_gap"), (when, f"{frames} waveform frames from {d} lost for good")
            )
        out: list[Condition] = []
        for (p, kind), (since, text) in want.items():
            if (p, kind) not in self.raised:
                self.raised[(p, kind)] = since
                if kind == "gateway_data_gap":
                    out.append(Condition(p, kind, True, "low", None, None, "", since, now, text, True))
                    continue
                out.append(Condition(p, kind, True, "medium", now - since, self.after_s, "s", since, now,
                                     f"{text} for {(now - since) / 60:.0f} min", True))  # fmt: skip
        # Clear only on evidence: the patient's devices are listed by a gateway that is online
        # (after a restart the retained Last Will names no devices; the alarm waits for a birth).
        online = {
            self.patient_of(d) for gw, devs in self.devices.items() if gw not in self.offline for d in devs
        }
        for key in [
            k for k in self.raised if k not in want and (k[0] in online or k[1] == "gateway_data_gap")
        ]:
            since = self.raised.pop(key)
            out.append(Condition(key[0], key[1], False, "medium", None, self.after_s, "s", since, now,
                                 "connected again", True))  # fmt: skip
        return out


def _sensor_off(v: Vitals) -> bool | None:
    if v.source == "ecg" or v.battery_pct is not None:
        return None
    if _SENSOR_OFF.intersection(v.flags):
        return True
    return False if v.spo2_pct is not None else None


def _leads_off(v: Vitals) -> bool | None:
    if v.source == "ppg" or v.spo2_pct is not None or v.battery_pct is not None:
        return None
    if _LEADS_OFF.intersection(v.flags):
        return True
    return False if v.hr_bpm is not None else None


def _poor(source: str, off: frozenset[str], min_sqi: float) -> Callable[[Vitals], bool | None]:
    def test(v: Vitals) -> bool | None:
        if v.source != source or v.sqi is None or off.intersection(v.flags):
            return None
        return v.sqi < min_sqi

    return test


def technical_rules(cfg: AlertsConfig) -> list[FlagRule | BandRule | GapRule]:
    """The vitals-driven technical rules."""
    return [
        FlagRule("sensor_off", "low", cfg.sensor_off_after_s, 5.0, _sensor_off, "oximeter off the finger"),
        FlagRule("leads_off", "low", cfg.leads_off_after_s, 5.0, _leads_off, "ECG leads off"),
        FlagRule("ecg_poor_signal", "low", cfg.poor_signal_after_s, 10.0, _poor("ecg", _LEADS_OFF, cfg.min_sqi),
                 "ECG signal too poor to use"),
        FlagRule("ppg_poor_signal", "low", cfg.poor_signal_after_s, 10.0, _poor("ppg", _SENSOR_OFF, cfg.min_sqi),
                 "oximeter signal too poor to use"),
        BandRule(
            kind="battery_low", label="battery", unit="%", direction="low", quantity="battery_pct",
            sources=("device",), min_sqi=0.0, technical=True, per_device=True,
            bands=lambda lim: [Band(cfg.battery_low_pct, "low", 0.0), Band(cfg.battery_critical_pct, "medium", 0.0)],
            min_delay_s=0.0, depth_for_min_delay=1.0, clear_margin=5.0, clear_after_s=0.0,
        ),
        GapRule(cfg.gap_alarm_s, cfg.stale_after_s),
    ]  # fmt: skip
