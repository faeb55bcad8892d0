"""The serial line protocol: a documented vector, damage turned into reasons (fuzzed with a printed,
pinnable seed), resynchronisation after garbage, and the exactly-once in-order link."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.serial_protocol import (
    MAX_LINE,
    BadLine,
    Command,
    LineReader,
    Notify,
    ReplayStart,
    SerialLink,
    crc16,
    encode_notify,
    encode_replay,
    encode_write,
    parse_line,
)
from tests.contract_doc import vectors

SESSION = "3fa2c1d0"


def test_the_documented_example_lines_parse_to_what_the_contract_says() -> None:
    assert crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value
    examples = vectors("serial:line")
    assert len(examples) >= 3
    for v in examples:
        line = v.body.strip().encode()
        frame = parse_line(line)
        want = v.attrs["kind"]
        assert type(frame).__name__ == want, (line, frame)
        if isinstance(frame, Notify):
            assert (
                encode_notify(frame.session, frame.lseq, frame.device, frame.char, frame.data) == line + b"\n"
            )


def test_round_trips() -> None:
    line = encode_notify(SESSION, 41, "oxi-0001", "2a5f", bytes.fromhex("0062004800"))
    assert parse_line(line[:-1]) == Notify(SESSION, 41, "oxi-0001", "2a5f", bytes.fromhex("0062004800"))
    assert parse_line(encode_replay(SESSION, 7)[:-1]) == Command("REPLAY", session=SESSION, lseq=7)
    w = encode_write("ecg-0001", "6e61627a-0103-4000-8000-00805f9b34fb", b"\x01\x01")
    assert parse_line(w[:-1].replace(b"\n", b"") + b"\r") == Command(
        "WRITE", device="ecg-0001", char="6e61627a-0103-4000-8000-00805f9b34fb", data=b"\x01\x01"
    )


def test_each_kind_of_damage_has_its_reason() -> None:
    good = encode_notify(SESSION, 1, "ecg-0001", "2a37", b"\x16\x48")[:-1]
    flipped = bytearray(good)
    flipped[10] ^= 0x01
    cases = {
        "bad_checksum": bytes(flipped),
        "no_checksum": good[:-5],
        "not_ascii": good.replace(b"ecg", b"\xe9cg"),
        "too_long": b"N1," + b"0" * MAX_LINE,
        "unknown_type": _sealed("X9,whatever"),
        "bad_fields": _sealed(f"N1,{SESSION},1,ecg 0001,2a37,1648"),
        "bad_hex": _sealed(f"N1,{SESSION},1,ecg-0001,2a37,164"),
    }
    for reason, line in cases.items():
        frame = parse_line(line)
        assert isinstance(frame, BadLine) and frame.reason == reason, (reason, frame)


def _sealed(body: str) -> bytes:
    return body.encode() + b"*%04X" % crc16(body.encode())


def test_garbage_costs_one_line_and_the_reader_resynchronises() -> None:
    good = [encode_notify(SESSION, i, "ecg-0001", "2a19", bytes([90 - i])) for i in range(4)]
    stream = good[0] + b"\x00\xff garbage" + good[1] + b"x" * (3 * MAX_LINE) + b"\n" + good[2] + good[3]
    reader = LineReader()
    frames = []
    for k in range(0, len(stream), 7):  # as a UART delivers it: in small pieces
        frames += reader.feed(stream[k : k + 7])
    kinds = [type(f).__name__ for f in frames]
    assert kinds == ["Notify", "BadLine", "BadLine", "Notify", "Notify"]
    assert [f.lseq for f in frames if isinstance(f, Notify)] == [0, 2, 3]


def test_a_reset_reader_drops_the_cut_line_and_reads_the_next_port_cleanly() -> None:
    # The port was closed in the middle of a line, and reopened (synthetic lines).
    good = [encode_notify(SESSION, i, "ecg-0001", "2a19", bytes([90 - i])) for i in range(3)]
    reader = LineReader()
    assert reader.feed(good[0] + good[1][:9]) == [parse_line(good[0].rstrip(b"\n"))]
    assert reader.reset() == 9
    assert [(type(f).__name__, getattr(f, "lseq", None)) for f in reader.feed(good[1] + good[2])] == [
        ("Notify", 1),
        ("Notify", 2),
    ]
    reader.feed(b"x" * (2 * MAX_LINE))  # cut inside a line too long: the next port starts afresh
    reader.reset()
    assert [type(f).__name__ for f in reader.feed(good[0])] == ["Notify"]


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=2 * MAX_LINE))
def test_random_bytes_never_raise(data: bytes) -> None:
    for frame in LineReader().feed(data + b"\n"):
        assert isinstance(frame, Notify | ReplayStart | Command | BadLine)


def test_mutated_lines_are_either_rejected_or_exactly_a_valid_frame() -> None:
    seed = random.randrange(2**32)
    print(f"fuzz seed {seed} (pin it with random.Random({seed}))")
    rng = random.Random(seed)
    base = encode_notify(
        SESSION, 12345, "oxi-0001", "6e61627a-0102-4000-8000-00805f9b34fb", bytes(range(60))
    )[:-1]
    want = parse_line(base)
    changed = 0
    for _ in range(3000):
        line = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            line[rng.randrange(len(line))] = rng.randrange(256)
        frame = parse_line(bytes(line).replace(b"\n", b"?"))
        if not isinstance(frame, BadLine):
            # Hex digits may change case (or a byte be rewritten with itself): the same frame.
            # Anything else that still checks out would be a CRC miss.
            assert frame == want, (bytes(line), frame)
        changed += bytes(line).lower() != base.lower()
    assert changed > 2900


def _n(lseq: int, session: str = SESSION) -> Notify:
    return Notify(session, lseq, "ecg-0001", "2a19", b"\x50")


def test_the_link_accepts_each_line_once_in_order_and_goes_back_for_gaps() -> None:
    link = SerialLink(replay_timeout_s=2.0)
    assert link.on_notify(_n(100), 0.0).accept  # first contact: start where the sensor is
    assert link.on_notify(_n(101), 0.0).accept
    d = link.on_notify(_n(104), 0.1)  # 102, 103 lost on the wire
    assert not d.accept and d.replay_from == 102
    assert link.on_notify(_n(105), 0.2) == link.on_notify(_n(106), 0.3)  # waiting, not asking again
    link.on_replay_start(ReplayStart(SESSION, 102))
    assert [link.on_notify(_n(s), 0.4).accept for s in (102, 103, 104, 105, 106)] == [True] * 5
    assert not link.on_notify(_n(104), 0.5).accept  # a replayed line seen twice
    assert (link.accepted, link.duplicates, link.lost_lines) == (7, 1, 0)


def test_lines_older_than_the_sensor_keeps_are_counted_lost_and_a_silent_sensor_is_given_up_on() -> None:
    link = SerialLink(replay_timeout_s=1.0, max_tries=2)
    link.on_notify(_n(0), 0.0)
    assert link.on_notify(_n(50), 0.0).replay_from == 1
    link.on_replay_start(ReplayStart(SESSION, 20))  # its buffer starts at 20
    assert link.lost_lines == 19 and link.on_notify(_n(20), 0.1).accept
    # a sensor that never answers: asked twice, then the gap is accepted as lost
    assert link.on_notify(_n(30), 1.0).replay_from == 21
    assert link.on_notify(_n(31), 2.5).replay_from == 21
    assert link.on_notify(_n(32), 4.0).accept
    assert link.lost_lines == 19 + 11


def test_the_checkpoint_resumes_exactly_and_a_restarted_sensor_is_asked_from_line_zero() -> None:
    a = SerialLink()
    for s in range(5):
        a.on_notify(_n(s), 0.0)
    b = SerialLink()
    b.restore(a.checkpoint())
    assert b.resume_request() == (SESSION, 5)
    assert not b.on_notify(_n(4), 0.0).accept and b.on_notify(_n(5), 0.0).accept
    d = b.on_notify(_n(3, "0badf00d"), 0.0)  # new session: the sensor rebooted
    assert not d.accept and d.replay_from == 0 and b.restarts == 1
