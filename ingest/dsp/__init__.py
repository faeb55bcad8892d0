"""Signal processing for Nabz ingest: ECG R peaks, heart rate, SpO2, signal quality.

Functional core only: arrays and times in, numbers and frozen dataclasses out; no I/O, no clocks.
`sampling_rate` is always an explicit argument. The runtime API is re-exported here; the
development tools (`mitdb` reader, EC57 `scoring`, `synth` signals and noise) are imported from
their modules.
"""

from .ecg import EcgPeakStream, EcgRate, ecg_clean, ecg_peaks, ecg_rate, ecg_sqi
from .hrv import Hrv, af_score, hrv_time_domain
from .ppg import (
    Calibration,
    PpgResult,
    Spo2Estimate,
    ppg_clean,
    ppg_peaks,
    ppg_perfusion_index,
    ppg_process,
    ppg_rate,
    ppg_spo2,
    ppg_sqi,
)
from .resp import ecg_resp_rate
from .streams import EcgProcessor, EcgVitals, PpgProcessor, PpgVitals

__all__ = [
    "EcgPeakStream",
    "EcgRate",
    "ecg_clean",
    "ecg_peaks",
    "ecg_rate",
    "ecg_sqi",
    "Hrv",
    "af_score",
    "hrv_time_domain",
    "ecg_resp_rate",
    "Calibration",
    "PpgResult",
    "Spo2Estimate",
    "ppg_clean",
    "ppg_peaks",
    "ppg_perfusion_index",
    "ppg_process",
    "ppg_rate",
    "ppg_spo2",
    "ppg_sqi",
    "EcgProcessor",
    "EcgVitals",
    "PpgProcessor",
    "PpgVitals",
]
