"""The MQTT contract (docs/contract.md): topic tree, payload types, and their validation.

Rules of this file:
- Pure: bytes and strings in, typed payloads or a `Rejected` reason out. No I/O, no clocks.
- Payloads are msgspec Structs; their field names come from nabz.catalogue.
- Schema version 1. A change that breaks a reader bumps `SCHEMA_VERSION` and the topic's `v1`.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from firmware import nabz_codec as codec

__all__ = [
    "SCHEMA_VERSION",
    "ROOT",
    "Id",
    "EcgReading",
    "PpgReading",
    "HrReading",
    "Spo2Reading",
    "BatteryReading",
    "Reading",
    "Vitals",
    "VitalsBatch",
    "VITALS_PER_MESSAGE",
    "GatewayStatus",
    "DeviceHealth",
    "AlarmEvent",
    "Heartbeat",
    "ReadingTopic",
    "Rejected",
    "reading_topic",
    "parse_reading_topic",
    "status_topic",
    "vitals_topic",
    "vitals_messages",
    "alarm_topic",
    "heartbeat_topic",
    "heartbeat_filter",
    "decode_reading",
    "reading_count",
    "encode",
    "message_ids",
    "new_id",
    "WAVE_FLAGS",
    "MAX_PAYLOAD_BYTES",
    "QUEUE_CLOCK_S",
    "QUEUE_WAIT_MAX_S",
]

SCHEMA_VERSION = 1
ROOT = "nabz/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
# The MQTT v5 Message Expiry Interval a gateway gives every reading, in seconds (a year). Not to
# expire it: the broker counts the interval down while a reading waits in its queue and forwards
# what is left, so ingest reads from each message how long it waited there, in the broker's whole
# seconds, whatever the gateway's clock says (MQTT 5.0 section 3.3.2.3.3; the Heartbeat's
# `behind_s`). A year, not more: mosquitto adds it to its clock in a `time_t`, which on a 32-bit
# system (Raspberry Pi OS armhf) overflows from January 2037 on; ten years did from 2028 on,
# and every reading counted as expired, dropped after its acknowledgement (found by review).
QUEUE_CLOCK_S = 365 * 86400
# A wait longer than this is not believed (a publisher with some other expiry): taken as unknown.
QUEUE_WAIT_MAX_S = 86400

# Identifiers that appear in topics and as storage tags: short, no MQTT wildcards or separators.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
MsgId = Annotated[str, msgspec.Meta(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Seq = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
RateHz = Annotated[int, msgspec.Meta(ge=1, le=2000)]
DeviceTime = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
ClockOffset = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Microvolts = Annotated[int, msgspec.Meta(ge=-32768, le=32767)]
Counts = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFF)]
Bpm = Annotated[float, msgspec.Meta(ge=0, le=400)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
RrMs = Annotated[float, msgspec.Meta(gt=0, le=65535)]

WAVE_FLAGS = tuple(name for _, name in codec.WAVE_FLAG_NAMES)
WaveFlag = Literal["leads_off", "saturated", "sensor_off", "low_battery", "resent", "gap_before"]
MeasStatus = Literal[
    "ongoing", "early_estimate", "validated", "fully_qualified", "from_storage", "demo", "testing",
    "calibrating", "unavailable", "questionable", "invalid",
]  # fmt: skip
SensorStatus = Literal[
    "extended_display_update", "equipment_malfunction", "signal_processing_irregularity",
    "inadequate_signal", "poor_signal", "low_perfusion", "erratic_signal", "nonpulsatile_signal",
    "questionable_pulse", "signal_analysis_ongoing", "sensor_interference",
    "sensor_unconnected_to_user", "unknown_sensor_connected", "sensor_displaced",
    "sensor_malfunctioning", "sensor_disconnected",
]  # fmt: skip
Samples = Annotated[list[Microvolts], msgspec.Meta(min_length=1, max_length=4096)]
PpgSamples = Annotated[list[Counts], msgspec.Meta(min_length=1, max_length=4096)]


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="stream"):
    """Fields every reading carries."""

    v: Literal[1]
    id: MsgId
    site: Id
    gateway: Id
    device: Id
    t: datetime  # UTC time of the reading (of the first sample for a waveform)
    rx: datetime | None = None  # when the gateway received it
    device_t_us: DeviceTime | None = None  # device clock at the reading, where the device sends one
    clock_offset_us: ClockOffset | None = None  # UTC minus device clock, as the gateway estimates it


class EcgReading(_Envelope, frozen=True, kw_only=True, tag="ecg"):
    seq: Seq
    rate_hz: RateHz
    flags: list[WaveFlag] = []
    signal_uv: Samples


class PpgReading(_Envelope, frozen=True, kw_only=True, tag="ppg"):
    seq: Seq
    rate_hz: RateHz
    flags: list[WaveFlag] = []
    red_counts: PpgSamples
    ir_counts: PpgSamples


class HrReading(_Envelope, frozen=True, kw_only=True, tag="hr"):
    hr_bpm: Bpm
    contact: bool | None = None
    # As many as one notification can carry: a 512-byte ATT value holds flags, HR and 255 RR.
    rr_ms: Annotated[list[RrMs], msgspec.Meta(max_length=255)] = []
    energy_kj: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None


class Spo2Reading(_Envelope, frozen=True, kw_only=True, tag="spo2"):
    mode: Literal["continuous", "spot"] = "continuous"
    spo2_pct: Pct | None
    pr_bpm: Bpm | None
    pi_pct: Pct | None = None
    meas_status: list[MeasStatus] = []
    sensor_status: list[SensorStatus] = []


class BatteryReading(_Envelope, frozen=True, kw_only=True, tag="battery"):
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)]


Reading = EcgReading | PpgReading | HrReading | Spo2Reading | BatteryReading
STREAMS: tuple[str, ...] = ("ecg", "ppg", "hr", "spo2", "battery")


class Vitals(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Vitals derived by ingest for one patient at one time, from one source."""

    v: Literal[1] = 1
    id: MsgId
    site: Id
    patient: Id
    device: Id
    t: datetime
    source: Literal["ecg", "ppg", "device"]
    hr_bpm: Bpm | None = None
    pr_bpm: Bpm | None = None
    spo2_pct: Pct | None = None
    spo2_calibrated: bool = False
    pi_pct: float | None = None
    sqi: Unit | None = None
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    pause_s: Annotated[float, msgspec.Meta(ge=0)] | None = None  # longest RR gap in the ECG window
    af_score: Unit | None = None  # atrial-fibrillation suspicion from RR irregularity, 0..1
    hrv_sdnn_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None  # HRV over the last ~64 RR (ECG)
    hrv_rmssd_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    resp_bpm: Annotated[float, msgspec.Meta(ge=0, le=120)] | None = None  # respiration, where derived
    flags: list[str] = []


