"""Property-based tests (hypothesis) of every parser of outside bytes, and the regressions for what
`nabz bench fuzz` found. Hypothesis prints the failing example and its seed on failure
(`--hypothesis-seed` replays a run)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.gsm import GsmNotifier, classify, parse_cds, parse_cmgr
from alerts.notify import Delivery
from firmware import nabz_codec as codec
from gateway.decode import Decoder, Notification
from gateway.serial_protocol import MAX_LINE, BadLine, LineReader, Notify, encode_notify, parse_line
from ingest.decode import decode_reading as fast_decode
from ingest.pipeline import IngestCore, Message
from ingest.store import Store
from nabz import contract
from nabz.config import ConfigError, ModemConfig, load
from nabz.contract import Rejected
from nabz.fuzz_targets import _FakePort, _reading_payload

T_US = 1_795_597_200_000_000
CHARS = ["2a37", "2a5f", "2a5e", "2a19", codec.NABZ_ECG_WAVEFORM, codec.NABZ_PPG_WAVEFORM, codec.NABZ_CONTROL]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


@FAST
@given(char=st.sampled_from(CHARS), data=st.binary(max_size=300), dt_us=st.integers(0, 10**12))
def test_the_gateway_decoder_never_raises_and_what_it_publishes_ingest_accepts(
    char: str, data: bytes, dt_us: int
) -> None:
    dec = Decoder("demo", "gw-0001")
    for k in range(2):  # twice: the second frame meets a clock already set by the first
        r = dec.decode(Notification("ecg-0001", char, data, T_US + k * dt_us))
        if isinstance(r, Rejected):
            assert r.reason in ("ble_decode", "unknown_characteristic")
            continue
        back = contract.decode_reading(
            contract.reading_topic("demo", "gw-0001", r.device, contract.stream_of(r)), contract.encode(r)
        )
        assert not isinstance(back, Rejected) or back.reason == "out_of_range", back


@FAST
@given(data=st.binary(max_size=40))
def test_control_values_are_refused_only_with_value_error(data: bytes) -> None:
    for decode in (codec.control_decode, codec.control_notify_decode):
        try:
            decode(data)
        except ValueError:
            pass


@FAST
@given(chunks=st.lists(st.binary(max_size=400), max_size=8), tail=st.booleans())
def test_the_line_reader_stays_bounded_and_finds_the_next_good_line_after_any_damage(
    chunks: list[bytes], tail: bool
) -> None:
    reader = LineReader()
    for c in chunks:
        for frame in reader.feed(c):
            assert isinstance(frame, BadLine | Notify) or frame is not None
        assert len(reader._buf) <= MAX_LINE
    good = encode_notify("3fa2c1d0", 7, "ecg-0001", "2a37", bytes.fromhex("16481a04"))
    frames = reader.feed(b"\n" + good if tail else b"\n" + good[:-1] + b"\r\n")
    assert frames and frames[-1] == Notify("3fa2c1d0", 7, "ecg-0001", "2a37", bytes.fromhex("16481a04"))


@FAST
@given(
    session=st.from_regex(r"\A[0-9a-f]{8}\Z"),
    lseq=st.integers(0, 2**32 - 1),
    device=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z"),
    data=st.binary(max_size=200),
)
def test_serial_notify_lines_round_trip(session: str, lseq: int, device: str, data: bytes) -> None:
    line = encode_notify(session, lseq, device, "2a5f", data)
    assert parse_line(line.rstrip(b"\n")) == Notify(session, lseq, device, "2a5f", data)


@FAST
@given(body=st.dictionaries(st.sampled_from(["v", "id", "site", "gateway", "device", "t", "seq", "rate_hz",
                                              "signal_uv", "hr_bpm", "spo2_pct", "battery_pct", "flags"]),
                            json_values, max_size=10),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_ingests_fast_path_and_the_contract_give_the_same_answer(body: dict[str, object], seed: int) -> None:
    topic, valid = _reading_payload(random.Random(seed))
    payload = json.dumps({**valid, **body}).encode()
    slow, quick = contract.decode_reading(topic, payload), fast_decode(topic, payload)
    if isinstance(slow, Rejected):
        assert isinstance(quick, Rejected) and quick.reason == slow.reason
    else:
        assert quick == slow


@FAST
@given(lines=st.lists(st.text(max_size=60), max_size=5))
def test_modem_response_parsers_never_raise(lines: list[str]) -> None:
    for line in lines:
        assert classify(line) in ("final_ok", "final_error", "urc", "info")
        parse_cds(line)
    parse_cmgr(lines, ucs2=True)
    parse_cmgr(lines, ucs2=False)


@FAST
@given(seed=st.integers(0, 2**32 - 1), mutate_p=st.floats(0, 1))
def test_a_modem_answering_garbage_gets_a_delivery_verdict_never_an_exception(
    seed: int, mutate_p: float
) -> None:
    ticks = iter(range(10**6))
    modem = GsmNotifier(
        ModemConfig(port="x", command_timeout_s=3.0, send_timeout_s=5.0, sim_pin="1234"),
        port=_FakePort(random.Random(seed), mutate_p),
        monotonic=lambda: float(next(ticks)),
    )
    assert isinstance(modem.send("+923001111111", "NABZ test", "k", 0.0), Delivery)
    assert isinstance(modem.poll(1.0), list)


@FAST
@given(text=st.text(max_size=300))
def test_any_configuration_text_loads_or_is_refused_with_a_configuration_error(
    tmp_path_factory, text: str
) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path_factory.mktemp("cfg") / "nabz.toml"
    f.write_text(text)
    f.chmod(0o600)
    try:
        load(f, environ={})
    except ConfigError:
        pass


# --- regressions: what the fuzzer found ----------------------------------------------------------


def test_invalid_utf8_inside_a_json_string_is_not_json_and_does_not_hold_up_ingest(tmp_path: Path) -> None:
    """Before: msgspec raised UnicodeDecodeError, which neither validator caught; the batch failed
    and was retried forever, so one such message stopped every reading behind it."""
    r = Decoder("demo", "gw-0001").decode(Notification("ecg-0001", "2a37", codec.hrm_encode(72), T_US))
    assert not isinstance(r, Rejected)
    topic, good = contract.reading_topic("demo", "gw-0001", "ecg-0001", "hr"), contract.encode(r)
    bad = good.replace(b'"site":"demo"', b'"site":"d\xe9mo"')
    assert bad != good
    assert contract.decode_reading(topic, bad) == fast_decode(topic, bad)
    assert isinstance(fast_decode(topic, bad), Rejected) and fast_decode(topic, bad).reason == "not_json"  # type: ignore[union-attr]
    core = IngestCore(Store(tmp_path / "s.sqlite"), enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"})
    result = core.handle_batch([Message(topic, bad, 0.0), Message(topic, good, 0.0)])
    assert (result.stored, result.dead_lettered) == (1, 1)
    assert [d.reason for d in core.store.dead_letters()] == ["not_json"]


def test_invalid_utf8_in_an_unknown_key_is_refused_by_both_validators() -> None:
    """Before: the fast path skipped unknown keys unchecked and stored a payload that is not JSON."""
    topic, body = _reading_payload(random.Random(2))
    payload = json.dumps(body).encode()[:-1] + b', "x\xa8": 1}'
    assert fast_decode(topic, payload) == contract.decode_reading(topic, payload)
    assert isinstance(fast_decode(topic, payload), Rejected)


def test_the_alerts_service_counts_a_message_with_invalid_utf8_and_carries_on(tmp_path: Path) -> None:
    """Before: the UnicodeDecodeError escaped `_handle` and ended the alerts worker thread."""
    from alerts.notify import OutboxNotifier
    from alerts.service import AlertService
    from alerts.store import AlertStore
    from nabz.config import Config

    svc = AlertService(
        Config(site="demo"),
        notifiers=[OutboxNotifier(tmp_path / "o.jsonl")],
        store=AlertStore(tmp_path / "a.sqlite"),
    )
    for topic in (
        "nabz/v1/demo/vitals",
        "nabz/v1/demo/gw/gw-0001/status",
        "nabz/v1/demo/alerts/command",
    ):
        assert svc._handle(topic, b'{"site": "d\xe9mo"}', 0.0) == []
    assert svc.bad_messages == 3


@pytest.mark.parametrize("reference", ["17Y9", "17³"])
def test_an_unreadable_message_reference_after_ok_is_a_sent_sms(reference: str) -> None:
    """Before: `+CMGS: 17Y9`, then `+CMGS: 17³` (a digit to Python's str.isdigit, not to int),
    each followed by OK, raised ValueError out of the notifier."""

    class Port(_FakePort):
        def _reply(self, cmd: bytes) -> bytes:
            if cmd.endswith(b"\x1a"):
                return f"\r\n+CMGS: {reference}\r\n\r\nOK\r\n".encode()
            return super()._reply(cmd)

    ticks = iter(range(10**6))
    modem = GsmNotifier(
        ModemConfig(port="x"), port=Port(random.Random(0), 0.0), monotonic=lambda: float(next(ticks))
    )
    d = modem.send("+923001111111", "NABZ test", "k", 0.0)
    assert d.ok and d.ref is None


def test_a_configuration_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    f = tmp_path / "nabz.toml"
    f.write_bytes(b'site = "d\xe9mo"\n')
    try:
        load(f, environ={})
    except ConfigError as exc:
        assert "cannot read" in str(exc)
    else:
        raise AssertionError("loaded a file that is not UTF-8")
    assert msgspec  # (imported for the decoders' error types above)


@pytest.mark.parametrize(
    "text",
    ['site = "de mo"', '[gateway]\nid = "gw+1"', '[enrolment]\n"ecg#1" = "p-0001"',
     '[enrolment]\n"ecg-0001" = "p/1"', '[[gateway.devices]]\nid = "ecg-0001/x"\naddress = "AA:BB:CC:DD:EE:FF"'],
)  # fmt: skip
def test_an_id_that_cannot_be_in_a_topic_is_refused_when_the_configuration_is_read(
    tmp_path: Path, text: str
) -> None:
    """A site, gateway, device or patient id goes into MQTT topics: '+', '#', '/' or a space
    there made every publish fail (the gateway crashed in a loop on its spooled rows)."""
    f = tmp_path / "nabz.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError, match="regex"):
        load(f, environ={})
