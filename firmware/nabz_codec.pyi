# Type stub for the shared codec, which is written without annotations so that MicroPython runs it
# unchanged. Keep in step with nabz_codec.py (mypy checks every caller against this file).
from collections.abc import Sequence
from typing import Any

def const(x: int) -> int: ...

UUID_HEART_RATE_SERVICE: int
UUID_HEART_RATE_MEASUREMENT: int
UUID_BODY_SENSOR_LOCATION: int
UUID_PULSE_OXIMETER_SERVICE: int
UUID_PLX_SPOT_CHECK: int
UUID_PLX_CONTINUOUS: int
UUID_PLX_FEATURES: int
UUID_BATTERY_SERVICE: int
UUID_BATTERY_LEVEL: int
UUID_DEVICE_INFORMATION: int
NABZ_WAVEFORM_SERVICE: str
NABZ_ECG_WAVEFORM: str
NABZ_PPG_WAVEFORM: str
NABZ_CONTROL: str

SFLOAT_NAN: int
SFLOAT_NRES: int
SFLOAT_POS_INF: int
SFLOAT_NEG_INF: int
SFLOAT_RESERVED: int

def sfloat_decode(raw: int) -> float: ...
def sfloat_special(raw: int) -> str | None: ...
def sfloat_encode(value: float | None) -> int: ...

HRM_FLAG_UINT16: int
HRM_FLAG_CONTACT_SUPPORTED: int
HRM_FLAG_CONTACT_DETECTED: int
HRM_FLAG_ENERGY: int
HRM_FLAG_RR: int

def hrm_encode(
    hr_bpm: int, contact: bool | None = None, energy_kj: int | None = None, rr_1024: Sequence[int] = ()
) -> bytes: ...
def hrm_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...

PLXC_FLAG_FAST: int
PLXC_FLAG_SLOW: int
PLXC_FLAG_MEAS_STATUS: int
PLXC_FLAG_DEV_STATUS: int
PLXC_FLAG_PAI: int
PLXS_FLAG_TIMESTAMP: int
PLXS_FLAG_MEAS_STATUS: int
PLXS_FLAG_DEV_STATUS: int
PLXS_FLAG_PAI: int
PLXS_FLAG_CLOCK_NOT_SET: int
MEAS_STATUS_BITS: tuple[tuple[int, str], ...]
DEV_STATUS_BITS: tuple[tuple[int, str], ...]

def bits_to_names(value: int, table: Sequence[tuple[int, str]]) -> list[str]: ...
def names_to_bits(names: Sequence[str], table: Sequence[tuple[int, str]]) -> int: ...
def plx_continuous_encode(
    spo2: float | None,
    pr: float | None,
    meas_status: int | None = None,
    dev_status: int | None = None,
    pai: float | None = None,
    fast: tuple[float | None, float | None] | None = None,
    slow: tuple[float | None, float | None] | None = None,
) -> bytes: ...
def plx_continuous_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...
def plx_spot_check_encode(
    spo2: float | None,
    pr: float | None,
    timestamp: tuple[int, int, int, int, int, int] | None = None,
    meas_status: int | None = None,
    dev_status: int | None = None,
    pai: float | None = None,
    clock_not_set: bool = False,
) -> bytes: ...
def plx_spot_check_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...
def battery_encode(percent: int) -> bytes: ...
def battery_decode(data: bytes | bytearray | memoryview) -> int: ...

WAVE_VERSION: int
WAVE_KIND_ECG: int
WAVE_KIND_PPG: int
WAVE_HEADER: str
WAVE_HEADER_SIZE: int
WAVE_FLAG_LEADS_OFF: int
WAVE_FLAG_SATURATED: int
WAVE_FLAG_SENSOR_OFF: int
WAVE_FLAG_LOW_BATTERY: int
WAVE_FLAG_RESENT: int
WAVE_FLAG_GAP_BEFORE: int
WAVE_FLAG_NAMES: tuple[tuple[int, str], ...]

def wave_sample_size(kind: int) -> int: ...
def wave_max_samples(kind: int, att_mtu: int) -> int: ...
def wave_header_into(
    buf: bytearray, kind: int, flags: int, n: int, rate_hz: int, seq: int, t0_us: int
) -> int: ...
def wave_pack_into(
    buf: bytearray,
    kind: int,
    flags: int,
    rate_hz: int,
    seq: int,
    t0_us: int,
    samples: Sequence[int],
    start: int,
    n: int,
) -> int: ...
def wave_encode(
    kind: int, flags: int, rate_hz: int, seq: int, t0_us: int, samples: Sequence[int]
) -> bytes: ...
def wave_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...

CTRL_OP_RESEND: int

def control_resend_encode(kind: int, first_seq: int, last_seq: int) -> bytes: ...
def control_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...

CTRL_OP_RESEND_REPORT: int
CTRL_OP_STATUS: int
DEVICE_STATE_OK: int
DEVICE_STATE_LOW_BATTERY: int
DEVICE_STATE_BATTERY_CRITICAL: int
DEVICE_STATE_SENSOR_FAULT: int
DEVICE_STATE_NAMES: tuple[str, ...]

def control_report_encode(
    kind: int, first_seq: int, last_seq: int, resent_first: int, resent_count: int
) -> bytes: ...
def control_status_encode(state: int, battery_pct: int) -> bytes: ...
def control_notify_decode(data: bytes | bytearray | memoryview) -> dict[str, Any]: ...
