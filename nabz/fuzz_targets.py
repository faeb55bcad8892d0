"""The fuzz targets of `nabz bench fuzz` (runner and rules: nabz.fuzz): every parser that reads
bytes from outside the process.

| target | parser | fed |
|---|---|---|
| `ble` | gateway frame path: waveform header peek, gap tracker, `gateway.decode.Decoder` | mutated notifications of every characteristic |
| `ble_control` | firmware `control_decode` (writes from the gateway), gateway `control_notify_decode` | mutated control values |
| `serial` | `gateway.serial_protocol` LineReader and SerialLink, then the decoder | mutated byte streams of framed lines, in random chunks |
| `mqtt_reading` | `nabz.contract.decode_reading` and ingest's fast paths `ingest.decode` (one message, a batch) | mutated reading payloads and topics |
| `mqtt_server` | alerts: gateway status, vitals, nurse commands (through the engine); ingest's status tracker; the gateway's heartbeat watch | mutated payloads |
| `at` | `alerts.gsm`: response lines, +CDS, +CMGR, and a whole send/poll against a modem that answers mutated lines | mutated AT responses |
| `config` | `nabz.config.load` | mutated TOML files and environment overrides |
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from firmware import nabz_codec as codec
from nabz import contract
from nabz.contract import Rejected
from nabz.fuzz import Invariant, Target, bucket, mutate

__all__ = ["TARGETS", "targets"]

_T_US = 1_795_597_200_000_000  # 2026-11-25 09:00 UTC
_CHARS = {
    "ecg": codec.NABZ_ECG_WAVEFORM,
    "ppg": codec.NABZ_PPG_WAVEFORM,
    "hrm": "2a37",
    "plx_cont": "2a5f",
    "plx_spot": "2a5e",
    "battery": "2a19",
}
_OTHER_CHARS = ("2a38", codec.NABZ_CONTROL, "00002a37-0000-1000-8000-00805f9b34fb", "zz", "")


def _sfloat_value(rng: random.Random) -> float | None:
    return rng.choice([None, float("nan"), 97.5, 98.0, 72.0, 0.0, -3.2, 2047e5, float("inf")])


def _valid_notification(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(tuple(_CHARS))
    if kind in ("ecg", "ppg"):
        ecg = kind == "ecg"
        n = rng.randint(1, 113 if ecg else 37)
        if ecg:
            samples = [rng.randint(-32768, 32767) for _ in range(n)]
        else:
            samples = [rng.randint(0, 0xFFFFFF) for _ in range(2 * n)]
        flags = rng.choice([0, 0, 0, codec.WAVE_FLAG_RESENT, 1, 0x3F])
        seq = rng.choice([0, 1, 2, 3, 42, 0xFFFFFFFF, rng.getrandbits(32)])
        t0 = rng.choice([0, 1_234_567_000, rng.getrandbits(40), rng.getrandbits(64)])
        rate = rng.choice([250, 100, 1, 65535, rng.randint(1, 2000)])
        return _CHARS[kind], codec.wave_encode(
            codec.WAVE_KIND_ECG if ecg else codec.WAVE_KIND_PPG, flags, rate, seq, t0, samples
        )
    if kind == "hrm":
        rr = [rng.randint(0, 65535) for _ in range(rng.randint(0, 4))]
        return "2a37", codec.hrm_encode(
            rng.randint(0, 400), rng.choice([None, True, False]), rng.choice([None, 120]), rr
        )
    if kind == "plx_cont":
        return "2a5f", codec.plx_continuous_encode(
            _sfloat_value(rng), _sfloat_value(rng), rng.choice([None, 0x2000, 0xFFFF]),
            rng.choice([None, 0x800, 0xFFFFFF]), rng.choice([None, 1.9]),
            rng.choice([None, (97.0, 70.0)]), rng.choice([None, (96.0, 71.0)]),
        )  # fmt: skip
    if kind == "plx_spot":
        return "2a5e", codec.plx_spot_check_encode(
            _sfloat_value(rng), _sfloat_value(rng), rng.choice([None, (2026, 11, 25, 9, 0, 0)]),
            rng.choice([None, 0x80]), rng.choice([None, 0x10]), rng.choice([None, 2.5]),
            rng.choice([False, True]),
        )  # fmt: skip
    return "2a19", codec.battery_encode(rng.randint(0, 100))


# --- ble -----------------------------------------------------------------------------------------
class _BleState:
    def __init__(self) -> None:
        from gateway.decode import Decoder
        from gateway.gaps import GapTracker

        self.decoder = Decoder("fuzz", "gw-fuzz", new_id=contract.new_id)
        self.gaps = GapTracker(timeout_s=10.0)
        self.rx_us = _T_US


def _ble_case(rng: random.Random) -> tuple[str, str, bytes, int]:
    char, data = _valid_notification(rng)
    others = tuple(_valid_notification(rng)[1] for _ in range(2))
    if rng.random() < 0.8:
        data = mutate(rng, data, others)
    if rng.random() < 0.05:
        char = rng.choice(_OTHER_CHARS + tuple(_CHARS.values()))
    device = rng.choice(["ecg-0001", "oxi-0001", "ecg-0001"])
    return device, char, data, rng.choice([20_000, 450_000, 1_000_000, 0, 3_600_000_000])


def _ble_run(st: _BleState, case: tuple[str, str, bytes, int]) -> str:
    from gateway.decode import Notification
    from gateway.service import admit

    device, char, data, dt_us = case
    st.rx_us += dt_us
    note = Notification(device, char, data, st.rx_us)
    r, verdict = admit(st.decoder, st.gaps, note, st.rx_us / 1e6)
    st.gaps.expire(st.rx_us / 1e6)
    if r is None:
        return f"gap_tracker:{verdict.reason if verdict else ''}"
    if isinstance(r, Rejected):
        return f"{r.reason}:{bucket(r.detail)}"
    # What the gateway publishes must be what ingest accepts; a value outside its physical range
    # (a uint16 heart rate of 900) is ingest's to dead-letter, visibly: anything else is a bug.
    topic = contract.reading_topic("fuzz", "gw-fuzz", r.device, contract.stream_of(r))
    back = contract.decode_reading(topic, contract.encode(r))
    if isinstance(back, Rejected):
        if back.reason != "out_of_range":
            raise Invariant(f"gateway published what ingest refuses as {back.reason}: {back.detail}")
        return "ingest:out_of_range"
    return "accepted"


# --- ble_control ---------------------------------------------------------------------------------
def _control_case(rng: random.Random) -> tuple[bool, bytes]:
    to_device = rng.random() < 0.5
    if to_device:
        data = codec.control_resend_encode(rng.choice([1, 2]), rng.getrandbits(32), rng.getrandbits(32))
    elif rng.random() < 0.5:
        first = rng.getrandbits(31)
        data = codec.control_report_encode(rng.choice([1, 2]), first, first + 100, first + 10, 50)
    else:
        data = codec.control_status_encode(rng.randint(0, 3), rng.randint(0, 100))
    return to_device, mutate(rng, data) if rng.random() < 0.8 else data


def _control_run(_st: None, case: tuple[bool, bytes]) -> str:
    to_device, data = case
    try:
        (codec.control_decode if to_device else codec.control_notify_decode)(data)
    except ValueError as exc:  # the codec's one way of saying no
        return f"{'control' if to_device else 'notify'}:{bucket(str(exc))}"
    return "accepted"


# --- serial --------------------------------------------------------------------------------------
class _SerialState:
    def __init__(self) -> None:
        from gateway.decode import Decoder
        from gateway.serial_protocol import LineReader, SerialLink

        self.reader = LineReader()
        self.link = SerialLink()
        self.decoder = Decoder("fuzz", "gw-fuzz")
        self.now = 0.0


def _serial_case(rng: random.Random) -> list[bytes]:
    from gateway.serial_protocol import encode_notify, encode_replay, encode_replay_start, encode_write

    session = rng.choice(["3fa2c1d0", "0badcafe"])
    lines = []
    for k in range(rng.randint(1, 6)):
        pick = rng.random()
        if pick < 0.75:
            char, data = _valid_notification(rng)
            lines.append(encode_notify(session, rng.choice([k, k + 1, 0, 2**32 - 1]), "ecg-0001", char, data))
        elif pick < 0.85:
            lines.append(encode_replay_start(session, rng.randint(0, 5)))
        elif pick < 0.93:
            lines.append(encode_replay(session, rng.randint(0, 5)))
        else:
            lines.append(encode_write("ecg-0001", codec.NABZ_CONTROL, codec.control_resend_encode(1, 1, 2)))
    stream = b"".join(lines)
    if rng.random() < 0.8:
        stream = mutate(rng, stream, tuple(lines), max_ops=6)
    if rng.random() < 0.03:
        stream += rng.randbytes(rng.randint(1000, 3000))  # a line longer than the limit
    cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(0, 4)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def _serial_run(st: _SerialState, chunks: list[bytes]) -> str:
    from gateway.decode import Notification
    from gateway.serial_protocol import MAX_LINE, BadLine, Notify, ReplayStart

    outcomes = []
    for chunk in chunks:
        for frame in st.reader.feed(chunk):
            st.now += 0.5
            if isinstance(frame, BadLine):
                outcomes.append(f"bad_line:{frame.reason}")
            elif isinstance(frame, ReplayStart):
                st.link.on_replay_start(frame)
                outcomes.append("replay_start")
            elif isinstance(frame, Notify):
                decision = st.link.on_notify(frame, st.now)
                if not decision.accept:
                    outcomes.append(f"link:{decision.note}")
                    continue
                r = st.decoder.decode(Notification(frame.device, frame.char, frame.data, _T_US))
                outcomes.append(f"{r.reason}" if isinstance(r, Rejected) else "accepted")
            else:
                outcomes.append("command")
        if len(st.reader._buf) > MAX_LINE:
            raise Invariant(f"the line reader holds {len(st.reader._buf)} bytes, limit {MAX_LINE}")
    if not outcomes:
        return "no_complete_line"
    bad = [o for o in outcomes if o != "accepted"]
    return bad[0] if bad else "accepted"


# --- mqtt_reading --------------------------------------------------------------------------------
def _reading_payload(rng: random.Random) -> tuple[str, dict[str, Any]]:
    from gateway.decode import Decoder, Notification

    dec = Decoder("demo", "gw-0001")
    while True:
        char, data = _valid_notification(rng)
        r = dec.decode(Notification(rng.choice(["ecg-0001", "oxi-0001"]), char, data, _T_US))
        if not isinstance(r, Rejected):
            topic = contract.reading_topic("demo", "gw-0001", r.device, contract.stream_of(r))
            return topic, contract.as_dict(r)


_JSON_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**63, -(2**64), 1e308, -0.0, 0.5, 401, "", "x", "2026-11-25T09:00:00",
    "2026-11-25T09:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", [], [1], ["resent", "resent"],
    {}, {"v": 1}, "ecg", "p-0001", "a/b", "+", "#", "é", "\u0000",
)  # fmt: skip


def _mqtt_case(rng: random.Random) -> tuple[str, bytes]:
    topic, body = _reading_payload(rng)
    if rng.random() < 0.6:  # structure-aware: change fields
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            key = rng.choice(sorted(body)) if body else "v"
            if op < 0.5:
                body[key] = rng.choice(_JSON_VALUES)
            elif op < 0.7:
                body.pop(key, None)
            elif op < 0.8:
                body[rng.choice(["extra", "stream", "V", "id "])] = rng.choice(_JSON_VALUES)
            elif isinstance(body.get(key), list) and body[key]:
                body[key] = body[key] * rng.randint(2, 40)  # longer lists, mismatched lengths
            else:
                body[key] = rng.choice(_JSON_VALUES)
    payload = json.dumps(body).encode()
    if rng.random() < 0.4:
        payload = mutate(rng, payload)
    if rng.random() < 0.1:
        parts = topic.split("/")
        parts[rng.randrange(len(parts))] = rng.choice(["", "+", "#", "x" * 70, "gw", "status", "ecg"])
        topic = "/".join(parts)
    return topic, payload


def _mqtt_run(_st: None, case: tuple[str, bytes]) -> str:
    import msgspec
    import numpy as np

    from ingest.decode import decode_many
    from ingest.decode import decode_reading as fast

    topic, payload = case
    slow = contract.decode_reading(topic, payload)
    batched = decode_many([case])[0]  # what the pipeline calls: samples as arrays
    if not isinstance(batched, Rejected) and not isinstance(slow, Rejected):  # as the contract's type
        fields = msgspec.structs.asdict(batched)
        for name in ("signal_uv", "red_counts", "ir_counts"):
            a = fields.get(name)
            if name in fields and not (
                isinstance(a, np.ndarray) and a.dtype == np.int64 and not a.flags.writeable
            ):
                raise Invariant(
                    f"ingest's batch path gave {name} as {type(a).__name__}, not a read-only int64 array"
                )
        batched = type(slow)(**{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()})
    for name, quick in (("fast path", fast(topic, payload)), ("batch path", batched)):
        if isinstance(slow, Rejected) != isinstance(quick, Rejected):
            raise Invariant(f"contract says {slow!r:.150}, ingest's {name} says {quick!r:.150}")
        if isinstance(slow, Rejected):
            assert isinstance(quick, Rejected)
            if slow.reason != quick.reason:
                raise Invariant(f"reasons differ: contract {slow.reason}, {name} {quick.reason}")
        elif slow != quick:
            raise Invariant(f"the contract and ingest's {name} decoded different readings")
    return slow.reason if isinstance(slow, Rejected) else "accepted"


# --- mqtt_server ---------------------------------------------------------------------------------
class _ServerState:
    def __init__(self) -> None:
        from alerts.notify import OutboxNotifier
        from alerts.service import AlertService
        from alerts.store import AlertStore
        from nabz.config import Config

        self.dir = Path(tempfile.mkdtemp(prefix="nabz-fuzz-"))
        self.config = Config(site="demo", enrolment={"ecg-0001": "p-0001", "oxi-0001": "p-0001"})
        self.store = AlertStore(self.dir / "alerts.sqlite")
        # The service as it runs, minus its MQTT connection and threads: `_handle` is what its
        # worker thread calls for each message.
        self.service = AlertService(
            self.config, notifiers=[OutboxNotifier(self.dir / "sms.jsonl")], store=self.store
        )
        self.now = _T_US / 1e6
        self.watchers: list[Any] = _server_watchers()

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _server_watchers() -> list[Any]:
    """Other consumers of server-side messages (ingest's gateway-status tracker, the gateway's
    heartbeat watch), each with `feed(topic, payload, now) -> str`."""
    out: list[Any] = []
    try:
        from ingest.opsstats import GatewayStatuses

        out.append(GatewayStatuses())
    except ImportError:  # pragma: no cover - older trees
        pass
    try:
        from gateway.deadman import HeartbeatWatch

        out.append(HeartbeatWatch(("ingest", "alerts"), after_s=600.0))
    except ImportError:  # pragma: no cover
        pass
    return out


def _server_seeds() -> list[tuple[str, dict[str, Any]]]:
    t = "2026-11-25T09:00:00Z"
    return [
        ("nabz/v1/demo/vitals", {"v": 1, "id": "6e7f8a9b0c1d4240", "site": "demo", "vitals": [
         {"v": 1, "id": "6e7f8a9b0c1d4243", "site": "demo", "patient": "p-0001", "device": "oxi-0001",
          "t": t, "source": "device", "spo2_pct": 84.0, "pr_bpm": 72.0},
         {"v": 1, "id": "6e7f8a9b0c1d4244", "site": "demo", "patient": "p-0001", "device": "ecg-0001",
          "t": t, "source": "ecg", "hr_bpm": 170.0, "sqi": 0.9, "pause_s": 6.0, "flags": ["leads_off"]}]}),
        ("nabz/v1/demo/gw/gw-0001/status", {"v": 1, "site": "demo", "gateway": "gw-0001", "state": "online",
         "t": t, "spool_depth": 12, "devices": ["ecg-0001", "oxi-0001"], "health": [{"device": "oxi-0001",
         "state": "lost", "gap_frames": 40}]}),
        ("nabz/v1/demo/gw/gw-0001/status", {"v": 1, "site": "demo", "gateway": "gw-0001", "state": "offline",
         "reason": "connection lost (last will)"}),
        ("nabz/v1/demo/alerts/command", {"v": 1, "id": "cmd-1", "action": "ack", "code": "4821", "by": "x"}),
        ("nabz/v1/demo/alerts/command", {"v": 1, "id": "cmd-2", "action": "silence", "by": "x",
         "patient": "p-0001", "kind": "*", "duration_s": 600}),
        ("nabz/v1/demo/server/ingest-0/heartbeat", {"v": 1, "site": "demo", "service": "ingest",
         "instance": "nabz-ingest", "t": t, "interval_s": 10.0}),
    ]  # fmt: skip


def _server_case(rng: random.Random) -> tuple[str, bytes]:
    topic, body = rng.choice(_server_seeds())
    body = dict(body)
    for _ in range(rng.randint(0, 3)):
        key = rng.choice(sorted(body))
        body[key] = rng.choice(_JSON_VALUES) if rng.random() < 0.8 else body.pop(key, None)
    payload = json.dumps(body).encode()
    return topic, mutate(rng, payload) if rng.random() < 0.3 else payload


def _server_run(st: _ServerState, case: tuple[str, bytes]) -> str:
    topic, payload = case
    st.now += 7.0
    outcomes = [w.feed(topic, payload, st.now) for w in st.watchers]
    if "/server/" in topic:
        return outcomes[-1] if outcomes else "heartbeat"
    svc = st.service
    bad = svc.bad_messages
    svc._handle(topic, payload, st.now)
    svc.engine.tick(st.now)
    svc.dispatcher.step(st.now)
    return "accepted" if svc.bad_messages == bad else "alerts:malformed"


# --- at ------------------------------------------------------------------------------------------
class _FakePort:
    """A modem that answers each command with its usual reply, mutated by the case."""

    def __init__(self, rng: random.Random, mutate_p: float) -> None:
        self.rng = rng
        self.mutate_p = mutate_p
        self.out = bytearray()
        self.in_waiting = 0

    def _reply(self, cmd: bytes) -> bytes:
        c = cmd.strip().upper()
        if c.startswith(b"AT+CPIN?"):
            r = b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
        elif c.startswith(b"AT+CMGS"):
            r = b"\r\n> "
        elif c.endswith(b"\x1a"):
            r = b'\r\n+CMGS: 17\r\n\r\nOK\r\n\r\n+CDS: 6,17,"+923001111111",145,"26/11/25,14:00:00+20","26/11/25,14:00:04+20",0\r\n'
            r += b'\r\n+CMTI: "SM",3\r\n'
        elif c.startswith(b"AT+CMGR"):
            r = b'\r\n+CMGR: "REC UNREAD","+923001111111",,"26/11/25,14:00:10+20"\r\nACK 4821\r\n\r\nOK\r\n'
        else:
            r = b"\r\nOK\r\n"
        if self.rng.random() < self.mutate_p:
            r = mutate(self.rng, r, (b"\r\n+CMS ERROR: 331\r\n", b"\r\nERROR\r\n", b"\r\n+CME ERROR: 10\r\n"))
        return r

    def write(self, data: bytes) -> int:
        self.out += self._reply(bytes(data))
        self.in_waiting = len(self.out)
        return len(data)

    def read(self, n: int) -> bytes:
        data, self.out = bytes(self.out[:n]), self.out[n:]
        self.in_waiting = len(self.out)
        return data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _at_case(rng: random.Random) -> tuple[int, str, float]:
    return rng.getrandbits(32), rng.choice(["NABZ HIGH p-0002: SpO2 84%", "آکسیجن کم 84%"]), rng.random()


def _at_run(_st: None, case: tuple[int, str, float]) -> str:
    from alerts.gsm import GsmNotifier, classify, parse_cds, parse_cmgr
    from alerts.notify import Delivery
    from nabz.config import ModemConfig

    seed, text, mutate_p = case
    rng = random.Random(seed)
    line = mutate(rng, b'+CDS: 6,17,"+923001111111",145,"26/11/25,14:00:00+20","26/11/25",0').decode(
        "latin-1"
    )
    classify(line)
    parse_cds(line)
    parse_cmgr([line, "ACK 1"], ucs2=rng.random() < 0.5)
    ticks = iter(range(10**9))  # each look at the clock is a second later: time limits without waiting
    modem = GsmNotifier(
        ModemConfig(port="fuzz", command_timeout_s=3.0, send_timeout_s=5.0, sim_pin="1234"),
        port=_FakePort(rng, mutate_p),
        monotonic=lambda: float(next(ticks)),
    )
    d = modem.send("+923001111111", text, "k", 0.0)
    if not isinstance(d, Delivery):
        raise Invariant(f"send returned {d!r}")
    polled = modem.poll(1.0)
    if not isinstance(polled, list):
        raise Invariant(f"poll returned {polled!r}")
    if d.ok:
        return "accepted"
    return f"{'retryable' if d.retryable else 'final'}:{bucket(d.detail, 48)}"


# --- config --------------------------------------------------------------------------------------
_CONFIG_SEED = """site = "lahore-north"

