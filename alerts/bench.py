"""`nabz bench alarms`: scripted events on simulated patients, through the real chain, scored.

Each patient (hardware/: seeded ECG and PPG with noise) has one scripted event — desaturation,
tachycardia, bradycardia, a pause, an asystole, AF, leads off, sensor off, data that stops, a
battery running down — or none, at a seeded time, plus motion artefacts, brief finger and lead
movements throughout (every 4 min on average; kept 15 s clear of the event itself). Their BLE notifications go through the gateway's decoder and ingest's real
pipeline (validation, storage, DSP) in worker processes; the derived vitals of all patients,
merged in time order, go through one alert engine and dispatcher on a simulated clock, as the
alert service receives them.

Scoring: an event is detected when an alarm of its kind is raised within its window (start to end
plus a grace for the rule's delay); any alarm not explained by an event of that patient (its kind
or a related one, e.g. NEWS2 during a desaturation) is a false alarm. Latency is from the moment
a rule's condition (its delay included) is met — the engine raising the alarm — to the notifier
accepting the SMS: simulated time waited (grouping) plus the measured processing time.

AF is the simulator's (`hardware` scenario `af`: RR intervals drawn independently around 110/min,
SD 20 %, no P waves, fibrillatory baseline waves; synthetic).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alerts.dispatch import Dispatcher
from alerts.engine import AlertEngine
from alerts.notify import Delivery
from alerts.store import AlertStore
from hardware.patient import Patient
from hardware.scenario import Event, Scenario, scenario
from hardware.wearables import VirtualEcgPatch, VirtualOximeter
from nabz import contract
from nabz.config import AlertsConfig, Config
from nabz.contract import Rejected, Vitals

__all__ = ["run_bench", "EVENT_KINDS"]

T0 = 1_795_597_200.0
EVENT_KINDS = (
    "normal", "desaturation", "tachycardia", "bradycardia", "pause", "asystole", "af", "leads_off",
    "sensor_off", "stale", "battery",
)  # fmt: skip
# event -> (the alarm that detects it, alarms it also explains)
_EXPECT: dict[str, tuple[str, frozenset[str]]] = {
    "desaturation": ("spo2_low", frozenset({"news2"})),
    "tachycardia": ("hr_high", frozenset({"news2"})),
    "bradycardia": ("hr_low", frozenset({"news2"})),
    "pause": ("pause", frozenset({"asystole", "hr_low", "news2", "ppg_poor_signal"})),
    "asystole": ("asystole", frozenset({"pause", "hr_low", "news2", "ppg_poor_signal", "sensor_off"})),
    "af": ("af_suspected", frozenset({"hr_high", "news2"})),
    "leads_off": ("leads_off", frozenset({"ecg_poor_signal"})),
    "sensor_off": ("sensor_off", frozenset({"ppg_poor_signal"})),
    "stale": ("stale_data", frozenset({"data_gap"})),
    "battery": ("battery_low", frozenset()),
}
_GRACE_S = 150.0


@dataclass(frozen=True, slots=True)
class Truth:
    patient: str
    event: str
    start: float  # simulated epoch seconds
    end: float


def _plan(number: int, minutes: float, seed: int) -> tuple[str, Scenario, list[Truth], float | None]:
    """The event, scenario, truth and data stop time of patient `number`."""
    pid = f"p-{number:04d}"
    kind = EVENT_KINDS[(number - 1) % len(EVENT_KINDS)]
    rng = np.random.Generator(np.random.PCG64([seed, number, 99]))
    total = minutes * 60.0
    s0 = float(round(120.0 + rng.random() * max(1.0, total - 600.0)))
    span_of = {"desaturation": 100.0, "tachycardia": 70.0, "bradycardia": 70.0, "pause": 3.6, "asystole": 8.0,
               "af": 300.0, "leads_off": 120.0, "sensor_off": 120.0}  # fmt: skip
    events: list[Event] = []
    t = float(rng.exponential(240.0))
    while t < total:  # artefacts: motion, and brief finger and lead movements that are not alarms
        what = rng.random()
        if what < 0.7:
            events.append(Event("motion", t, float(rng.uniform(3.0, 20.0)), float(rng.uniform(0.5, 2.0))))
        elif what < 0.85:
            events.append(Event("sensor_off", t, float(rng.uniform(2.0, 10.0))))
        else:
            events.append(Event("leads_off", t, float(rng.uniform(2.0, 10.0))))
        t += float(rng.exponential(240.0))
    if kind in span_of:
        # Artefacts stay clear of the event itself: an asystole under a lead that came off is not
        # in the data at all (tests/alerts cover what can be done when an artefact hides part).
        lo, hi = s0 - 15.0, s0 + span_of[kind] + 15.0
        events = [e for e in events if e.start_s + e.hold_s < lo or e.start_s > hi]
    sc = Scenario("artefacts", tuple(events))
    truth: list[Truth] = []
    stop: float | None = None
    span = dict(span_of)
    if kind == "desaturation":
        sc = sc + scenario("desaturation", s0, target_pct=84.0, ramp_s=20.0, hold_s=60.0, recover_s=20.0)
    elif kind == "tachycardia":
        sc = sc + scenario("tachycardia", s0, target_bpm=150.0, ramp_s=10.0, hold_s=60.0, recover_s=10.0)
    elif kind == "bradycardia":
        sc = sc + scenario("bradycardia", s0, target_bpm=35.0, ramp_s=10.0, hold_s=60.0, recover_s=10.0)
    elif kind in ("pause", "asystole"):
        sc = sc + scenario("asystole", s0, duration_s=span[kind])
    elif kind == "af":
        sc = sc + scenario("af", s0, duration_s=span["af"], rate_bpm=110.0)
    elif kind in ("leads_off", "sensor_off"):
        sc = sc + scenario(kind, s0, duration_s=span[kind])
    elif kind == "stale":
        stop = s0
        span["stale"] = total - s0
    elif kind == "battery":
        sc = sc + scenario("low_battery", s0, drain_pct_per_h=36.0)
    if kind == "battery":
        charge = sc.battery_pct or 0.0
        crossing = (charge - 19.5) * 3600.0 / 36.0  # the reported level drops below 20 %
        truth.append(Truth(pid, kind, T0 + max(0.0, crossing), T0 + total))
    elif kind != "normal":
        truth.append(Truth(pid, kind, T0 + s0, T0 + s0 + span[kind]))
    return pid, sc, truth, stop


def _simulate(job: tuple[int, float, int]) -> tuple[list[Vitals], list[Truth], float]:
    """One patient through wearables -> gateway decoder -> ingest pipeline: its derived vitals."""
    from gateway.decode import Decoder
    from gateway.decode import Notification as GwNote
    from ingest.pipeline import IngestCore, Message
    from ingest.store import Store

    number, minutes, seed = job
    c0 = time.process_time()
    pid, sc, truth, stop = _plan(number, minutes, seed)
    u = np.random.Generator(np.random.PCG64([seed, number, 1])).random(4).tolist()
    patient = Patient(pid, seed=(seed, number), hr_bpm=round(62.0 + 20.0 * u[0]), spo2_pct=round(96.0 + 3.0 * u[1]),
                      battery_pct=round(40.0 + 60.0 * u[2], 1), battery_drain_pct_per_h=round(1.5 + 2.5 * u[3], 2),
                      scenario=sc)  # fmt: skip
    devices = [VirtualEcgPatch(patient, f"ecg-{number:04d}"), VirtualOximeter(patient, f"oxi-{number:04d}")]
    decoder = Decoder("bench", f"gw-{number:04d}")
    with tempfile.TemporaryDirectory() as tmp:
        core = IngestCore(Store(Path(tmp) / "ingest.sqlite"), enrolment={d.device_id: pid for d in devices})
        out: list[Vitals] = []
        for _ in range(int(minutes * 60)):
            msgs = []
            for d in devices:
                for n in d.advance(1.0):
                    rel = (n.device_t_us - d.boot_us) / 1e6
                    if stop is not None and rel >= stop:
                        continue
                    r = decoder.decode(GwNote(n.device_id, n.char_uuid, n.data, int((T0 + rel) * 1e6)))
                    if isinstance(r, Rejected):
                        continue
                    topic = contract.reading_topic("bench", decoder.gateway, r.device, contract.stream_of(r))
                    msgs.append(Message(topic, contract.encode(r), T0 + rel))
            out.extend(core.handle_batch(msgs).vitals)
    return out, truth, time.process_time() - c0


class _Stopwatch:
    """A notifier that accepts at once and notes the wall time of each acceptance."""

    name = "bench"
    reaches_phone = False  # a stopwatch, not a phone

    def __init__(self) -> None:
        self.accepted: dict[tuple[str, str], float] = {}  # (phone, text of a part) -> first accepted

    def send(self, to: str, text: str, key: str, at: float) -> Delivery:
        self.accepted.setdefault((to, text), time.perf_counter())
        return Delivery(True, ref=key)


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run_bench(
    patients: int = 40, minutes: float = 30.0, seed: int = 1, workers: int | None = None
) -> dict[str, Any]:
    jobs = [(n, minutes, seed) for n in range(1, patients + 1)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(_simulate, jobs))
    vitals = sorted((v for r in results for v in r[0]), key=lambda v: v.t)
    truth = [t for r in results for t in r[1]]
    dsp_cpu_s = sum(r[2] for r in results)
    enrolment = {f"{kind}-{n:04d}": f"p-{n:04d}" for n in range(1, patients + 1) for kind in ("ecg", "oxi")}
    # The hourly cap is tested on its own; here one doctor covering every patient must not skew latency.
    cfg = Config(site="bench", alerts=AlertsConfig(max_sms_per_hour=100_000), enrolment=enrolment)
    with tempfile.TemporaryDirectory() as tmp:
        store = AlertStore(Path(tmp) / "alerts.sqlite")
        engine = AlertEngine(cfg, store)
        watch = _Stopwatch()
        dispatcher = Dispatcher(cfg, store, [watch])
        started: dict[str, float] = {}  # alarm id -> wall time its raising step began
        raised_at: dict[str, float] = {}
        wall0 = time.perf_counter()
        next_tick = T0

        def step(now: float, feed: Vitals | None) -> None:
            w = time.perf_counter()
            events = engine.observe(feed, now) if feed is not None else engine.tick(now)
            for e in events:
                if e.state == "active" and e.alarm_id not in started:
                    started[e.alarm_id] = w
                    raised_at[e.alarm_id] = now
            dispatcher.step(now)

        for x in vitals:
            now = x.t.timestamp()
            while next_tick <= now:
                step(next_tick, None)
                next_tick += 1.0
            step(now, x)
        end = T0 + minutes * 60.0 + _GRACE_S
        while next_tick <= end:
            step(next_tick, None)
            next_tick += 1.0
        engine_wall_s = time.perf_counter() - wall0
        alarms = store.alarms()
        sms = store.sms()
    return _score(
        alarms, sms, watch, started, truth, patients, minutes, len(vitals), engine_wall_s, dsp_cpu_s
    )


def _score(
    alarms: list[dict[str, Any]], sms: list[dict[str, Any]], watch: _Stopwatch, started: dict[str, float],
    truth: list[Truth], patients: int, minutes: float, n_vitals: int, engine_wall_s: float, dsp_cpu_s: float,
) -> dict[str, Any]:  # fmt: skip
    detected: list[Truth] = []
    tta: dict[str, list[float]] = {}
    explained: set[str] = set()
    for ev in truth:
        want, related = _EXPECT[ev.event]
        hits = [a for a in alarms if a["patient"] == ev.patient and a["kind"] == want
                and ev.start - 10.0 <= a["raised_at"] <= ev.end + _GRACE_S]  # fmt: skip
        if hits:
            detected.append(ev)
            tta.setdefault(ev.event, []).append(min(a["raised_at"] for a in hits) - ev.start)
        for a in alarms:
            if (
                a["patient"] == ev.patient
                and (a["kind"] == want or a["kind"] in related)
                and (ev.start - 10.0 <= a["raised_at"] <= ev.end + _GRACE_S)
            ):
                explained.add(a["alarm_id"])
    false = [a for a in alarms if a["alarm_id"] not in explained]
    first_sms: dict[str, dict[str, Any]] = {}
    for s in sms:
        if s["status"] != "sent":
            continue
        for a in s["alarm_ids"]:
            first_sms.setdefault(a, s)
    by_id = {a["alarm_id"]: a for a in alarms}
    latency, processing = [], []
    worst: list[tuple[float, str]] = []
    for alarm_id, first in first_sms.items():
        waited = first["sent_at"] - by_id[alarm_id]["raised_at"]
        accepted = watch.accepted.get((first["phone"], first["parts"][0]))
        if accepted is None or alarm_id not in started:
            continue
        proc = max(0.0, accepted - started[alarm_id]) if waited == 0 else 0.0
        processing.append(proc)
        latency.append(waited + proc)
        a = by_id[alarm_id]
        worst.append(
            (
                waited + proc,
                f"{a['patient']} {a['kind']} {a['priority']}: {waited:.0f} s grouped, {proc * 1000:.1f} ms processing",
            )
        )
    days = patients * minutes / 1440.0
    false_by_kind: dict[str, int] = {}
    for a in false:
        false_by_kind[a["kind"]] = false_by_kind.get(a["kind"], 0) + 1
    return {
        "events": len(truth),
        "detected": len(detected),
        "sensitivity": round(len(detected) / len(truth), 4) if truth else 1.0,
        "false_alarms_per_patient_day": round(len(false) / days, 3) if days else 0.0,
        "latency_p99_s": round(_p(latency, 0.99), 4),
        "time_to_alarm_s": {
            k: {"median": round(statistics.median(v), 1), "max": round(max(v), 1)}
            for k, v in sorted(tta.items())
        },
        "missed": [f"{t.patient} {t.event} at +{t.start - T0:.0f} s" for t in truth if t not in detected],
        "false_alarms": false_by_kind,
        "false_alarm_examples": [
            f"{a['patient']} {a['kind']} at +{a['raised_at'] - T0:.0f} s: {a['message']}" for a in false[:10]
        ],
        "alarms": len(alarms),
        "sms": len([s for s in sms if s["status"] == "sent"]),
        "latency_p50_s": round(_p(latency, 0.5), 4),
        "latency_worst": [w for _, w in sorted(worst, reverse=True)[:5]],
        "processing_p99_s": round(_p(processing, 0.99), 4),
        "patients": patients,
        "patient_days": round(days, 3),
        "vitals": n_vitals,
        "engine_vitals_per_s": round(n_vitals / engine_wall_s, 1) if engine_wall_s else 0.0,
        "dsp_cpu_s": round(dsp_cpu_s, 1),
    }
