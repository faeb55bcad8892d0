"""The vectorised frame packer is byte-identical to the shared codec's wave_encode (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware import nabz_codec as codec
from hardware._codec import pack_wave_frames

SEED = 20261125  # pin: change to reproduce another fuzz run


@pytest.mark.parametrize("n", [1, 2, 37, 113, 255])
def test_ecg_packer_matches_codec(n: int) -> None:
    rng = np.random.default_rng([SEED, n])
    frames = 7
    samples = rng.integers(-32768, 32768, size=frames * n, dtype=np.int64)
    samples[:2] = (-32768, 32767)[: min(2, samples.size)]
    flags = rng.integers(0, 64, size=frames).tolist()
    seq0 = 0xFFFFFFFD  # wraps inside the batch
    t0 = 123_456_789_012
    got = pack_wave_frames(codec.WAVE_KIND_ECG, 250, n, seq0, t0, 4000, flags, samples.astype(np.int16))
    want = [
        codec.wave_encode(
            codec.WAVE_KIND_ECG,
            flags[i],
            250,
            seq0 + i,
            t0 + i * n * 4000,
            samples[i * n : (i + 1) * n].tolist(),
        )
        for i in range(frames)
    ]
    assert got == want
    assert [codec.wave_decode(g)["seq"] for g in got] == [(seq0 + i) & 0xFFFFFFFF for i in range(frames)]


@pytest.mark.parametrize("n", [1, 3, 37, 40, 255])
def test_ppg_packer_matches_codec(n: int) -> None:
    rng = np.random.default_rng([SEED, n, 2])
    frames = 5
    samples = rng.integers(0, 1 << 24, size=(frames * n, 2), dtype=np.int64)
    samples[0] = (0, 0xFFFFFF)
    flags = rng.integers(0, 64, size=frames).tolist()
    got = pack_wave_frames(
        codec.WAVE_KIND_PPG, 100, n, 41, 5_000_000, 10_000, flags, samples.astype(np.int32)
    )
    want = [
        codec.wave_encode(
            codec.WAVE_KIND_PPG,
            flags[i],
            100,
            41 + i,
            5_000_000 + i * n * 10_000,
            samples[i * n : (i + 1) * n].ravel().tolist(),
        )
        for i in range(frames)
    ]
    assert got == want


def test_packer_rejects_what_the_codec_cannot_carry() -> None:
    with pytest.raises(ValueError):
        pack_wave_frames(codec.WAVE_KIND_ECG, 250, 256, 0, 0, 4000, [0], np.zeros(256, np.int16))
    with pytest.raises(ValueError):
        pack_wave_frames(codec.WAVE_KIND_PPG, 100, 1, 0, 0, 10_000, [0], np.array([[1 << 24, 0]]))
    with pytest.raises(ValueError):
        pack_wave_frames(codec.WAVE_KIND_ECG, 250, 2, 0, 0, 4000, [0], np.array([0, 40_000]))
    with pytest.raises(ValueError):
        pack_wave_frames(codec.WAVE_KIND_ECG, 250, 2, 0, 0, 4000, [0, 0], np.zeros(2, np.int16))