[mqtt]
url = "mqtts://broker.example:8883"
username = "gw-0001"
password = "s3cret-fuzz-password"
ca_file = "/etc/nabz/ca.pem"
protocol = "5"

[gateway]
id = "gw-0001"
spool_max_mb = 512
[[gateway.devices]]
id = "ecg-0001"
address = "C4:DE:E2:11:22:33"

[ingest]
workers = 2
spo2_calibration = [[0.4, 100.0], [0.7, 95.0], [1.0, 88.0]]

[influx]
url = "http://127.0.0.1:8086"
token = "s3cret-fuzz-token"

[alerts]
spo2_low_pct = 92.0
notifiers = ["gsm", "outbox"]
[alerts.patients."p-0002"]
spo2_target_pct = [88, 92]

[oncall.people]
aisha = { phone = "+923001234567" }
[[oncall.rotations]]
members = ["aisha"]
start = "2026-11-02T08:00"

[modem]
port = "/dev/ttyUSB2"
sim_pin = "1234"

[enrolment]
"ecg-0001" = "p-0001"
"""
_SECRETS = ("s3cret-fuzz-password", "s3cret-fuzz-token")
_TOML_VALUES = ("1", "-1", "true", '""', "[]", "{}", "1e999", "nan", '"x"', "[[1]]", '"0001"')


class _ConfigState:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nabz-fuzz-config-"))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _config_case(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    lines = _CONFIG_SEED.splitlines()
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(lines))
        op = rng.random()
        if op < 0.3:
            del lines[i]
        elif op < 0.5:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op < 0.8 and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {rng.choice(_TOML_VALUES)}"
    text = ("\n".join(lines) + "\n").encode()
    if rng.random() < 0.5:
        text = mutate(rng, text, max_ops=3)
    env: dict[str, str] = {}
    if rng.random() < 0.3:
        name = rng.choice(["NABZ_MQTT__URL", "NABZ_ALERTS__SPO2_LOW_PCT", "NABZ_SITE", "NABZ_MQTT",
                           "NABZ_MQTT__PORT__X", "NABZ_", "NABZ___", "NABZ_MODEM__SIM_PIN"])  # fmt: skip
        env[name] = rng.choice(["88", "x", "[1,", "true", "mqtt://h:1", "{a=1}", "0001234", ""])
    return text, env


def _config_run(st: _ConfigState, case: tuple[bytes, dict[str, str]]) -> str:
    from nabz.config import ConfigError, load, redacted

    text, env = case
    path = st.dir / "nabz.toml"
    path.write_bytes(text)
    path.chmod(0o600)  # it holds secrets: anything looser is refused before parsing
    try:
        cfg = load(path, environ=env)
    except ConfigError as exc:
        return f"config_error:{bucket(str(exc).split(': ', 1)[-1], 40)}"
    shown = json.dumps(redacted(cfg))
    leaked = [s for s in _SECRETS if s in shown]
    if leaked:
        raise Invariant(f"redacted configuration shows a secret ({len(leaked)})")
    return "accepted"


def _hex(case: Any) -> str:
    return repr(case)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("ble", "gateway frame path: header peek, gap tracker, BLE decoder", _ble_case, _ble_run,
               _BleState, describe=_hex),
        Target("ble_control", "control characteristic: firmware and gateway sides", _control_case, _control_run),
        Target("serial", "serial line protocol: line reader, link, decoder", _serial_case, _serial_run,
               _SerialState),
        Target("mqtt_reading", "reading payloads: contract and ingest's fast paths agree", _mqtt_case, _mqtt_run),
        Target("mqtt_server", "alerts engine inputs, gateway status, heartbeats", _server_case, _server_run,
               _ServerState, lambda s: s.close()),
        Target("at", "GSM modem responses (TS 27.005 text mode)", _at_case, _at_run),
        Target("config", "configuration files and environment overrides", _config_case, _config_run,
               _ConfigState, lambda s: s.close()),
    )
}  # fmt: skip


def targets(names: list[str] | None = None) -> list[Target]:
    if not names:
        return list(TARGETS.values())
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown fuzz target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in names]
