"""Scripted clinical and technical events for a virtual patient, and the named presets.

Rules of this file:
- Pure: a `Scenario` is an immutable list of timed `Event`s; values at a time are functions of that
  time only, so any chunking of a simulation sees the same patient.
- Times are patient seconds since the simulation started (t = 0 when the wearables start).
- Vital-sign events (`hr`, `spo2`) ramp linearly from the value before them to `target` over
  `ramp_s`, hold for `hold_s`, and ramp back over `recover_s`; later events blend on top of earlier
  ones, so a tachycardia followed at its end by a bradycardia slides from one to the other.
- On/off events (`leads_off`, `sensor_off`, `motion`, `asystole`, `af`) are active on
  [start_s, start_s + hold_s); for `motion`, `target` is the artefact amplitude (1 = default size),
  for `af` the mean ventricular rate (bpm) of the atrial fibrillation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Event", "EventKind", "Scenario", "SCENARIO_NAMES", "scenario"]

EventKind = Literal["hr", "spo2", "leads_off", "sensor_off", "motion", "asystole", "af"]
_KINDS: tuple[EventKind, ...] = ("hr", "spo2", "leads_off", "sensor_off", "motion", "asystole", "af")
_F64 = npt.NDArray[np.float64]
_Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Event:
    """One timed event. See the module docstring for how each kind is applied."""

    kind: EventKind
    start_s: float
    hold_s: float = math.inf
    target: float = 1.0
    ramp_s: float = 0.0
    recover_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {', '.join(_KINDS)}")
        if self.hold_s < 0 or self.ramp_s < 0 or self.recover_s < 0:
            raise ValueError("event durations must be >= 0")

    @property
    def end_s(self) -> float:
        """End of the hold (vital-sign events) or of the active interval (on/off events)."""
        if self.kind in ("hr", "spo2"):
            return self.start_s + self.ramp_s + self.hold_s
        return self.start_s + self.hold_s

    def weight(self, t: float) -> float:
        """How far (0..1) a vital-sign event has pulled the value towards its target at t."""
        if t < self.start_s:
            return 0.0
        w = 1.0 if self.ramp_s == 0 else min(1.0, (t - self.start_s) / self.ramp_s)
        end = self.end_s
        if t >= end:
            w = 0.0 if self.recover_s == 0 else w * max(0.0, 1.0 - (t - end) / self.recover_s)
        return w

    def weights(self, t: _F64) -> _F64:
        """`weight` for an array of times."""
        if self.ramp_s == 0:
            w = (t >= self.start_s).astype(np.float64)
        else:
            w = np.clip((t - self.start_s) / self.ramp_s, 0.0, 1.0)
        end = self.end_s
        if self.recover_s == 0:
            return np.where(t < end, w, 0.0)
        return w * np.clip(1.0 - (t - end) / self.recover_s, 0.0, 1.0)

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named list of events, and optional battery overrides (percent, percent per hour)."""

    name: str = "normal"
    events: tuple[Event, ...] = ()
    battery_pct: float | None = None
    battery_drain_pct_per_h: float | None = None
    _by_kind: dict[str, tuple[Event, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.events, key=lambda e: e.start_s))
        object.__setattr__(self, "events", ordered)
        by_kind = {k: tuple(e for e in ordered if e.kind == k) for k in _KINDS}
        object.__setattr__(self, "_by_kind", by_kind)

    def __add__(self, other: Scenario) -> Scenario:
        """Both scenarios' events; battery settings of `other` win where it has them."""
        return Scenario(
            name=f"{self.name}+{other.name}",
            events=self.events + other.events,
            battery_pct=other.battery_pct if other.battery_pct is not None else self.battery_pct,
            battery_drain_pct_per_h=(
                other.battery_drain_pct_per_h
                if other.battery_drain_pct_per_h is not None
                else self.battery_drain_pct_per_h
            ),
        )

    def of_kind(self, kind: EventKind) -> tuple[Event, ...]:
        return self._by_kind[kind]

    def value(self, kind: Literal["hr", "spo2"], base: float, t: float) -> float:
        """The true heart rate or SpO2 at t, given the patient's baseline."""
        v = base
        for e in self._by_kind[kind]:
            if t < e.start_s:
                break
            w = e.weight(t)
            if w:
                v += (e.target - v) * w
        return v

    def values(self, kind: Literal["hr", "spo2"], base: float, t: _F64) -> _F64:
        """`value` for an array of times."""
        v = np.full(t.shape, base, dtype=np.float64)
        for e in self._by_kind[kind]:
            v += (e.target - v) * e.weights(t)
        return v

    def active(self, kind: EventKind, t: float) -> bool:
        return any(e.active(t) for e in self._by_kind[kind])

    def at(self, kind: EventKind, t: float) -> Event | None:
        """The on/off event of this kind active at t (the latest to start), or None."""
        found = None
        for e in self._by_kind[kind]:
            if e.start_s > t:
                break
            if e.active(t):
                found = e
        return found

    def mask(self, kind: EventKind, t: _F64) -> _Bool | None:
        """Where an on/off event is active over sorted times t; None when it never is (fast path)."""
        out: _Bool | None = None
        t0 = float(t[0])
        t1 = float(t[-1])
        for e in self._by_kind[kind]:
            if e.start_s > t1 or e.end_s <= t0:
                continue
            m = (t >= e.start_s) & (t < e.end_s)
            out = m if out is None else out | m
        return out

    def level(self, kind: EventKind, t: _F64) -> _F64 | None:
        """Like `mask`, but each active event contributes its `target` (motion amplitude)."""
        out: _F64 | None = None
        t0 = float(t[0])
        t1 = float(t[-1])
        for e in self._by_kind[kind]:
            if e.start_s > t1 or e.end_s <= t0:
                continue
            lv = np.where((t >= e.start_s) & (t < e.end_s), e.target, 0.0)
            out = lv if out is None else out + lv
        return out


