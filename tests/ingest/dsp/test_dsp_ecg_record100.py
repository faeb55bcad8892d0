"""QRS detection on real data: MIT-BIH record 100 (lead MLII, resampled 360 -> 250 Hz, integer µV).

Scored the ANSI/AAMI EC57 way (150 ms match window, first 5 minutes skipped). Record 100 is one
clean record, so the noisy variants matter more: noise is added at an SNR defined as in the MIT-BIH
Noise Stress Test (signal power = median QRS peak-to-peak squared / 8).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from ingest.dsp import EcgPeakStream, ecg_peaks
from ingest.dsp.scoring import BeatScore, score_beats
from ingest.dsp.synth import add_noise, ecg_noise, qrs_signal_power

FS_ECG = 250
Recording = tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]  # the `record_100` fixture


def _score(rec: Recording, signal: npt.NDArray[np.float64]) -> BeatScore:
    score = score_beats(rec[1], ecg_peaks(signal, FS_ECG), FS_ECG)
    print(f"TP {score.tp} FN {score.fn} FP {score.fp}  Se {score.se_pct:.2f} %  +P {score.ppv_pct:.2f} %")
    return score


def test_clean_record_100(record_100: Recording) -> None:
    score = _score(record_100, record_100[0])
    assert score.se_pct >= 99.5
    assert score.ppv_pct >= 99.5


@pytest.mark.parametrize("seed", [1, 2])
def test_record_100_at_12_db_gaussian_noise_and_baseline_wander(record_100: Recording, seed: int) -> None:
    # synthetic noise on real data: white Gaussian + baseline wander, equal power, 12 dB NST SNR in total
    x = record_100[0]
    rng = np.random.default_rng(seed)
    noise = ecg_noise("white", x.size, FS_ECG, rng) + ecg_noise("baseline", x.size, FS_ECG, rng)
    noisy = np.round(add_noise(x, noise, 12.0, qrs_signal_power(x, record_100[1], FS_ECG)))
    score = _score(record_100, noisy)
    assert score.se_pct >= 99.0
    assert score.ppv_pct >= 97.0


@pytest.mark.parametrize("kind", ["white", "muscle"])
def test_record_100_at_12_db_of_one_noise(record_100: Recording, kind: str) -> None:
    # synthetic noise on real data: all 12 dB of NST SNR in one kind (white, or EMG-like 5-100 Hz)
    x = record_100[0]
    noise = ecg_noise(kind, x.size, FS_ECG, np.random.default_rng(12))
    score = _score(
        record_100, np.round(add_noise(x, noise, 12.0, qrs_signal_power(x, record_100[1], FS_ECG)))
    )
    assert score.se_pct >= 99.0
    assert score.ppv_pct >= 97.0


def test_record_100_inverted_lead(record_100: Recording) -> None:
    # the same beats with the lead reversed: the detector is polarity-blind and locates the R wave
    # as the largest deflection, which is now negative
    score = _score(record_100, -record_100[0])
    assert score.se_pct >= 99.5
    assert score.ppv_pct >= 99.5


def test_r_peaks_land_on_the_annotations(record_100: Recording) -> None:
    peaks = ecg_peaks(record_100[0], FS_ECG)
    nearest = np.abs(peaks[:, None] - record_100[1][None, :]).min(axis=1)
    assert np.percentile(nearest, 99) <= 2  # within 8 ms at 250 Hz: good enough for RR/HRV


@pytest.mark.parametrize("sizes", [[1], [37], [250], [4096], [13, 250, 1, 600, 3]])
def test_stream_equals_ecg_peaks_whatever_the_chunks(record_100: Recording, sizes: list[int]) -> None:
    # 2 minutes of record 100 with electrode-motion-like bursts, so the search-back and the
    # lowered-threshold paths are exercised too
    x = record_100[0][: 120 * FS_ECG]
    x = np.round(x + 300.0 * ecg_noise("motion", x.size, FS_ECG, np.random.default_rng(5)))
    expected = ecg_peaks(x, FS_ECG)
    stream = EcgPeakStream(FS_ECG)
    parts, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        parts.append(stream.push(x[i : i + n]))
        i, k = i + n, k + 1
    parts.append(stream.flush())
    got = np.concatenate(parts)
    assert got.dtype == np.int64
    assert np.array_equal(got, expected)
    assert np.all(np.diff(got) > 0)
