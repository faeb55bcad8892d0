"""The waveform ring and sender, run in MicroPython 1.27 (tests/firmware/mp/mp_ring.py).

What a user would notice: frames that fill the negotiated MTU, a minute of signal kept through a
BLE drop-out and resent on request with the "resent" flag, the part older than the ring reported
as gone, nothing lost or reordered when the radio is busy, and a sampling path that cannot
trigger the garbage collector.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.firmware.fw import RunMicroPython, run_script


@pytest.fixture(scope="module")
def ring(run_micropython_module: RunMicroPython) -> dict[str, Any]:
    return run_script(run_micropython_module, "mp_ring.py")


@pytest.mark.parametrize(
    ("kind", "mtu", "per_frame", "size"),
    [(1, 247, 113, 244), (1, 23, 1, 20), (2, 247, 37, 240), (2, 100, 13, 96)],
)
def test_frames_fill_the_mtu_and_match_the_codec(
    ring: dict[str, Any], kind: int, mtu: int, per_frame: int, size: int
) -> None:
    got = ring[f"framing {kind} {mtu}"]
    assert got["per_frame"] == per_frame
    assert got["bytes"] == [size] * 3
    assert size <= mtu - 3
    assert got["identical_to_codec"]


def test_ppg_cannot_stream_at_the_default_mtu(ring: dict[str, Any]) -> None:
    assert ring["ppg at mtu 23"] == "waveform: ATT MTU 23 too small for one sample"


def test_the_ring_holds_more_than_a_minute(ring: dict[str, Any]) -> None:
    for name in ("ecg after 70 s", "ppg after 70 s"):
        got = ring[name]
        assert 60.0 <= got["held_s"] <= 64.0, name
        assert got["dropped"] > 0, f"{name}: 70 s must not fit a 64 s ring"
    # At MTU 23 (one ECG sample per frame) the 512-frame index, not the samples, is the limit.
    assert ring["ecg at mtu 23 after 70 s"] == {"held_s": 2.048, "frames": 512}


def test_a_30_second_dropout_is_resent_whole(ring: dict[str, Any]) -> None:
    got = ring["drop-out 30 s"]
    hole = list(range(got["last_before"] + 1, got["first_live"]))
    assert len(hole) > 60
    assert got["resent_seqs"] == hole
    assert got["resent_flag"]
    assert got["samples_resent"] >= 30 * 250 - 2 * 113
    assert got["reports"] == [
        {"op": 0x81, "kind": 1, "first_seq": hole[0], "last_seq": hole[-1],
         "resent_first_seq": hole[0], "resent_count": len(hole)}
    ]  # fmt: skip
    assert ring["resent equals original"] is True


def test_a_90_second_dropout_reports_the_gap(ring: dict[str, Any]) -> None:
    got = ring["drop-out 90 s"]
    first, last = got["asked"]
    (report,) = got["reports"]
    assert (report["first_seq"], report["last_seq"]) == (first, last)
    gone = report["resent_first_seq"] - first
    assert gone > 0, "frames older than the ring must be reported, not hidden"
    assert report["resent_first_seq"] + report["resent_count"] - 1 == last
    assert report["resent_count"] == got["frames"]
    assert 60.0 <= got["seconds_resent"] <= 64.0


def test_a_busy_radio_loses_and_reorders_nothing(ring: dict[str, Any]) -> None:
    got = ring["congestion"]
    assert got["refused"] > 0, "the fake stack must have pushed back"
    assert got["seqs_in_order"]
    assert got["frames"] == got["expected"] == 132
    assert got["skipped"] == 0


def test_lost_samples_start_a_flagged_frame_at_the_right_time(ring: dict[str, Any]) -> None:
    got = ring["gap"]
    assert got["f0"] == [50, 0, 1234567000]
    n, flags, t0 = got["f1"]
    assert n == 113 and flags == 0x20  # gap before
    assert t0 == 1234567000 + 53 * 4000
    assert got["f1_first_sample"] == got["expected_first"]
    assert (got["lost"], got["gaps"]) == (3, 1)


def test_sequence_numbers_wrap(ring: dict[str, Any]) -> None:
    got = ring["wrap"]
    assert got["live"] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    assert got["resent"] == [0xFFFFFFFF, 0, 1]
    assert got["report"][0]["resent_count"] == 3


def test_the_sampling_path_allocates_nothing(ring: dict[str, Any]) -> None:
    assert ring["alloc"] == {"put_ecg x2000": 0, "put_ppg x2000": 0, "skip x50": 0}


def test_the_sampling_path_allocates_nothing_after_2_30_samples(ring: dict[str, Any]) -> None:
    """After 2**30 samples (49.7 days of ECG) a count past the small-int range was a long int,
    allocated at every sample: put_ecg x250 took 8,000 bytes (the garbage collector then runs
    in the ECG timer callback). The statistics wrap at 2**30 like the other counters."""
    got = ring["alloc at 2**30"]
    assert (got["put_ecg x2000"], got["put_ppg x2000"], got["skip x50"]) == (0, 0, 0)
    # 2020 samples (and frames dropped) since 2**30 - 10; 70 skips of 2 samples on the PPG ring
    assert got["ecg"] == [2010, 2010]
    assert got["ppg"] == [2010, 130, 60]


def test_a_resend_overtaken_by_the_ring_reports_only_the_frames_really_gone(ring: dict[str, Any]) -> None:
    """The ring dropped 1004 and 1005 from under a resend of 1000..1015: the gateway must hear that
    those two are gone and get 1006..1015 - not be told that everything after 1003 is not coming
    (it would give up on ten frames the wearable still holds and report them lost)."""
    from gateway.gaps import GapTracker

    got = ring["resend overtaken"]
    assert got["held"] == [1006, 1021]
    assert got["resent"] == [1000, 1001, 1002, 1003, *range(1006, 1016)]
    first, second = got["reports"]
    assert (first["first_seq"], first["last_seq"], first["resent_first_seq"], first["resent_count"]) == (
        1000, 1003, 1000, 4,
    )  # fmt: skip
    assert (second["first_seq"], second["last_seq"], second["resent_first_seq"], second["resent_count"]) == (
        1004, 1015, 1006, 10,
    )  # fmt: skip
    # What the gateway makes of it: its gap tracker asked for 1000..1015 and gives up on 1004-1005 only.
    gaps = GapTracker()
    key = ("ecg-0001", "ecg")
    gaps.observe(key, 999, False, 1, 0.0)
    assert gaps.observe(key, 1016, False, 1, 0.1).resend == (1000, 1015)
    for seq in got["resent"]:
        gaps.observe(key, seq, True, 1, 0.2)
    lost = [x for r in got["reports"] for x in gaps.report(key, r["first_seq"], r["last_seq"],
                                                           r["resent_first_seq"], r["resent_count"])]  # fmt: skip
    assert [(x.first_seq, x.frames) for x in lost] == [(1004, 2)]
