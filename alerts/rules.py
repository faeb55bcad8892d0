"""Physiological alarm rules: derived vitals in, alarm conditions out. Pure; time is the vitals' own.

Rules of this file:
- A rule sees one patient's vitals in time order and says when a condition becomes an alarm
  (after its delay), when it worsens to a higher priority, and when it ends (after hysteresis).
- Limits come in bands (e.g. SpO2 < 92 % medium after 60 s, < 88 % high after 15 s). Delays
  scale with how far a limit is crossed (Welch 2011: a 15 s SpO2 delay removed most false alarms;
  a deep desaturation should not wait that long): the full delay at the limit, `min_delay_s` at
  `depth_for_min_delay` beyond it.
- Signal-quality gating: a value whose SQI is below `min_sqi`, or whose flags say the sensor is
  off or the reading questionable, is not used. It neither starts, continues nor ends an alarm;
  the technical rules (alerts.technical) turn poor signal into a technical alarm instead.
- Each source (ECG, PPG, the device's own numbers) keeps its own timers; one that recovers clears
  the alarm only if no other source with recent valid data is still beyond the limit.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, get_args

from alerts.lifecycle import PRIORITY_RANK, Priority
from alerts.profile import Limits
from nabz.config import AlertsConfig
from nabz.contract import MeasStatus, SensorStatus, Vitals

__all__ = [
    "Condition", "Band", "BandRule", "News2Rule", "NoBeatNoPulseRule", "physiological_rules", "usable", "news2_pulse",
    "news2_spo2", "news2_resp", "POOR_FLAGS",
]  # fmt: skip

# Flags (contract: wave flags, PLX sensor and measurement status, HRS contact) that make a value unusable.
POOR_FLAGS = frozenset(
    {
        "leads_off", "sensor_off", "saturated", "no_contact", "sensor_unconnected_to_user",
        "sensor_disconnected", "sensor_displaced", "sensor_malfunctioning", "equipment_malfunction",
        "questionable", "invalid", "unavailable", "erratic_signal", "poor_signal", "inadequate_signal",
        "nonpulsatile_signal", "questionable_pulse", "sensor_interference", "calibrating", "testing", "demo",
    }
)  # fmt: skip
# The PLX characteristic's status flags: only an oximeter's own SpO2 report carries them.
_SPO2_STATUS = frozenset(get_args(MeasStatus)) | frozenset(get_args(SensorStatus))
_RECENT_S = 60.0  # a source with valid data this recent can hold an alarm open
# ingest measures a pause over a 10 s ECG window: a gap left by lead noise stays in it that long.
_ECG_WINDOW_S = 12.0


UNCALIBRATED = "(uncalibrated PPG)"  # said of the server's own SpO2 estimate in an alarm's text


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's verdict for one patient: raise or worsen (active=True) or clear (active=False)."""

    patient: str
    kind: str
    active: bool
    priority: Priority
    value: float | None
    threshold: float | None
    unit: str
    started_at: float  # when the condition began (the value first crossed the limit), epoch s
    at: float  # when the verdict was reached
    message: str
    technical: bool = False


def usable(v: Vitals, min_sqi: float) -> bool:
    """Whether a vitals message may feed a physiological rule (signal-quality gate)."""
    if v.sqi is not None and v.sqi < min_sqi:
        return False
    return not POOR_FLAGS.intersection(v.flags)


@dataclass(frozen=True, slots=True)
class Band:
    limit: float
    priority: Priority
    delay_s: float


@dataclass(slots=True)
class _Source:
    band_since: dict[int, float] = field(default_factory=dict)  # band index -> crossing start
    since: float | None = None  # first crossing of the outermost limit
    ok_since: float | None = None
    raised: Priority | None = None
    last_valid: float = float("-inf")


