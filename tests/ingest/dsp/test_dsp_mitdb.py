"""The MIT-BIH reader and the EC57 scoring helper."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ingest.dsp.mitdb import MitdbError, read_annotations, read_record, to_microvolts
from ingest.dsp.scoring import BeatScore, match_beats, score_beats

RECORD_100 = Path(__file__).parent / "data" / "mitdb" / "100"


def test_record_100_header_and_signals() -> None:
    # real data: PhysioNet MIT-BIH record 100 (the header has an extra comment and blank line)
    rec = read_record(RECORD_100)
    assert rec.sampling_rate == 360.0
    assert [s.name for s in rec.signals] == ["MLII", "V5"]
    mlii = rec.signal("MLII")
    assert mlii.adc.size == 650_000
    assert (mlii.gain, mlii.baseline) == (200.0, 1024)
    assert int(mlii.adc[0]) == 995  # the header's initial value (the checksums are verified too)
    uv = to_microvolts(mlii, rec.sampling_rate, 250)
    assert uv.size == -(-650_000 * 250 // 360)  # resample_poly rounds the length up
    assert -3000 < float(np.median(uv)) < 0  # MLII baseline of record 100 sits a little below 0 mV


def test_record_100_annotations_match_published_counts() -> None:
    ann = read_annotations(RECORD_100)
    counts = Counter(ann.symbols)
    # PhysioNet MIT-BIH directory: record 100 has 2239 N, 33 A, 1 V
    assert (counts["N"], counts["A"], counts["V"]) == (2239, 33, 1)
    assert ann.beats().size == 2273
    assert ann.aux[0] == "(N"  # the rhythm annotation at the start


def test_format_212_golden_bytes(tmp_path: Path) -> None:
    # two signals, two frames: (1, -1), (2047, -2048) packed by hand per signal(5)
    values = [1, -1, 2047, -2048]
    raw = bytearray()
    for a, b in zip(values[::2], values[1::2], strict=True):
        a12, b12 = a & 0xFFF, b & 0xFFF
        raw += bytes([a12 & 0xFF, ((b12 >> 8) << 4) | (a12 >> 8), b12 & 0xFF])
    (tmp_path / "t.dat").write_bytes(bytes(raw))
    (tmp_path / "t.hea").write_text(
        "t 2 360 2\nt.dat 212 200 12 0 1 2048 0 A\nt.dat 212 100 12 0 -1 -2049 0 B\n"
    )
    rec = read_record(tmp_path / "t")
    assert rec.signal("A").adc.tolist() == [1, 2047]
    assert rec.signal("B").adc.tolist() == [-1, -2048]


def test_bad_checksum_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.dat").write_bytes(bytes([1, 0, 0]))
    (tmp_path / "t.hea").write_text("t 1 360 2\nt.dat 212 200 12 0 1 999 0 A\n")
    with pytest.raises(MitdbError, match="checksum"):
        read_record(tmp_path / "t")


def test_annotation_skip_aux_and_end(tmp_path: Path) -> None:
    def word(code: int, value: int) -> bytes:
        return ((code << 10) | value).to_bytes(2, "little")

    data = word(1, 100)  # N at 100
    data += word(63, 3) + b"(N\x00\x00"  # aux "(N" on it
    data += word(59, 0) + (0).to_bytes(2, "little") + (5000).to_bytes(2, "little")  # skip 5000
    data += word(5, 20)  # V at 100 + 5000 + 20
    data += word(0, 0)
    (tmp_path / "t.atr").write_bytes(data)
    ann = read_annotations(tmp_path / "t")
    assert ann.samples.tolist() == [100, 5120]
    assert ann.symbols == ("N", "V")
    assert ann.aux == ("(N", "")


def test_matching_is_one_to_one_within_tolerance() -> None:
    ref = [100, 200, 300]
    det = [102, 104, 260, 400]  # two near 100: only one can match; 260 is 40 from 300
    ri, di = match_beats(ref, det, tolerance=40)
    assert sorted(zip(ri.tolist(), di.tolist(), strict=True)) == [(0, 0), (2, 2)]


def test_scoring_skips_the_first_five_minutes() -> None:
    fs = 250.0
    ref = np.array([10, 299.9, 300.5, 301.5, 302.5]) * fs
    det = np.array([10.3, 299.95, 300.5, 302.52, 303.4]) * fs  # 10.3 s: unmatched but not scored
    score = score_beats(ref.astype(int), det.astype(int), fs)
    assert score == BeatScore(tp=2, fn=1, fp=1)
    assert score.se_pct == pytest.approx(200 / 3)
    assert score.ppv_pct == pytest.approx(200 / 3)
