"""Waveform chunks (docs/storage.md): packed samples come back exactly, one point per message."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.lines import chunk_lines, pack_many, pack_samples, reading_lines, unpack_samples
from tests.contract_doc import vectors


@settings(deadline=None)  # the first example loads the compiled packing kernel (~1 s when run alone)
@given(st.lists(st.lists(st.integers(-(2**24), 2**24), max_size=300), max_size=8))
def test_packing_round_trips_any_runs(runs: list[list[int]]) -> None:
    packed = pack_many(runs)
    assert [unpack_samples(p) for p in packed] == runs
    assert packed == [pack_samples(r) for r in runs]  # batching changes nothing


def test_a_chunk_holds_the_same_samples_as_the_points() -> None:
    (v,) = [v for v in vectors("mqtt:reading") if v.attrs["name"] == "ecg"]
    from nabz import contract

    r = contract.decode_reading(v.attrs["topic"], v.body.encode())
    assert not isinstance(r, contract.Rejected)
    (line,) = chunk_lines(r, "p-0001")
    points = reading_lines(r, "p-0001")
    assert line.startswith("ecg_chunk,device=ecg-0001,patient=p-0001,site=demo n=5i,rate_hz=250i,seq=42i,")
    assert line.endswith(" " + points[0].rsplit(" ", 1)[1])  # the first sample's time
    packed = line.split('signal_uv="')[1].split('"')[0]
    assert unpack_samples(packed) == [int(p.split("=")[-1].split("i")[0]) for p in points]


def test_smooth_signals_pack_to_about_a_byte_and_a_half_per_sample() -> None:
    t = np.arange(250) / 250.0
    ecg = [int(x) for x in np.round(400 * np.sin(2 * np.pi * 1.2 * t) + 30 * np.sin(2 * np.pi * 9 * t))]
    assert len(pack_samples(ecg)) * 3 / 4 < 1.5 * len(ecg)


def test_the_packed_bytes_are_those_docs_storage_md_describes() -> None:
    # first value, then differences; zigzag; 7-bit groups, low first, 0x80 = more follow; base64.
    # 0 -> 00; +63 -> 7e; -127 -> fd 01; +128 -> 80 02; +8127 -> fe 7e; -16383 -> fd ff 01;
    # +16384 -> 80 80 02; +(2**33 - 8193) and -(2**34 - 1) -> 5 bytes each.
    runs = [[0, 63, -64, 64, 8191, -8192, 8192, 2**33 - 1, -(2**33)], [], [7]]
    assert pack_many(runs) == ["AH79AYAC/n79/wGAgAL+//7/P/3///9/", "", "Dg=="]
    assert unpack_samples("AH79AYAC/n79/wGAgAL+//7/P/3///9/") == runs[0]


def test_a_flagged_message_stores_its_flags_with_its_first_sample() -> None:
    """Leads off, saturated, ...: one integer field, so a strip read back can mark them."""
    import typing

    import msgspec

    from ingest.lines import WAVE_FLAGS, flags_mask, flags_of
    from nabz import contract

    assert set(WAVE_FLAGS) == set(typing.get_args(contract.WaveFlag))  # every flag has its bit
    (v,) = [v for v in vectors("mqtt:reading") if v.attrs["name"] == "ecg"]
    plain = contract.decode_reading(v.attrs["topic"], v.body.encode())
    assert isinstance(plain, contract.EcgReading) and not plain.flags
    r = msgspec.structs.replace(plain, flags=["leads_off", "gap_before"])
    (chunk,) = chunk_lines(r, "p-0001")
    assert ",seq=42i,flags=33i," in chunk and "flags" not in chunk_lines(plain, "p-0001")[0]
    points, plain_points = reading_lines(r, "p-0001"), reading_lines(plain, "p-0001")
    assert points[0] == plain_points[0].replace(" ", ",flags=33i ", 2).replace(",flags=33i ", " ", 1)
    assert points[1:] == plain_points[1:]  # on the first sample only
    assert flags_of(33) == ("leads_off", "gap_before") and flags_mask(flags_of(63)) == 63
    assert flags_of(64 | 1) == ("leads_off",)  # a bit a later version added is left out
