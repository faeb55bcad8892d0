"""Readings and vitals -> InfluxDB line protocol (docs/contract.md section 3). Pure.

Measurement, tag and field names are those nabz.catalogue declares (tests/nabz/test_catalogue.py
checks every kind of line against it). Tags are written in key order, as
InfluxDB recommends; integers carry the `i` suffix and floats never do, so a field's type never
changes between points.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from nabz.contract import (
    BatteryReading,
    EcgReading,
    HrReading,
    PpgReading,
    Reading,
    Spo2Reading,
    Vitals,
)

__all__ = [
    "reading_lines",
    "chunk_lines",
    "chunk_lines_many",
    "vitals_lines",
    "to_ns",
    "pack_samples",
    "pack_many",
    "unpack_samples",
    "WAVE_FLAGS",
    "flags_mask",
    "flags_of",
]


def to_ns(t: datetime) -> int:
    """Epoch nanoseconds of an aware datetime, exactly (no float rounding)."""
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


# A waveform message's flags (leads off, saturated, ...) as one integer field, `flags`, bit i for
# WAVE_FLAGS[i] (docs/contract.md section 3). A number, not a string: every store that speaks the
# write API keeps it (VictoriaMetrics has no string fields), and a strip read back from InfluxDB
# marks leads off where it happened, as one drawn from the embedded store does; a flat line
# without that mark could be read as asystole. New flags are appended, never inserted: stored
# masks keep their meaning.
WAVE_FLAGS: tuple[str, ...] = ("leads_off", "saturated", "sensor_off", "low_battery", "resent", "gap_before")
_FLAG_BIT = {name: 1 << i for i, name in enumerate(WAVE_FLAGS)}


def flags_mask(flags: Iterable[str]) -> int:
    """The `flags` field of these flags (0: none)."""
    mask = 0
    for name in flags:
        mask |= _FLAG_BIT[name]
    return mask


def flags_of(mask: int) -> tuple[str, ...]:
    """The flags a stored `flags` field holds, in WAVE_FLAGS order; bits of flags this version does
    not know are left out."""
    return tuple(name for i, name in enumerate(WAVE_FLAGS) if mask >> i & 1)


def _flags_field(flags: Sequence[str]) -> str:
    if not flags:
        return ""
    mask = flags_mask(flags)
    return f",flags={mask}i" if mask else ""


def _escape_tag(value: str) -> str:
    # Identifiers are validated against ID_PATTERN, which admits none of ',= '; escape anyway so
    # this function is safe on its own.
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


@lru_cache(maxsize=1 << 16)  # a patient's few series recur every second
def _series(measurement: str, **tags: str) -> str:
    parts = [measurement]
    parts.extend(f"{k}={_escape_tag(tags[k])}" for k in sorted(tags))
    return ",".join(parts)


@lru_cache(maxsize=1 << 16)
def _device_series(measurement: str, site: str, patient: str, device: str) -> str:
    """`_series` of a device's measurement, its arguments positional (a cache hit costs less)."""
    return _series(measurement, site=site, patient=patient, device=device)


@lru_cache(maxsize=1 << 16)
def _vitals_series(site: str, patient: str, source: str) -> str:
    return _series("vitals", site=site, patient=patient, source=source)


def _float(x: float) -> str:
    return repr(float(x))


def _ints(samples: Sequence[int] | npt.NDArray[np.int64]) -> list[int]:
    """Samples as Python ints (an array's elements would print the same, but index slower)."""
    return samples.tolist() if isinstance(samples, np.ndarray) else list(samples)


def reading_lines(reading: Reading, patient: str) -> list[str]:
    """The points one reading writes. A message with nothing to store as fields writes none.
    A waveform message's flags, if any, go on its first sample's point."""
    tags = {"site": reading.site, "patient": patient, "device": reading.device}
    t_ns = to_ns(reading.t)
    if isinstance(reading, EcgReading):
        series = _series("ecg", **tags)
        step = 1_000_000_000 / reading.rate_hz
        x = _ints(reading.signal_uv)
        first = f"{series} signal_uv={x[0]}i{_flags_field(reading.flags)} {t_ns}"
        return [first, *(f"{series} signal_uv={x[i]}i {t_ns + round(i * step)}" for i in range(1, len(x)))]
    if isinstance(reading, PpgReading):
        series = _series("ppg", **tags)
        step = 1_000_000_000 / reading.rate_hz
        red, ir = _ints(reading.red_counts), _ints(reading.ir_counts)
        first = f"{series} red_counts={red[0]}i,ir_counts={ir[0]}i{_flags_field(reading.flags)} {t_ns}"
        rest = (
            f"{series} red_counts={red[i]}i,ir_counts={ir[i]}i {t_ns + round(i * step)}"
            for i in range(1, len(red))
        )
        return [first, *rest]
    series = _series("device_vitals", **tags)
    fields: dict[str, float | None]
    if isinstance(reading, HrReading):
        lines = [f"{series} hr_bpm={_float(reading.hr_bpm)} {t_ns}"]
        rr_series = _series("rr", **tags)
        # RR intervals end at successive beats; the last one ends at the reading's time.
        end_ns = t_ns
        rr_lines = []
        for rr in reversed(reading.rr_ms):
            rr_lines.append(f"{rr_series} rr_ms={_float(rr)} {end_ns}")
            end_ns -= round(rr * 1_000_000)
        return lines + rr_lines[::-1]
    if isinstance(reading, Spo2Reading):
        fields = {"spo2_pct": reading.spo2_pct, "pr_bpm": reading.pr_bpm, "pi_pct": reading.pi_pct}
    elif isinstance(reading, BatteryReading):
        fields = {"battery_pct": float(reading.battery_pct)}
    else:  # pragma: no cover - the Reading union is exhaustive
        raise TypeError(type(reading))
    present = ",".join(f"{k}={_float(v)}" for k, v in fields.items() if v is not None and math.isfinite(v))
    return [f"{series} {present} {t_ns}"] if present else []


