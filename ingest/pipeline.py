"""What ingest does with a batch of MQTT messages, without knowing MQTT.

validate (contract) -> enrolment -> dedup (message id) -> sinks (InfluxDB first, then the embedded
store in one transaction) -> signal processing per device -> derived vitals.

Rules of this file:
- Nothing on input raises: each message ends as stored, duplicate, or dead-lettered with a reason.
- The InfluxDB write of a batch happens before the store's commit, and the broker acknowledgement
  after both (gateway QoS 1 + this order = at-least-once into InfluxDB, exactly once in the store;
  a rewrite of the same InfluxDB points is an overwrite).
- Signal processing runs once per stored message, after its commit, so a retried batch never feeds
  a processor twice. It takes each device's messages in time order (a batch is sorted, back-to-back
  frames joined); waveforms far behind live processing are stored only (see FUTURE_S and friends).
- Nothing after the commit raises: a store write then (derived vitals, counters) that fails is
  logged and counted in memory (`not_stored_vitals`, `uncounted`), and the derived vitals are
  returned all the same, to be published; were it to raise, the retry would find the batch stored
  and acknowledge it, and the vitals would never go out.
- PPG windows due in a batch are analysed together (streams.analyse_many), with the same values
  as one at a time.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypedDict, cast

import msgspec
import numpy as np

from ingest.decode import decode_many
from ingest.dsp.ppg import Calibration
from ingest.dsp.streams import EcgProcessor, PpgProcessor, PpgWindow, analyse_many
from ingest.lines import chunk_lines_many, reading_lines, to_ns, vitals_lines
from ingest.store import Store
from nabz import contract
from nabz.contract import (
    BatteryReading,
    EcgReading,
    HrReading,
    PpgReading,
    Reading,
    Rejected,
    Spo2Reading,
    Vitals,
)

__all__ = ["IngestCore", "Message", "BatchResult", "LineSink"]

log = logging.getLogger(__name__)

# Bad-input policy (docs/operations.md "What happens to bad input"):
FUTURE_S = 300.0  # a reading dated this far past ingest's clock is dead-lettered ("future_dated")
# A reading dated before this (2000-01-01T00:00:00Z) is dead-lettered ("past_dated"): a device or
# gateway clock never set. Before 1678 it would not even fit the store's nanoseconds.
PAST_FLOOR_S = 946_684_800.0
LATE_DSP_S = 60.0  # a waveform this far behind its processor is stored but not fed to it ("late")
RATES_HZ = {"ecg": (100, 1000), "ppg": (25, 1000)}  # waveform rates the signal processing takes


class LineSink(Protocol):
    """Somewhere line protocol goes (ingest.influx.InfluxSink). `write` raises SinkError on failure."""

    def write(self, lines: list[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    received_at: float  # ingest's clock, epoch seconds


@dataclass(slots=True)
class BatchResult:
    stored: int = 0  # messages
    stored_readings: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    vitals: list[Vitals] = field(default_factory=list)


@dataclass(slots=True)
class _Accepted:
    msg: Message
    reading: Reading
    patient: str
    t: float  # reading.t as epoch seconds (a datetime's timestamp() is asked for once)
    stream: str


class _Who(TypedDict):
    site: str
    patient: str
    device: str


class IngestCore:
    """Validation, dedup, storage and signal processing for one ingest worker."""

    def __init__(
        self,
        store: Store,
        *,
        sink: LineSink | None = None,
        enrolment: dict[str, str] | None = None,
        new_id: Callable[[], str] | None = None,
        waveforms: str = "points",
        spo2_calibration: Calibration | None = None,
        keep_payloads: bool = True,
    ) -> None:
        self.store = store
        self.sink = sink
        self._chunks = waveforms == "chunks"
        if spo2_calibration is not None:
            PpgProcessor(100.0, calibration=spo2_calibration)  # a malformed table fails here, at start
        self._calibration = spo2_calibration
        self._keep_payloads = keep_payloads
        store.strip_index(keep_payloads)  # no payloads kept: nothing for the strip index to find
        self.new_id = new_id or contract.message_ids()
        before = store.enrolment()
        for device, patient in (enrolment or {}).items():
            if before.get(device, patient) != patient:
                log.warning(
                    "ingest: the configuration's [enrolment] moves %s from %s back to %s (and drops any gateway"
                    " binding); enrol it with `nabz enrol` and correct the configuration", device, before[device], patient,
                )  # fmt: skip
            store.enrol(device, patient)
        self._enrolment = store.enrolment()
        self._gateway_of = store.enrolment_gateways()
        # device -> (sample rate, processor); a new rate (reconfigured wearable) starts afresh
        self._ecg: dict[str, tuple[int, EcgProcessor]] = {}
        self._ppg: dict[str, tuple[int, PpgProcessor]] = {}
        self._newest: dict[tuple[str, str], float] = {}  # (device, stream) -> newest t fed to DSP
        self._last_seq: dict[tuple[str, str], int] = {}  # (device, stream) -> newest frame fed to DSP
        self._pending_ppg: list[tuple[PpgWindow, _Who, list[str]]] = []
        self.not_stored_vitals = 0  # derived vitals published but not in the store (it failed)
        self.uncounted = 0  # counter bumps lost after a commit (the store failed)

    def refresh_enrolment(self) -> None:
        self._enrolment = self.store.enrolment()
        self._gateway_of = self.store.enrolment_gateways()

    @property
    def enrolment(self) -> dict[str, str]:
        """device -> patient, as last read from the store."""
        return dict(self._enrolment)

    def handle_batch(self, batch: list[Message]) -> BatchResult:
        """Store a batch; raises only if the sink or the store fails before the batch's commit
        (then nothing of the batch is committed; the sink may have had its lines: at least once)."""
        result = BatchResult()
        accepted: list[_Accepted] = []
        rejected: list[tuple[Message, Rejected]] = []
        ids_in_batch: set[str] = set()
        refreshed = False  # enrolment re-read from the store at most once a batch (a flood of strangers)
        # (waveform samples come as int64 arrays: ingest.decode.decode_many)
        for msg, outcome in zip(batch, decode_many([(m.topic, m.payload) for m in batch]), strict=True):
            if isinstance(outcome, Rejected):
                rejected.append((msg, outcome))
                continue
            patient = self._enrolment.get(outcome.device)
            bound = self._gateway_of.get(outcome.device)
            if (patient is None or (bound is not None and bound != outcome.gateway)) and not refreshed:
                refreshed = True  # enrolled, or enrolled at another gateway, a moment ago?
                self.refresh_enrolment()
                patient = self._enrolment.get(outcome.device)
                bound = self._gateway_of.get(outcome.device)
            if patient is None:
                rejected.append((msg, Rejected("not_enrolled", f"device {outcome.device} is not enrolled")))
                continue
            if bound is not None and bound != outcome.gateway:
                detail = f"device {outcome.device} is enrolled at gateway {bound}, not {outcome.gateway}"
                rejected.append((msg, Rejected("wrong_gateway", detail)))
                continue
            t = outcome.t.timestamp()
            stream = contract.stream_of(outcome)
            why = _implausible(outcome, stream, t, msg.received_at)
            if why is not None:
                rejected.append((msg, why))
                continue
            if outcome.id in ids_in_batch:
                result.duplicates += 1
                continue
            ids_in_batch.add(outcome.id)
            accepted.append(_Accepted(msg, outcome, patient, t, stream))
        if accepted:  # redeliveries of messages stored by an earlier batch
            seen = self.store.seen_many([a.reading.id for a in accepted])
            if seen:
                result.duplicates += len(seen)
                accepted = [a for a in accepted if a.reading.id not in seen]

        if self.sink is not None and accepted:
            if self._chunks:
                lines = chunk_lines_many([(a.reading, a.patient) for a in accepted])
            else:
                lines = [line for a in accepted for line in reading_lines(a.reading, a.patient)]
            self.sink.write(lines)

        # Dead letters go nowhere else (InfluxDB has only accepted readings): their commit is durable.
        with self.store.batch(durable=bool(rejected)):
            self.store.bump("duplicates", result.duplicates)
            for msg, why in rejected:
                self.store.dead_letter(msg.topic, msg.payload, why.reason, why.detail, msg.received_at)
                log.warning("dead letter (%s) on %s: %s", why.reason, msg.topic, why.detail)
            counts = [contract.reading_count(a.reading) for a in accepted]
            if self._keep_payloads:
                stored = self.store.add_messages([
                    (a.reading.id, a.msg.received_at, a.reading.site, a.reading.gateway, a.reading.device,
                     a.patient, a.stream, to_ns(a.reading.t), n, a.msg.payload)
                    for a, n in zip(accepted, counts, strict=True)
                ])  # fmt: skip
            else:
                stored = self.store.add_ledger([
                    (a.reading.id, a.msg.received_at, a.stream, n)
                    for a, n in zip(accepted, counts, strict=True)
                ])  # fmt: skip
            for n, new in zip(counts, stored, strict=True):
                if new:
                    result.stored += 1
                    result.stored_readings += n
                else:
                    result.duplicates += 1  # stored meanwhile by another worker (a takeover)
            # What another worker stored meanwhile is its to analyse: fed here too, its vitals
            # would be derived and published twice (and this device's analysis see it out of turn).
            accepted = [a for a, new in zip(accepted, stored, strict=True) if new]
        result.dead_lettered = len(rejected)

        # Out of order within a batch (a gateway draining its spool after an outage, QoS 1
        # redelivery): signal processing sees each device's messages in time order.
        # Committed: from here on nothing raises (see the rules above).
        self._pending_ppg = []
        ordered = sorted(accepted, key=_ORDER)
        live = [a for a in ordered if not self._late(a)]
        if len(live) < len(ordered):
            self._bump("late_no_dsp", len(ordered) - len(live))
        for a in _merge_contiguous(live):
            try:
                result.vitals.extend(self._derive(a.reading, a.patient, a.t))
            except Exception:
                # The reading is stored; a fault in signal processing must not hold up storage or
                # acknowledgement. It is logged and counted for the operations board.
                log.exception("signal processing failed on %s from %s", a.reading.id, a.reading.device)
                self._bump("dsp_errors", 1)
        if self._pending_ppg:
            try:
                result.vitals.extend(self._ppg_vitals())
            except Exception:
                log.exception("PPG analysis failed for %d windows", len(self._pending_ppg))
                self._bump("dsp_errors", 1)
            self._pending_ppg = []
        if result.vitals:
            self._store_vitals(result.vitals)
        return result

    def _bump(self, name: str, by: int) -> None:
        """A counter in the store, after a batch's commit: never raises (see the rules above)."""
        try:
            with self.store.batch():
                self.store.bump(name, by)
        except Exception:
            self.uncounted += by
            log.exception("ingest: counter %s (+%d) not written to the embedded store", name, by)

    def _ppg_vitals(self) -> list[Vitals]:
        pending = self._pending_ppg
        analysed = analyse_many([w for w, _, _ in pending])
        return [
            Vitals(
                **base,
                id=self.new_id(),
                t=_utc(p.t),
                source="ppg",
                pr_bpm=_round(p.pr_bpm),
                spo2_pct=_round(p.spo2_pct),
                spo2_calibrated=p.spo2_calibrated,
                pi_pct=_round(p.pi_pct, 2),
                sqi=_round(p.sqi, 2),
                flags=flags,
            )
            for (_, base, flags), p in zip(pending, analysed, strict=True)
        ]

    def _late(self, a: _Accepted) -> bool:
        """A waveform far behind what its processor has seen and far behind ingest's clock
        (hours-late spool data): store only. One far behind its processor but current by
        ingest's clock is live: the device's times were ahead (a gateway clock stepped back,
        e.g. by NTP), and its processor starts a new session on it rather than stop analysing
        the device until the clock has caught up (which took the whole step: minutes without
        an ECG-derived asystole alarm, until 2026-11-27)."""
        if not isinstance(a.reading, EcgReading | PpgReading):
            return False
        key = (a.reading.device, a.stream)
        t = a.t
        newest = self._newest.get(key)
        if newest is not None and t < newest - LATE_DSP_S:
            now = a.msg.received_at
            if not now or t < now - LATE_DSP_S:
                return True
            self._newest[key] = t  # the times it had were wrong
            return False
        self._newest[key] = t if newest is None else max(newest, t)
        return False

    def _fresh(self, r: EcgReading | PpgReading, stream: str, t0: float) -> bool:
        """Whether a waveform chunk is new signal by its frame number (a resend or a duplicate
        has one already fed; the numbers wrap at 2^32), for the processors' timeline. The
        newest in time sets the reference too (a rebooted wearable numbers its frames afresh)."""
        key = (r.device, stream)
        last = self._last_seq.get(key)
        newer = last is None or 0 < (r.seq - last) % (1 << 32) < 1 << 31
        if newer or t0 >= self._newest.get(key, t0):
            self._last_seq[key] = r.seq
        return newer and last is not None

    # --- derived vitals ------------------------------------------------------------------------
    def _derive(self, r: Reading, patient: str, t0: float) -> list[Vitals]:
        """Derived vitals of a reading whose first sample was taken at `t0` (epoch seconds)."""
        base: _Who = {"site": r.site, "patient": patient, "device": r.device}
        out: list[Vitals] = []
        if isinstance(r, EcgReading):
            rate, proc = self._ecg.get(r.device, (0, None))
            if proc is None or rate != r.rate_hz:
                proc = EcgProcessor(float(r.rate_hz))
                self._ecg[r.device] = (r.rate_hz, proc)
            flags: list[str] = [str(f) for f in r.flags]
            for e in proc.push(np.asarray(r.signal_uv, dtype=np.float64), t0, self._fresh(r, "ecg", t0)):
                out.append(
                    Vitals(
                        **base,
                        id=self.new_id(),
                        t=_utc(e.t),
                        source="ecg",
                        hr_bpm=_round(e.hr_bpm),
                        sqi=_round(e.sqi, 2),
                        pause_s=_round(e.pause_s, 2),
                        af_score=_round(e.af_score, 2),
                        hrv_sdnn_ms=_round(e.hrv_sdnn_ms),
                        hrv_rmssd_ms=_round(e.hrv_rmssd_ms),
                        resp_bpm=_round(e.resp_bpm),
                        flags=flags,
                    )
                )
        elif isinstance(r, PpgReading):
            prate, pproc = self._ppg.get(r.device, (0, None))
            if pproc is None or prate != r.rate_hz:
                pproc = PpgProcessor(float(r.rate_hz), calibration=self._calibration)
                self._ppg[r.device] = (r.rate_hz, pproc)
            red = np.asarray(r.red_counts, dtype=np.float64)
            ir = np.asarray(r.ir_counts, dtype=np.float64)
            # analysed later for the whole batch at once (streams.analyse_many): same values
            for w in pproc.windows(red, ir, t0, self._fresh(r, "ppg", t0)):
                self._pending_ppg.append((w, base, [str(f) for f in r.flags]))
        elif isinstance(r, HrReading):
            contact_flags = [] if r.contact in (None, True) else ["no_contact"]
            out.append(
                Vitals(**base, id=self.new_id(), t=r.t, source="device", hr_bpm=r.hr_bpm, flags=contact_flags)
            )
        elif isinstance(r, Spo2Reading):
            out.append(
                Vitals(
                    **base,
                    id=self.new_id(),
                    t=r.t,
                    source="device",
                    spo2_pct=r.spo2_pct,
                    pr_bpm=r.pr_bpm,
                    pi_pct=r.pi_pct,
                    # Whether a wearable's own estimate was calibrated is not in the PLX data; claim nothing.
                    spo2_calibrated=False,
                    flags=[str(f) for f in (*r.sensor_status, *r.meas_status)],
                )
            )
        elif isinstance(r, BatteryReading):
            out.append(Vitals(**base, id=self.new_id(), t=r.t, source="device", battery_pct=r.battery_pct))
        return out

    def _store_vitals(self, vitals: list[Vitals]) -> None:
        times = [to_ns(v.t) for v in vitals]
        try:
            rows = [
                (
                    v.id, v.site, v.patient, v.device, v.source, t_ns, v.hr_bpm, v.pr_bpm, v.spo2_pct,
                    int(v.spo2_calibrated), v.pi_pct, v.sqi, v.battery_pct, ",".join(v.flags),
                    v.pause_s, v.af_score, v.hrv_sdnn_ms, v.hrv_rmssd_ms, v.resp_bpm,
                )
                for v, t_ns in zip(vitals, times, strict=True)
            ]  # fmt: skip
            with self.store.batch():
                self.store.add_vitals(rows)
        except Exception:
            # After the messages' commit: raising would lose these vitals for good (the retry
            # finds the messages stored). They are published all the same; the alerts service
            # gets them, the nurse station's history in the embedded store has a hole.
            self.not_stored_vitals += len(vitals)
            log.exception(
                "ingest: %d derived vitals not stored in the embedded store; published", len(vitals)
            )
        if self.sink is not None:
            lines: list[str] = []
            for v, t_ns in zip(vitals, times, strict=True):
                lines.extend(vitals_lines(v, t_ns))
            try:
                self.sink.write(lines)
            except Exception as exc:  # derived values can be recomputed from stored raw data
                log.warning("could not write %d derived vitals to InfluxDB: %s", len(vitals), exc)
                self._bump("vitals_sink_failures", 1)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _round(x: float | None, digits: int = 1) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def _implausible(r: Reading, stream: str, t: float, received_at: float) -> Rejected | None:
    """Valid by the schema, but not storable as it is: past- or future-dated, or a rate DSP
    cannot take. `t` is the reading's time in epoch seconds."""
    if t < PAST_FLOOR_S:
        return Rejected("past_dated", f"t is {r.t.isoformat()}, before 2000-01-01 (a clock never set?)")
    if received_at and t > received_at + FUTURE_S:
        return Rejected(
            "future_dated", f"t is {t - received_at:.0f} s after ingest's clock (limit {FUTURE_S:g} s)"
        )
    if isinstance(r, EcgReading | PpgReading):
        lo, hi = RATES_HZ[stream]
        if not lo <= r.rate_hz <= hi:
            return Rejected("wrong_rate", f"{stream} at {r.rate_hz} Hz; accepted {lo}-{hi} Hz")
    return None


