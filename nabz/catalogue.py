"""The one catalogue of measured quantities.

Every place that names a quantity (MQTT payload fields, storage fields, dashboard units, FHIR
codes) takes the name from here, so the names cannot drift apart between components.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Quantity", "QUANTITIES", "Measurement", "MEASUREMENTS", "TAGS"]


@dataclass(frozen=True, slots=True)
class Quantity:
    """A measured quantity: its field name (unit in the name), UCUM unit, LOINC code, Grafana unit."""

    field: str
    description: str
    ucum: str
    loinc: str | None
    grafana_unit: str


QUANTITIES: dict[str, Quantity] = {
    q.field: q
    for q in (
        Quantity("hr_bpm", "heart rate from ECG R-peaks or a heart-rate sensor", "/min", "8867-4", "bpm"),
        Quantity("pr_bpm", "pulse rate from the PPG", "/min", "8889-8", "bpm"),
        Quantity(
            "spo2_pct",
            "oxygen saturation by pulse oximetry (uncalibrated unless spo2_calibrated is true)",
            "%",
            "59408-5",
            "percent",
        ),
        Quantity("pi_pct", "perfusion index (PPG AC/DC of the infrared channel)", "%", None, "percent"),
        Quantity("rr_ms", "RR interval between consecutive beats", "ms", "8637-1", "ms"),
        Quantity("sqi", "signal quality index, 0 (unusable) to 1 (clean)", "1", None, "percentunit"),
        Quantity("battery_pct", "wearable battery level", "%", None, "percent"),
        Quantity("signal_uv", "single-lead ECG voltage", "uV", "131329", "µV"),
        Quantity("red_counts", "PPG red channel, raw ADC counts", "{counts}", None, "none"),
        Quantity("ir_counts", "PPG infrared channel, raw ADC counts", "{counts}", None, "none"),
        Quantity("pause_s", "longest RR gap in the last 10 s of ECG (a pause or asystole)", "s", None, "s"),
        Quantity(
            "af_score", "atrial-fibrillation suspicion from RR irregularity, 0 to 1", "1", None, "percentunit"
        ),
        Quantity(
            "hrv_sdnn_ms", "heart-rate variability: SDNN of the last ~64 RR intervals", "ms", None, "ms"
        ),
        Quantity(
            "hrv_rmssd_ms", "heart-rate variability: RMSSD of the last ~64 RR intervals", "ms", None, "ms"
        ),
        Quantity(
            "resp_bpm",
            "respiration rate derived from the ECG (beat amplitude and RR)",
            "/min",
            "9279-1",
            "short",
        ),
        Quantity("spool_depth", "messages waiting in a gateway's on-disk spool", "{messages}", None, "short"),
        Quantity(
            "held",
            "wearables whose readings no server subscriber takes (kept at the gateway)",
            "{devices}",
            None,
            "short",
        ),
        Quantity(
            "online", "1 while a gateway's retained status says online, else 0", "1", None, "bool_on_off"
        ),
        Quantity(
            "stored_readings", "readings stored by an ingest worker (counter)", "{readings}", None, "short"
        ),
        Quantity(
            "stored_messages", "messages stored by an ingest worker (counter)", "{messages}", None, "short"
        ),
        Quantity(
            "dead_letters", "messages an ingest worker dead-lettered (counter)", "{messages}", None, "short"
        ),
        Quantity(
            "duplicates",
            "redelivered messages an ingest worker discarded (counter)",
            "{messages}",
            None,
            "short",
        ),
    )
}

# Tags are bounded identifiers only: never a value that grows without limit (no message ids, no times).
TAGS: tuple[str, ...] = ("site", "patient", "device")


@dataclass(frozen=True, slots=True)
class Measurement:
    """A storage measurement (InfluxDB line protocol) with its tags and fields."""

    name: str
    description: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]


MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        # `flags`: a flagged message's waveform flags as bits, on its first sample (ingest.lines)
        Measurement("ecg", "raw ECG, one point per sample (250 Hz)", TAGS, ("signal_uv", "flags")),
        Measurement(
            "ppg", "raw PPG, one point per sample (100 Hz)", TAGS, ("red_counts", "ir_counts", "flags")
        ),
        # `waveforms = "chunks"` (docs/storage.md): one point per message, samples packed in a string
        Measurement(
            "ecg_chunk",
            "raw ECG, one point per message (samples packed)",
            TAGS,
            ("n", "rate_hz", "seq", "flags", "signal_uv"),
        ),
        Measurement(
            "ppg_chunk",
            "raw PPG, one point per message (samples packed)",
            TAGS,
            ("n", "rate_hz", "seq", "flags", "red_counts", "ir_counts"),
        ),
        Measurement(
            "device_vitals",
            "values the wearable computed itself (Heart Rate and Pulse Oximeter services, battery)",
            TAGS,
            ("hr_bpm", "spo2_pct", "pr_bpm", "pi_pct", "battery_pct"),
        ),
        Measurement(
            "rr", "RR intervals reported by a heart-rate sensor, one point per beat", TAGS, ("rr_ms",)
        ),
        Measurement(
            "vitals",
            "vitals derived by ingest from the raw waveforms",
            ("site", "patient", "source"),
            (
                "hr_bpm",
                "pr_bpm",
                "spo2_pct",
                "spo2_calibrated",
                "pi_pct",
                "sqi",
                "pause_s",
                "af_score",
                "hrv_sdnn_ms",
                "hrv_rmssd_ms",
                "resp_bpm",
            ),
        ),
        Measurement(
            "ingest_stats",
            "an ingest worker's running totals, written every few seconds (operations board)",
            ("site", "worker"),
            ("stored_readings", "stored_messages", "dead_letters", "duplicates"),
        ),
        Measurement(
            "gateway_status",
            "each gateway's retained status as ingest sees it (operations board)",
            ("site", "gateway"),
            ("online", "spool_depth", "held"),
        ),
        Measurement(
            "device_status",
            "each wearable as its online gateway last reported it (operations board): link 0 connecting,"
            " 1 connected, 2 reconnecting, 3 lost; device_state 0 ok, 1 low battery, 2 battery critical,"
            " 3 sensor fault",
            ("site", "gateway", "device"),
            ("link", "device_state", "battery_pct", "rssi_dbm", "gap_frames"),
        ),
    )
}