@dataclass(slots=True)
class BandRule:
    """A quantity below ('low') or above ('high') banded limits for a depth-scaled delay."""

    kind: str
    label: str
    unit: str
    direction: Literal["low", "high"]
    bands: Callable[[Limits], list[Band]]  # outermost (mildest) band first
    min_delay_s: float
    depth_for_min_delay: float
    clear_margin: float
    clear_after_s: float
    quantity: str = ""  # the Vitals field, for `observe`
    sources: tuple[str, ...] = ()
    min_sqi: float = 0.5
    technical: bool = False
    per_device: bool = False  # timers per device rather than per source (battery)
    max_gap_s: float = 5.0  # a crossing not yet an alarm restarts after this long without valid data
    clean_for_s: float = 0.0  # use a value only if the source had no unusable data this long before
    # SpO2: our own estimate from the raw PPG is uncalibrated; while the oximeter itself reports
    # (valid or flagged), alarms follow the oximeter, and the raw-PPG estimate only stands in for
    # one that reports no SpO2 at all (or once a calibration is configured).
    uncalibrated_fallback: str | None = None  # the source that only stands in
    calibrated_seen: dict[str, float] = field(default_factory=dict)  # patient -> last oximeter report
    fmt: str = "{:.0f}"
    states: dict[str, dict[str, _Source]] = field(default_factory=dict)  # patient -> source -> state
    dirty: dict[tuple[str, str], float] = field(default_factory=dict)  # (patient, source) -> last unusable
    _bands: dict[str, list[Band]] = field(default_factory=dict)  # patient -> bands (limits are fixed)

    def _shown(self, x: float, limit: float) -> str:
        """`x` as the doctor reads it: never "HR 150/min (>150/min)" for 150.3, one more decimal
        where the rounded value would sit on the limit."""
        for text in (self.fmt.format(x), f"{x:.1f}"):
            if self._beyond(float(text), limit):
                return text
        return f"{x:.2f}"

    def _beyond(self, x: float, limit: float) -> bool:
        return x < limit if self.direction == "low" else x > limit

    def _depth(self, x: float, limit: float) -> float:
        return limit - x if self.direction == "low" else x - limit

    def _inside(self, limit: float, margin: float) -> float:
        return limit + margin if self.direction == "low" else limit - margin

    def delay_for(self, band: Band, x: float) -> float:
        if band.delay_s <= self.min_delay_s:
            return band.delay_s
        frac = min(1.0, max(0.0, self._depth(x, band.limit) / self.depth_for_min_delay))
        return band.delay_s - (band.delay_s - self.min_delay_s) * frac

    def observe(self, v: Vitals, lim: Limits) -> Condition | None:
        if v.source not in self.sources:
            return None
        source = v.device if self.per_device else v.source
        x = getattr(v, self.quantity)
        t = v.t.timestamp()
        if self.uncalibrated_fallback is not None:
            if source != self.uncalibrated_fallback and _oximeter_reported(v):
                self.calibrated_seen[v.patient] = t
            elif source == self.uncalibrated_fallback and not v.spo2_calibrated:
                if t - self.calibrated_seen.get(v.patient, float("-inf")) < _RECENT_S / 2:
                    return None
        if not usable(v, self.min_sqi):
            if self.clean_for_s:
                self.dirty[(v.patient, source)] = t
            return None
        if x is None or t - self.dirty.get((v.patient, source), float("-inf")) < self.clean_for_s:
            return None
        # SpO2 the server estimated from the raw PPG and nobody calibrated: the alarm says so
        note = f" {UNCALIBRATED}" if source == self.uncalibrated_fallback and not v.spo2_calibrated else ""
        return self.update(v.patient, source, t, float(x), lim, note)

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        """After a restart: an open alarm of this kind, which only valid recovered data may clear."""
        self.states.setdefault(patient, {})["restored"] = _Source(since=started_at, raised=priority)

    def forget_restored(self, patient: str) -> None:
        """The patient's alarm of this kind was cleared (by this rule or another of its kind): a
        stand-in from `restore` must not hold this rule raised, or its next episode would raise
        nothing."""
        per = self.states.get(patient)
        if per is not None:
            per.pop("restored", None)

    def saved(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """What a restart needs to carry on (alerts.engine `save_timers`), as JSON-able data for
        `resume`: the timers of each patient with a condition building or raised, and the last
        unusable data of each source not yet followed by `clean_for_s` of valid data (it holds
        back the values right after it).
        Patients with neither are left out. ``"raised"``: whether the rule holds an alarm raised."""
        dirty: dict[str, dict[str, float]] = {}
        for (patient, source), t in self.dirty.items():
            st = self.states.get(patient, {}).get(source)
            if st is None or st.last_valid - t < self.clean_for_s:  # it still holds values back
                dirty.setdefault(patient, {})[source] = t
        out: dict[str, dict[str, Any]] = {}
        for patient, per in self.states.items():
            if not any(st.raised is not None or st.since is not None or st.band_since for st in per.values()):
                continue
            out[patient] = {
                "raised": any(st.raised is not None for st in per.values()),
                "sources": {
                    name: {
                        "band_since": {str(i): t for i, t in st.band_since.items()},
                        "since": st.since,
                        "ok_since": st.ok_since,
                        "raised": st.raised,
                        "last_valid": st.last_valid if math.isfinite(st.last_valid) else None,
                    }
                    for name, st in per.items()
                },
                "dirty": dirty.pop(patient, {}),
                "calibrated_seen": self.calibrated_seen.get(patient),
            }
        for patient, recent_dirty in dirty.items():
            out[patient] = {"raised": False, "sources": {}, "dirty": recent_dirty, "calibrated_seen": None}
        return out

    def resume(self, patient: str, state: dict[str, Any]) -> Callable[[], None]:
        """How to take up a patient's timers as `saved` gave them: reads `state` (raising on
        anything malformed, before anything is changed) and returns the step that applies it, so
        that the engine applies a patient's rows of one kind all or none."""
        per: dict[str, _Source] = {}
        for name, st in state["sources"].items():
            raised = st["raised"]
            if raised is not None and raised not in PRIORITY_RANK:
                raise ValueError(f"unknown priority {raised!r}")
            last_valid = st["last_valid"]
            per[str(name)] = _Source(
                band_since={int(i): float(t) for i, t in st["band_since"].items()},
                since=_opt_float(st["since"]),
                ok_since=_opt_float(st["ok_since"]),
                raised=raised,
                last_valid=float("-inf") if last_valid is None else float(last_valid),
            )
        dirty = {(patient, str(source)): float(t) for source, t in state["dirty"].items()}
        seen = _opt_float(state["calibrated_seen"])

        def apply() -> None:
            if per:
                self.states[patient] = per
            self.dirty.update(dirty)
            if seen is not None:
                self.calibrated_seen[patient] = seen

        return apply

    def update(
        self, patient: str, source: str, t: float, x: float, lim: Limits, note: str = ""
    ) -> Condition | None:
        """One valid value of `source` at time `t`; the patient's verdict if it changed. `note`
        qualifies the value in an alarm's text (the uncalibrated PPG estimate)."""
        per = self.states.setdefault(patient, {})
        before = _worst(per)
        st = per.setdefault(source, _Source())
        if st.raised is None and t - st.last_valid > self.max_gap_s:
            st.band_since.clear()  # the delay counts valid data only: poor signal broke the run
            st.since = None
        st.last_valid = t
        bands = self._bands.get(patient)
        if bands is None:
            bands = self._bands[patient] = self.bands(lim)
        outer = bands[0].limit
        if self._beyond(x, outer):
            st.ok_since = None
            if st.since is None:
                st.since = t
            reset = self.clear_margin / 2
            for i, b in enumerate(bands):
                if self._beyond(x, b.limit):
                    st.band_since.setdefault(i, t)
                elif not self._beyond(x, self._inside(b.limit, reset)):
                    st.band_since.pop(i, None)
            # The innermost band the value is beyond decides: a value deep enough for "high" waits
            # for the high band's delay rather than raising "medium" first and worsening later.
            i = max(j for j, b in enumerate(bands) if self._beyond(x, b.limit))
            b = bands[i]
            started = st.band_since.get(i)
            if started is not None and t - started >= self.delay_for(b, x):
                if st.raised is None or PRIORITY_RANK[b.priority] > PRIORITY_RANK[st.raised]:
                    st.raised = b.priority
        else:
            reset = self.clear_margin / 2  # noise at the limit does not restart a delay
            for i, b in enumerate(bands):
                if not self._beyond(x, self._inside(b.limit, reset)):
                    st.band_since.pop(i, None)
            if st.raised is None and not st.band_since:
                st.since = None
                if _held_only_as_restored(per, self.per_device) and source != self.uncalibrated_fallback:
                    # An alarm restored after a restart without its timers (`restore`) gets no
                    # data of its own: this source's valid values, back inside the limit and its
                    # hysteresis for clear_after_s, clear it, as they would have cleared the
                    # source that raised it; not while another source with recent data is
                    # beyond the limit (its own delay started again at the restart).
                    if self._beyond(x, self._inside(outer, self.clear_margin)) or any(
                        (o.since is not None or o.band_since) and t - o.last_valid <= _RECENT_S
                        for name, o in per.items()
                        if name not in ("restored", source)
                    ):
                        st.ok_since = None
                    else:
                        if st.ok_since is None:
                            st.ok_since = t
                        if t - st.ok_since >= self.clear_after_s:
                            del per["restored"]
                            st.ok_since = None
            elif self._beyond(x, self._inside(outer, self.clear_margin)):
                st.ok_since = None  # between the limit and the hysteresis band: neither
            else:
                if st.ok_since is None:
                    st.ok_since = t
                if t - st.ok_since >= self.clear_after_s:
                    per[source] = _Source(last_valid=t)
                    for name, other in list(per.items()):  # silent sources cannot hold it open
                        if other.raised is not None and t - other.last_valid > _RECENT_S:
                            per[name] = _Source(last_valid=other.last_valid)
        after = _worst(per)
        if after == before:
            return None
        if after is None:
            text = f"{self.label} {self.fmt.format(x)}{self.unit}, back within {self.fmt.format(outer)}{self.unit}"
            return Condition(patient, self.kind, False, before or "low", x, outer, self.unit,
                             _since(per) or t, t, text, self.technical)  # fmt: skip
        band = next(b for b in bands if b.priority == after)
        side = "<" if self.direction == "low" else ">"
        started = _since(per) or t
        text = (
            f"{self.label} {self._shown(x, band.limit)}{self.unit}{note} ({side}{self.fmt.format(band.limit)}{self.unit}) "
            f"for {t - started:.0f} s"
        )
        return Condition(
            patient, self.kind, True, after, x, band.limit, self.unit, started, t, text, self.technical
        )


def _oximeter_reported(v: Vitals) -> bool:
    """Whether a device's vitals are its oximeter's own SpO2 report (the PLX measurement: SpO2,
    pulse rate, or its status flags alone when it has no reading). The ECG patch's heart rate
    and any device's battery level come from the same source ("device") but say nothing of SpO2:
    until 2026-11-27 a patch's flagged heart rate (electrodes off, "no_contact") counted, and
    held the raw-PPG estimate back for an oximeter that reports no SpO2 at all."""
    return v.spo2_pct is not None or v.pr_bpm is not None or not _SPO2_STATUS.isdisjoint(v.flags)


def _worst(per: dict[str, _Source]) -> Priority | None:
    best: Priority | None = None
    for st in per.values():
        if st.raised is not None and (best is None or PRIORITY_RANK[st.raised] > PRIORITY_RANK[best]):
            best = st.raised
    return best


def _since(per: dict[str, _Source]) -> float | None:
    times = [st.since for st in per.values() if st.raised is not None and st.since is not None]
    return min(times) if times else None


def _held_only_as_restored(per: dict[str, _Source], per_device: bool) -> bool:
    """Whether only the "restored" stand-in holds the patient's alarm raised. Not for timers per
    device (battery): which device's alarm it was is not known, and their levels come only when
    they change, so another device's good level says nothing of it."""
    held = per.get("restored")
    if per_device or held is None or held.raised is None:
        return False
    return not any(st.raised is not None for name, st in per.items() if name != "restored")


def _opt_float(x: float | None) -> float | None:
    return None if x is None else float(x)


# --- NEWS2 (Royal College of Physicians 2017), the parameters these wearables measure -------------
def news2_pulse(bpm: float) -> int:
    x = round(bpm)
    return 3 if x <= 40 else 1 if x <= 50 else 0 if x <= 90 else 1 if x <= 110 else 2 if x <= 130 else 3


def news2_spo2(pct: float, scale: int = 1) -> int:
    """Scale 2 (prescribed 88-92 % target) assumes air: oxygen use is not known to the system."""
    x = round(pct)
    if scale == 2:
        return 3 if x <= 83 else 2 if x <= 85 else 1 if x <= 87 else 0
    return 3 if x <= 91 else 2 if x <= 93 else 1 if x <= 95 else 0


def news2_resp(per_min: float) -> int:
    x = round(per_min)
    return 3 if x <= 8 else 1 if x <= 11 else 0 if x <= 20 else 2 if x <= 24 else 3


_NEWS2_PARAMS = ("pulse", "spo2", "resp")


@dataclass(slots=True)
class _Window:
    """A parameter's values of the last window: in arrival order, to let them go, and sorted, for
    the median (what `statistics.median` returns, without sorting the window at every score: that
    was ~40 % of the rules' CPU in process, and took the alerts service from 0.22 to 0.18 cores
    at the ingest benchmark's real-time limit; docs/benchmarks.md)."""

    arrived: deque[tuple[float, float]] = field(default_factory=deque)
    ordered: list[float] = field(default_factory=list)
    dropped: int = 0  # values let go so far: arrived[k] is the window's value number dropped + k

    def add(self, t: float, x: float) -> None:
        self.arrived.append((t, x))
        insort(self.ordered, x)

    def forget_before(self, t: float) -> None:
        while self.arrived and self.arrived[0][0] < t:
            _, x = self.arrived.popleft()
            del self.ordered[bisect_left(self.ordered, x)]
            self.dropped += 1

    def numbered_from(self, n: int) -> list[tuple[int, float, float]]:
        """The values held numbered `n` on: (number, t, x)."""
        k = max(0, n - self.dropped)
        return [(self.dropped + k + j, t, x) for j, (t, x) in enumerate(islice(self.arrived, k, None))]

    def median(self) -> float | None:
        n = len(self.ordered)
        if not n:
            return None
        h = n // 2
        return self.ordered[h] if n % 2 else (self.ordered[h - 1] + self.ordered[h]) / 2


@dataclass(slots=True)
class News2Rule:
    """The partial NEWS2 aggregate of pulse, SpO2 and (where derived) respiration, each the median
    of its valid values over the last `window_s`, raising when it stays at or above a band."""

    PARAMS = _NEWS2_PARAMS

    inner: BandRule
    min_sqi: float
    window_s: float = 60.0
    every_s: float = 1.0  # the score moves with 60 s medians: once a second is enough
    values: dict[tuple[str, str], _Window] = field(default_factory=dict)
    scored_at: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.inner.kind

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        self.inner.restore(patient, priority, started_at)

    def forget_restored(self, patient: str) -> None:
        self.inner.forget_restored(patient)

    def saved(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """The score's timers (`BandRule.saved`). The values of its windows are kilobytes a
        patient: the engine saves them as they change (`window`), for the patients given here."""
        out = self.inner.saved(full)
        for patient, state in out.items():
            state["scored_at"] = self.scored_at.get(patient)
        return out

    def window(self, patient: str, param: str, n: int) -> tuple[int, list[tuple[int, float, float]]] | None:
        """A window of the patient's (`param` of `PARAMS`) as its saved copy needs it: the number
        of the oldest value it holds, and its values numbered `n` on (number, t, x); None if the
        patient has no such window. Numbers start again at 0 in a window `resume` made."""
        w = self.values.get((patient, param))
        return None if w is None else (w.dropped, w.numbered_from(n))

    def resume(self, patient: str, state: dict[str, Any]) -> Callable[[], None]:
        """As `BandRule.resume`; `state` may hold the windows too: {param: [[t, x], ...]} in
        arrival order."""
        windows: dict[tuple[str, str], _Window] = {}
        for param, values in state.get("windows", {}).items():
            if param not in _NEWS2_PARAMS:
                raise ValueError(f"no NEWS2 parameter {param!r}")
            w = windows[(patient, param)] = _Window()
            for t, x in values:
                if not (math.isfinite(float(t)) and math.isfinite(float(x))):
                    raise ValueError(f"a value {[t, x]!r} no vitals can give")
                w.add(float(t), float(x))
        scored_at = _opt_float(state.get("scored_at"))
        inner = self.inner.resume(patient, state)

        def apply() -> None:
            inner()
            self.values.update(windows)
            if scored_at is not None:
                self.scored_at[patient] = scored_at

        return apply

    def observe(self, v: Vitals, lim: Limits) -> Condition | None:
        if not usable(v, self.min_sqi):
            return None
        t = v.t.timestamp()
        got = False
        for param, x in (("pulse", v.hr_bpm if v.source == "ecg" else None), ("spo2", v.spo2_pct),
                         ("resp", v.resp_bpm)):  # fmt: skip
            if x is not None and math.isfinite(x):
                got = True
                w = self.values.get((v.patient, param))
                if w is None:
                    w = self.values[(v.patient, param)] = _Window()
                w.add(t, float(x))
        if not got or t - self.scored_at.get(v.patient, float("-inf")) < self.every_s:
            return None
        self.scored_at[v.patient] = t
        parts: dict[str, float] = {}
        for param in _NEWS2_PARAMS:
            w = self.values.get((v.patient, param))
            if w is None:
                continue
            w.forget_before(t - self.window_s)
            m = w.median()
            if m is not None:
                parts[param] = m
        if "pulse" not in parts or "spo2" not in parts:
            return None  # a partial score needs at least pulse and SpO2
        score = news2_pulse(parts["pulse"]) + news2_spo2(parts["spo2"], lim.spo2_scale)
        if "resp" in parts:
            score += news2_resp(parts["resp"])
        return self.inner.update(v.patient, "news2", t, float(score), lim)


@dataclass(slots=True)
class NoBeatNoPulseRule:
    """Asystole when the ECG waveform cannot be used (e.g. motion artefact): the ECG patch's own
    heart rate, with skin contact, says no beat for `asystole_s` (60 / asystole_s per minute or
    less) and the oximeter says no pulse, within `window_s` of each other. Two independent
    sensors agreeing stand in for the ECG the artefact hid (Drew 2014: most false asystole alarms
    are ECG artefact, which is why one sensor alone does not raise it here)."""

    asystole_s: float
    clear_after_s: float
    window_s: float = 5.0
    kind: str = "asystole"
    no_beat_since: dict[str, float] = field(default_factory=dict)
    no_beat_at: dict[str, float] = field(default_factory=dict)
    no_pulse_at: dict[str, float] = field(default_factory=dict)
    raised: dict[str, float] = field(default_factory=dict)
    ok_since: dict[str, float] = field(default_factory=dict)
    restored: set[str] = field(default_factory=set)  # raised only as a stand-in after a restart

    def restore(self, patient: str, priority: Priority, started_at: float) -> None:
        self.raised[patient] = started_at
        self.restored.add(patient)

    def forget_restored(self, patient: str) -> None:
        """The patient's asystole alarm was cleared (perhaps by the ECG pause rule): a raised
        state that only stood in for it after a restart goes, or the next no-beat-no-pulse
        episode would raise nothing."""
        if patient in self.restored:
            self.restored.discard(patient)
            self.raised.pop(patient, None)
            self.ok_since.pop(patient, None)

    _STATE = ("no_beat_since", "no_beat_at", "no_pulse_at", "raised", "ok_since")

    def saved(self, full: bool = False) -> dict[str, dict[str, Any]]:
        """Each patient with no beat reported or an alarm raised: its times, for `resume`."""
        return {
            p: {
                "times": {name: getattr(self, name).get(p) for name in self._STATE},
                "raised": p in self.raised,
                "restored": p in self.restored,
            }
            for p in set(self.no_beat_since) | set(self.raised)
        }

    def resume(self, patient: str, state: dict[str, Any]) -> Callable[[], None]:
        times = {name: _opt_float(state["times"][name]) for name in self._STATE}
        restored = bool(state["restored"])

        def apply() -> None:
            for name, t in times.items():
                if t is not None:
                    getattr(self, name)[patient] = t
            if restored:
                self.restored.add(patient)

        return apply

    def observe(self, v: Vitals, lim: Limits) -> Condition | None:
        if v.source != "device":
            return None
        p, t = v.patient, v.t.timestamp()
        if v.hr_bpm is not None and "no_contact" not in v.flags and v.spo2_pct is None:  # the patch's HRM
            if v.hr_bpm <= 60.0 / self.asystole_s:
                self.no_beat_since.setdefault(p, t)
                self.no_beat_at[p] = t
                self.ok_since.pop(p, None)
            else:
                self.no_beat_since.pop(p, None)
                if p in self.raised and v.hr_bpm >= 30.0:
                    ok = self.ok_since.setdefault(p, t)
                    if t - ok >= self.clear_after_s:
                        since = self.raised.pop(p)
                        del self.ok_since[p]
                        self.restored.discard(p)
                        return Condition(p, self.kind, False, "high", v.hr_bpm, None, "/min", since, t,
                                         f"heartbeat back, HR {v.hr_bpm:.0f}/min")  # fmt: skip
        if "nonpulsatile_signal" in v.flags or v.pr_bpm == 0.0:
            self.no_pulse_at[p] = t
        beat, pulse = self.no_beat_at.get(p), self.no_pulse_at.get(p)
        if p in self.raised or beat is None or pulse is None or p not in self.no_beat_since:
            return None
        if abs(beat - pulse) <= self.window_s and t - max(beat, pulse) <= self.window_s:
            since = self.no_beat_since[p] - self.asystole_s  # the last beat came that long before
            self.raised[p] = since
            return Condition(p, self.kind, True, "high", 0.0, self.asystole_s, " s", since, t,
                             "No heartbeat (ECG patch) and no pulse (oximeter)")  # fmt: skip
        return None


def physiological_rules(cfg: AlertsConfig) -> list[BandRule | News2Rule | NoBeatNoPulseRule]:
    """The physiological rules, with limits and delays from the configuration."""
    q = cfg.min_sqi
    pause_wait = max(0.0, cfg.asystole_s - cfg.pause_s)  # a pause that becomes an asystole is one alarm
    return [
        BandRule(
            kind="spo2_low", label="SpO2", unit="%", direction="low", quantity="spo2_pct",
            sources=("ppg", "device"), min_sqi=q, uncalibrated_fallback="ppg",
            bands=lambda lim: [Band(lim.spo2_low, "medium", cfg.spo2_sustained_s),
                               Band(lim.spo2_critical, "high", cfg.spo2_delay_s)],
            min_delay_s=cfg.spo2_min_delay_s, depth_for_min_delay=6.0, clear_margin=2.0,
            clear_after_s=cfg.clear_after_s,
        ),
        BandRule(
            kind="hr_high", label="HR", unit="/min", direction="high", quantity="hr_bpm",
            sources=("ecg", "device"), min_sqi=q,
            bands=lambda lim: [Band(lim.hr_high, "medium", cfg.hr_delay_s),
                               Band(lim.hr_critical_high, "high", cfg.hr_delay_s)],
            min_delay_s=cfg.hr_min_delay_s, depth_for_min_delay=30.0, clear_margin=5.0,
            clear_after_s=cfg.clear_after_s,
        ),
        BandRule(
            kind="hr_low", label="HR", unit="/min", direction="low", quantity="hr_bpm",
            sources=("ecg", "device"), min_sqi=q,
            bands=lambda lim: [Band(lim.hr_low, "medium", cfg.hr_delay_s),
                               Band(lim.hr_critical_low, "high", cfg.hr_delay_s)],
            min_delay_s=cfg.hr_min_delay_s, depth_for_min_delay=10.0, clear_margin=5.0,
            clear_after_s=cfg.clear_after_s,
        ),
        BandRule(
            kind="asystole", label="No heartbeat", unit=" s", direction="high", quantity="pause_s",
            sources=("ecg",), min_sqi=q, bands=lambda lim: [Band(cfg.asystole_s, "high", 0.0)],
            min_delay_s=0.0, depth_for_min_delay=1.0, clear_margin=1.0, clear_after_s=cfg.clear_after_s,
            fmt="{:.1f}", clean_for_s=_ECG_WINDOW_S,
        ),
        BandRule(
            kind="pause", label="Pause in heartbeat", unit=" s", direction="high", quantity="pause_s",
            sources=("ecg",), min_sqi=q, bands=lambda lim: [Band(cfg.pause_s, "medium", pause_wait)],
            min_delay_s=pause_wait, depth_for_min_delay=1.0, clear_margin=0.5,
            clear_after_s=cfg.clear_after_s, fmt="{:.1f}", clean_for_s=_ECG_WINDOW_S,
        ),
        BandRule(
            kind="af_suspected", label="AF suspected, score", unit="", direction="high", quantity="af_score",
            sources=("ecg",), min_sqi=q, bands=lambda lim: [Band(cfg.af_score, "medium", cfg.af_sustained_s)],
            # The score halves when the turning-point test is unsure (ingest.dsp.hrv.af_score): a
            # wide band keeps a sustained AF from restarting its delay at each such value.
            min_delay_s=cfg.af_sustained_s, depth_for_min_delay=1.0, clear_margin=0.5, clear_after_s=60.0,
            fmt="{:.2f}", max_gap_s=30.0,  # a rhythm over minutes: a short artefact does not restart it
        ),
        NoBeatNoPulseRule(cfg.asystole_s, cfg.clear_after_s),
        News2Rule(
            BandRule(
                kind="news2", label="NEWS2 (partial)", unit="", direction="high",
                bands=lambda lim: [Band(cfg.news2_medium - 0.5, "medium", cfg.news2_sustained_s),
                                   Band(cfg.news2_high - 0.5, "high", cfg.news2_sustained_s)],
                min_delay_s=cfg.news2_sustained_s, depth_for_min_delay=1.0, clear_margin=1.0,
                clear_after_s=60.0,
            ),
            min_sqi=q,
        ),
    ]  # fmt: skip