_VITALS_FIELDS = ("hr_bpm", "pr_bpm", "spo2_pct", "pi_pct", "sqi", "pause_s", "af_score", "hrv_sdnn_ms",
                  "hrv_rmssd_ms", "resp_bpm")  # fmt: skip


def vitals_lines(v: Vitals, t_ns: int | None = None) -> list[str]:
    """The point one derived-vitals message writes (none if it carries no value); `t_ns`: its
    time as `to_ns` gives it, where the caller has it already."""
    got = (v.hr_bpm, v.pr_bpm, v.spo2_pct, v.pi_pct, v.sqi, v.pause_s, v.af_score, v.hrv_sdnn_ms,
           v.hrv_rmssd_ms, v.resp_bpm)  # fmt: skip
    values = [
        f"{name}={float(x)!r}"
        for name, x in zip(_VITALS_FIELDS, got, strict=True)
        if x is not None and math.isfinite(x)
    ]
    if v.spo2_pct is not None:
        values.append(f"spo2_calibrated={'true' if v.spo2_calibrated else 'false'}")
    if not values:
        return []
    return [
        f"{_vitals_series(v.site, v.patient, v.source)} {','.join(values)} {to_ns(v.t) if t_ns is None else t_ns}"
    ]


# ---------------------------------------------------------------------------------------------
# Waveform chunks (docs/storage.md): one point per message instead of one per sample.
def pack_samples(samples: list[int]) -> str:
    """Integers -> base64 of zigzag varints of the first value and then successive differences.

    ECG and PPG change little from one sample to the next, so most differences fit one byte.
    """
    return pack_many([samples])[0]


def pack_many(runs: Sequence[Sequence[int] | npt.NDArray[np.int64]]) -> list[str]:
    """`pack_samples` of several runs (lists, or int64 arrays as `ingest.decode.decode_many`
    gives them), their varints in one compiled pass (`_kernels.pack_runs_k`, one call per batch,
    not per message). Samples are int16 µV or 24-bit counts, so a difference needs at most 4
    varint bytes; 5 cover any value below 2**35."""
    if not runs:
        return []
    lengths = np.fromiter(map(len, runs), dtype=np.int64, count=len(runs))
    if all(isinstance(r, np.ndarray) for r in runs):
        x = np.concatenate(runs).astype(np.int64, copy=False)
    else:
        x = np.fromiter(itertools.chain.from_iterable(runs), dtype=np.int64, count=int(lengths.sum()))
    from ingest.dsp._kernels import pack_runs_k  # here: `unpack_samples` alone needs no compiler

    data, ends = pack_runs_k(x, lengths)
    raw = data.tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [base64.b64encode(raw[i:j]).decode("ascii") for i, j in zip(starts, ends.tolist(), strict=True)]


def unpack_samples(text: str) -> list[int]:
    """Inverse of `pack_samples`."""
    data = base64.b64decode(text)
    values: list[int] = []
    acc = shift = prev = 0
    for byte in data:
        acc |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        d = (acc >> 1) ^ -(acc & 1)
        prev += d
        values.append(prev)
        acc = shift = 0
    return values


def chunk_lines(reading: Reading, patient: str) -> list[str]:
    """Like `reading_lines`, but a waveform message is one point: its samples packed in a string.

    ``ecg_chunk``: ``n`` (samples), ``rate_hz``, ``seq``, ``flags`` (`flags_mask`, only when any
    are set), ``signal_uv`` (`pack_samples`); ``ppg_chunk``: the same with ``red_counts`` and
    ``ir_counts``. The point's time is the first sample's, so a redelivered message overwrites its
    own point. Other readings as `reading_lines`.
    """
    return chunk_lines_many([(reading, patient)])


def chunk_lines_many(items: list[tuple[Reading, str]]) -> list[str]:
    """`chunk_lines` of a whole batch, packing every waveform in one pass."""
    runs: list[Sequence[int] | npt.NDArray[np.int64]] = []
    for r, _ in items:
        if isinstance(r, EcgReading):
            runs.append(r.signal_uv)
        elif isinstance(r, PpgReading):
            runs += (r.red_counts, r.ir_counts)
    packed = iter(pack_many(runs))
    out: list[str] = []
    for r, patient in items:
        if isinstance(r, EcgReading):
            series = _device_series("ecg_chunk", r.site, patient, r.device)
            out.append(
                f"{series} n={len(r.signal_uv)}i,rate_hz={r.rate_hz}i,seq={r.seq}i{_flags_field(r.flags)},"
                f'signal_uv="{next(packed)}" {to_ns(r.t)}'
            )
        elif isinstance(r, PpgReading):
            series = _device_series("ppg_chunk", r.site, patient, r.device)
            out.append(
                f"{series} n={len(r.red_counts)}i,rate_hz={r.rate_hz}i,seq={r.seq}i{_flags_field(r.flags)},"
                f'red_counts="{next(packed)}",ir_counts="{next(packed)}" {to_ns(r.t)}'
            )
        else:
            out.extend(reading_lines(r, patient))
    return out