_ORDER = operator.attrgetter("reading.device", "stream", "t")  # each device's streams, in time order
_CONTIGUOUS_S = 0.05  # a frame starting this close to where the previous one ended continues it


def _merge_contiguous(ordered: list[_Accepted]) -> list[_Accepted]:
    """Join each device's back-to-back waveform messages of a batch into one chunk for DSP
    (their samples are arrays, as `decode_many` gives them).

    The processors give the same output for any chunking (ingest.dsp.streams), so this only saves
    per-call work: a second of ECG arrives as two or three BLE frames. Flags are united.
    """
    out: list[_Accepted] = []
    run: list[_Accepted] = []  # back-to-back frames of one device and stream, joined when it ends
    # where the run ends by its first frame's time and its samples so far (not by its last frame's
    # time: small offsets between frames would add up unchecked over a long run, and the
    # processors take a chunk's first time as the clock to follow)
    end = 0.0
    for a in ordered:
        r = a.reading
        if isinstance(r, EcgReading | PpgReading):
            if run:
                first = run[0].reading
                assert isinstance(first, EcgReading | PpgReading)
                if (
                    a.stream == run[0].stream
                    and r.device == first.device
                    and r.rate_hz == first.rate_hz
                    and abs(a.t - end) <= _CONTIGUOUS_S
                ):
                    run.append(a)
                    end += contract.reading_count(r) / r.rate_hz
                    continue
                out.append(_joined(run))
            run = [a]
            end = a.t + contract.reading_count(r) / r.rate_hz
            continue
        if run:
            out.append(_joined(run))
            run = []
        out.append(a)
    if run:
        out.append(_joined(run))
    return out


def _joined(run: list[_Accepted]) -> _Accepted:
    """One chunk of a run of back-to-back waveform frames (itself if it is one frame)."""
    head = run[0]
    if len(run) == 1:
        return head
    first = head.reading
    flags = list(dict.fromkeys(f for a in run for f in cast(EcgReading | PpgReading, a.reading).flags))
    if isinstance(first, EcgReading):
        ecg = [cast(EcgReading, a.reading) for a in run]
        merged: Reading = msgspec.structs.replace(
            first, signal_uv=np.concatenate([r.signal_uv for r in ecg]), flags=flags
        )
    elif isinstance(first, PpgReading):
        ppg = [cast(PpgReading, a.reading) for a in run]
        merged = msgspec.structs.replace(
            first,
            red_counts=np.concatenate([r.red_counts for r in ppg]),
            ir_counts=np.concatenate([r.ir_counts for r in ppg]),
            flags=flags,
        )
    else:  # pragma: no cover - runs are of waveforms only
        raise TypeError(type(first))
    return _Accepted(head.msg, merged, head.patient, head.t, head.stream)