VITALS_PER_MESSAGE = 256  # at most this many vitals in one message (a few hundred bytes each)


class VitalsBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The vitals one ingest worker derived together for patients of one site, in the order it
    derived them (each patient's in time order). One message per batch, not one per vitals: at a
    thousand patients that is the difference between ~4,000 MQTT messages a second and a few dozen
    for every subscriber (docs/contract.md "Derived vitals", docs/benchmarks.md)."""

    v: Literal[1] = 1
    id: MsgId
    site: Id
    vitals: Annotated[list[Vitals], msgspec.Meta(min_length=1, max_length=VITALS_PER_MESSAGE)]

    def __post_init__(self) -> None:
        for x in self.vitals:
            if x.site != self.site:  # msgspec turns this into a ValidationError on decode
                raise ValueError(f"vitals of site {x.site!r} in a batch of site {self.site!r}")


LinkState = Literal["connecting", "connected", "reconnecting", "lost"]


class DeviceHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One device as its gateway sees it, in the gateway status (docs/contract.md, docs/gateway.md).

    `lost` is the technical alarm state: the device has been unreachable for the gateway's
    `lost_after_s` (the gateway keeps trying). Gap counters are all-time waveform frames. Every
    field is always present (null when unknown), so people reading the topic see zeros as zeros.
    """

    device: Id
    state: LinkState
    since: datetime | None = None  # when the link entered `state`
    last_seen: datetime | None = None  # last notification received
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    rssi_dbm: int | None = None  # from the latest advertisement (BLE only)
    mtu: int | None = None  # negotiated ATT MTU (BLE only)
    reconnects: int = 0
    gap_events: int = 0  # drop-outs seen as a jump in sequence numbers
    resent_frames: int = 0  # missing frames the device sent again on request
    gap_frames: int = 0  # missing frames that never came back (unrecoverable)
    # What the wearable last said of itself on its control characteristic (Nabz firmware only):
    # null until it has said anything.
    device_state: Literal["ok", "low_battery", "battery_critical", "sensor_fault"] | None = None


class GatewayStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Retained gateway status: birth ('online'), updates, and the Last Will ('offline')."""

    v: Literal[1] = 1
    site: Id
    gateway: Id
    state: Literal["online", "offline"]
    t: datetime | None = None
    reason: str | None = None
    spool_depth: int | None = None
    devices: list[str] = []
    spool_bytes: int | None = None
    spool_dropped_readings: int | None = None  # dropped by the overflow policy, all time
    refused: int | None = None  # messages the broker refused (e.g. not authorised), kept in the spool
    dead_letters: int | None = None  # frames the gateway could not decode, all time
    # devices whose readings nobody on the server takes yet (the broker answered "No matching
    # subscribers": not enrolled, or ingest not subscribed); kept in the spool (gateway.hold)
    held: list[str] = []
    # readings kept in the gateway's spool, not sent: ingest, heard before, silent for a while, or
    # far behind (the broker would queue them for it, then drop them: gateway.pause)
    paused: bool = False
    behind: list[str] = []  # paused for these ingest workers, far behind (the rest: ingest not heard)
    health: list[DeviceHealth] = []


AlarmState = Literal["active", "acknowledged", "cleared"]
Priority = Literal["high", "medium", "low"]


class AlarmEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One transition of one alarm (docs/contract.md "Alarm events")."""

    v: Literal[1] = 1
    id: MsgId  # this event
    alarm_id: MsgId  # the alarm it belongs to (stable across its transitions)
    site: Id
    patient: Id
    kind: str
    priority: Priority
    state: AlarmState
    message: str
    value: float | None = None
    threshold: float | None = None
    unit: str | None = None
    condition_started_at: datetime
    raised_at: datetime
    notified_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    cleared_at: datetime | None = None
    # Only on a transition that data well behind the service's clock caused (a gateway's spool
    # after an outage): when those data are from, and how late they came.
    data_t: datetime | None = None
    late_s: float | None = None


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A server service saying it is alive and working, every `interval_s` (not retained; gateways
    watch for its absence: docs/contract.md "Heartbeats", docs/operations.md)."""

    v: Literal[1] = 1
    site: Id
    service: Literal["ingest", "alerts"]
    instance: Id  # the process: its MQTT client id
    t: datetime
    interval_s: Annotated[float, msgspec.Meta(gt=0)]
    state: Literal["ok", "degraded"] = "ok"  # degraded: running, but part of its job is failing
    detail: str | None = None  # what is failing, for people
    # ingest: false while it cannot take readings (its embedded store refuses batches): the
    # broker queues them for it meanwhile, then drops them, so gateways keep theirs (gateway.pause)
    taking: bool = True
    # ingest: how far behind it is -- the longest any message of its latest batch waited for it,
    # in the broker's queue (QUEUE_CLOCK_S) and its own, in seconds; 0 when nothing came since its
    # last heartbeat. Gateways keep their readings while it is far behind (gateway.pause). Absent
    # (None) from other services and from ingest before 2026-11-28.
    behind_s: Annotated[float, msgspec.Meta(ge=0)] | None = None


# ---------------------------------------------------------------------------------------------
# Topics
def reading_topic(site: str, gateway: str, device: str, stream: str) -> str:
    return f"{ROOT}/{site}/gw/{gateway}/{device}/{stream}"


def status_topic(site: str, gateway: str) -> str:
    return f"{ROOT}/{site}/gw/{gateway}/status"


def vitals_topic(site: str) -> str:
    return f"{ROOT}/{site}/vitals"


def alarm_topic(site: str, patient: str, kind: str) -> str:
    return f"{ROOT}/{site}/patient/{patient}/alarm/{kind}"


def heartbeat_topic(site: str, instance: str) -> str:
    return f"{ROOT}/{site}/server/{instance}/heartbeat"


def heartbeat_filter(site: str = "+") -> str:
    return f"{ROOT}/{site}/server/+/heartbeat"


READINGS_FILTER = f"{ROOT}/+/gw/+/+/+"
STATUS_FILTER = f"{ROOT}/+/gw/+/status"
VITALS_FILTER = f"{ROOT}/+/vitals"
ALARMS_FILTER = f"{ROOT}/+/patient/+/alarm/+"

_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class ReadingTopic:
    site: str
    gateway: str
    device: str
    stream: str


def parse_reading_topic(topic: str) -> ReadingTopic | None:
    """`nabz/v1/<site>/gw/<gateway>/<device>/<stream>` -> parts, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 7 or f"{parts[0]}/{parts[1]}" != ROOT or parts[3] != "gw":
        return None
    site, gateway, device, stream = parts[2], parts[4], parts[5], parts[6]
    if stream not in STREAMS or not all(_ID_RE.match(x) for x in (site, gateway, device)):
        return None
    return ReadingTopic(site, gateway, device, stream)


# ---------------------------------------------------------------------------------------------
# Validation
@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message was not accepted. `reason` is one of REJECT_REASONS; `detail` is for people."""

    reason: str
    detail: str


REJECT_REASONS = (
    "too_large",
    "bad_topic",
    "not_json",
    "not_object",
    "missing_version",
    "unsupported_version",
    "missing_id",
    "schema",
    "out_of_range",
    "topic_mismatch",
    "not_enrolled",
    "wrong_gateway",
)

_json_any = msgspec.json.Decoder()


def decode_reading(topic: str, payload: bytes) -> Reading | Rejected:
    """Validate one reading message against the contract; never raises on bad input."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected("too_large", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    where = parse_reading_topic(topic)
    if where is None:
        return Rejected("bad_topic", f"not a reading topic: {topic[:200]!r}")
    try:
        raw = _json_any.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8
        return Rejected("not_json", str(exc))
    if not isinstance(raw, dict):
        return Rejected("not_object", f"payload is a JSON {type(raw).__name__}, expected an object")
    if "v" not in raw:
        return Rejected("missing_version", "no schema version field 'v'")
    if raw["v"] != SCHEMA_VERSION:
        return Rejected(
            "unsupported_version", f"schema version {raw['v']!r}, this ingest reads {SCHEMA_VERSION}"
        )
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        return Rejected("missing_id", "no message id 'id'")
    if "stream" not in raw:
        raw["stream"] = where.stream
    try:
        reading: Reading = msgspec.convert(raw, Reading)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason = "out_of_range" if _is_range_error(text) else "schema"
        return Rejected(reason, text)
    if reading.t.tzinfo is None:
        return Rejected("schema", "time 't' has no UTC offset")
    if isinstance(reading, PpgReading) and len(reading.red_counts) != len(reading.ir_counts):
        return Rejected("schema", "red_counts and ir_counts differ in length")
    got = (reading.site, reading.gateway, reading.device, _stream(reading))
    want = (where.site, where.gateway, where.device, where.stream)
    if got != want:
        return Rejected("topic_mismatch", f"payload says {'/'.join(got)}, topic says {'/'.join(want)}")
    return reading


def _is_range_error(text: str) -> bool:
    # A length limit (an id of 3 characters, an empty sample list) is the schema's, not a value's.
    return (
        any(op in text for op in (">=", "<=", "> ", "< "))
        and "Expected `" in text
        and " of length " not in text
    )


def _stream(reading: Reading) -> str:
    return type(reading).__struct_config__.tag  # type: ignore[return-value]


def reading_count(reading: Reading) -> int:
    """Readings in one message, counted the same way at every stage: samples for waveforms, else 1."""
    if isinstance(reading, EcgReading):
        return len(reading.signal_uv)
    if isinstance(reading, PpgReading):
        return len(reading.red_counts)
    return 1


_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def new_id() -> str:
    """128 random bits as 32 hex digits, like `uuid4().hex`, without its UUID object."""
    return os.urandom(16).hex()


def message_ids() -> Callable[[], str]:
    """A source of unique message ids: 80 random bits drawn once per process, then a counter.

    As unique as a uuid4 for this purpose, without a system call per message (os.urandom costs
    microseconds to tens of microseconds: a third of the gateway's time per message on one virtual
    machine, ~3 % of an ingest worker's, which names every derived vitals)."""
    prefix = secrets.token_hex(10)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):012x}"


def vitals_messages(
    vitals: list[Vitals], new_id: Callable[[], str] = new_id
) -> list[tuple[str, VitalsBatch]]:
    """Vitals in the messages that carry them: one per site, split at VITALS_PER_MESSAGE, order kept."""
    by_site: dict[str, list[Vitals]] = {}
    for x in vitals:
        by_site.setdefault(x.site, []).append(x)
    return [
        (vitals_topic(site), VitalsBatch(id=new_id(), site=site, vitals=group[i : i + VITALS_PER_MESSAGE]))
        for site, group in by_site.items()
        for i in range(0, len(group), VITALS_PER_MESSAGE)
    ]


def stream_of(reading: Reading) -> str:
    return _stream(reading)


def as_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(message)
    return result