# ---------------------------------------------------------------------------------------------
# Presets: name -> (default parameters, builder(start_s, params)).
_Params = dict[str, float]


def _hr(start: float, p: _Params) -> tuple[Event, ...]:
    return (Event("hr", start, p["hold_s"], p["target_bpm"], p["ramp_s"], p["recover_s"]),)


def _desat(start: float, p: _Params) -> tuple[Event, ...]:
    return (Event("spo2", start, p["hold_s"], p["target_pct"], p["ramp_s"], p["recover_s"]),)


def _tachy_brady(start: float, p: _Params) -> tuple[Event, ...]:
    ramp, hold = p["ramp_s"], p["hold_s"]
    brady_start = start + ramp + hold
    return (
        Event("hr", start, hold, p["tachy_bpm"], ramp, ramp),
        Event("hr", brady_start, hold, p["brady_bpm"], ramp, ramp),
    )


def _on_off(kind: EventKind) -> Callable[[float, _Params], tuple[Event, ...]]:
    def build(start: float, p: _Params) -> tuple[Event, ...]:
        return (Event(kind, start, p["duration_s"], p.get("amplitude", 1.0)),)

    return build


def _af(start: float, p: _Params) -> tuple[Event, ...]:
    if not 40.0 <= p["rate_bpm"] <= 200.0:
        raise ValueError(f"af needs rate_bpm between 40 and 200, not {p['rate_bpm']:g}")
    return (Event("af", start, p["duration_s"], p["rate_bpm"]),)


_Builder = Callable[[float, _Params], tuple[Event, ...]]
_PRESETS: dict[str, tuple[_Params, _Builder]] = {
    "normal": ({}, lambda start, p: ()),
    "tachycardia": ({"target_bpm": 150.0, "ramp_s": 5.0, "hold_s": 20.0, "recover_s": 5.0}, _hr),
    "bradycardia": ({"target_bpm": 40.0, "ramp_s": 5.0, "hold_s": 20.0, "recover_s": 5.0}, _hr),
    "tachy_brady": ({"tachy_bpm": 150.0, "brady_bpm": 40.0, "ramp_s": 5.0, "hold_s": 15.0}, _tachy_brady),
    "desaturation": ({"target_pct": 84.0, "ramp_s": 6.0, "hold_s": 20.0, "recover_s": 8.0}, _desat),
    "sensor_off": ({"duration_s": 10.0}, _on_off("sensor_off")),
    "leads_off": ({"duration_s": 10.0}, _on_off("leads_off")),
    "motion": ({"duration_s": 5.0, "amplitude": 1.0}, _on_off("motion")),
    "asystole": ({"duration_s": 8.0}, _on_off("asystole")),
    "af": ({"duration_s": 300.0, "rate_bpm": 110.0}, _af),
    "low_battery": ({"drain_pct_per_h": 36.0}, lambda start, p: ()),
}
SCENARIO_NAMES: tuple[str, ...] = tuple(_PRESETS)


def scenario(name: str, start_s: float = 0.0, **params: float) -> Scenario:
    """A named preset starting at `start_s` (patient seconds); `params` override its defaults.

    Presets and their parameters (defaults):
      normal; tachycardia / bradycardia (target_bpm 150 / 40, ramp_s 5, hold_s 20, recover_s 5);
      tachy_brady (tachy_bpm 150 then brady_bpm 40, ramp_s 5, hold_s 15 each, then back to normal);
      desaturation (target_pct 84, ramp_s 6, hold_s 20, recover_s 8);
      sensor_off / leads_off (duration_s 10); motion (duration_s 5, amplitude 1); asystole
      (duration_s 8); af (duration_s 300, rate_bpm 110: atrial fibrillation, irregularly irregular
      beats around that rate, no P waves, fibrillatory waves on the baseline); low_battery (drain_pct_per_h 36: the battery starts just above 15 % and
      its level drops to 14 %, raising the low-battery flag, at start_s).
    Combine presets with `+`: ``scenario("desaturation", 2) + scenario("motion", 40)``.
    """
    try:
        defaults, build = _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}") from None
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"scenario {name!r} has no parameter(s) {sorted(unknown)}")
    p = {**defaults, **{k: float(v) for k, v in params.items()}}
    if name == "low_battery":
        drain = p["drain_pct_per_h"]
        if drain <= 0:
            raise ValueError("low_battery needs a positive drain_pct_per_h")
        # Charge 14.5 % is where the level rounds down to 14: reach it exactly at start_s.
        return Scenario(name, (), 14.5 + drain * max(start_s, 0.0) / 3600.0, drain)
    return Scenario(name, build(start_s, p))
