"""Fixtures for the DSP tests: MIT-BIH record 100 at the wearables' 250 Hz, and seeded noise.

Record 100 is real data (PhysioNet MIT-BIH Arrhythmia Database, ODC-By 1.0; see data/mitdb/README.md).
Everything made by `ingest.dsp.synth` is synthetic, and the tests that use it say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ingest.dsp.mitdb import read_annotations, read_record, to_microvolts

FS_ECG = 250
RECORD_100 = Path(__file__).parent / "data" / "mitdb" / "100"


@pytest.fixture(scope="session")
def record_100() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Lead MLII of record 100 at 250 Hz in integer µV, like the wearables send, and its beats."""
    rec = read_record(RECORD_100)
    ann = read_annotations(RECORD_100)
    x = np.round(to_microvolts(rec.signal("MLII"), rec.sampling_rate, FS_ECG))
    beats = np.round(ann.beats() * (FS_ECG / rec.sampling_rate)).astype(np.int64)
    return x, beats


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name; the seed is printed so a failure can be replayed."""
    seed = sum(request.node.name.encode()) * 7919 % 2**31
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
