"""nabz.mqtt.Client reads the socket in 64 KiB gulps and parses everything that has arrived per
wakeup: messages of any size, split anywhere across reads, arrive whole, in order, and at once
(nothing left parsed-but-unread behind select() until the next keepalive), also after the
broker restarts."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from nabz.config import MqttConfig
from nabz.mqtt import RECEIVE_MAXIMUM, connect, make_client
from tests.servers import Mosquitto

TOPIC = "nabz/v1/test/reads"


class Subscriber:
    def __init__(self, url: str, protocol: str) -> None:
        self.got: list[bytes] = []
        self.subscribed = threading.Event()
        config = MqttConfig(url=url, protocol=protocol, keepalive_s=30)  # type: ignore[arg-type]
        self.client = make_client(config, "reads-sub")
        self.client.on_connect = lambda c, *_a: c.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.got.append(bytes(m.payload))
        connect(self.client, config)

    def wait(self, n: int, timeout_s: float) -> float:
        t0 = time.monotonic()
        while len(self.got) < n and time.monotonic() - t0 < timeout_s:
            time.sleep(0.01)
        return time.monotonic() - t0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(port: int, payloads: list[bytes]) -> None:
    pub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="reads-pub", protocol=MQTTProtocolVersion.MQTTv311
    )
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(TOPIC, p, qos=1) for p in payloads]
    for i in infos:
        i.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def _payloads(seed: int) -> list[bytes]:
    # small messages (many per 64 KiB read), with large ones (several reads each) in between, and
    # lengths around the varint boundaries of MQTT's remaining length (127/128, 16383/16384)
    sizes: list[int] = []
    for i in range(3000):
        sizes.append(i % 300 + 1)
        if i % 500 == 250:
            sizes += [127, 128, 16383, 16384, 200_000]
    return [f"{seed}:{k}:".encode() + bytes([k % 251]) * n for k, n in enumerate(sizes)]


def test_a_burst_of_any_sizes_arrives_whole_in_order_and_at_once(mosquitto: Mosquitto) -> None:
    for protocol in ("5", "3.1.1"):
        sub = Subscriber(mosquitto.url, protocol)
        try:
            assert sub.subscribed.wait(10)
            payloads = _payloads(1)
            _publish(mosquitto.port, payloads)
            # The publisher is done: with bytes stranded in the buffer the last messages would
            # wait for the next keepalive (30 s), long past this.
            assert sub.wait(len(payloads), timeout_s=10) < 10, (
                f"{len(sub.got)} of {len(payloads)} ({protocol})"
            )
            assert sub.got == payloads
        finally:
            sub.close()


def test_reading_starts_clean_on_a_new_connection(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto.url, "5")
    try:
        assert sub.subscribed.wait(10)
        first = _payloads(2)[:400]
        _publish(mosquitto.port, first)
        sub.wait(len(first), timeout_s=10)
        sub.subscribed.clear()
        mosquitto.restart()
        assert sub.subscribed.wait(30), "did not resubscribe after the broker came back"
        second = _payloads(3)[:400]
        _publish(mosquitto.port, second)
        sub.wait(len(first) + len(second), timeout_s=10)
        assert sub.got == first + second
    finally:
        sub.close()


def test_what_a_message_says_survives_the_fast_decoding(mosquitto: Mosquitto) -> None:
    """QoS 0, 1 and 2, retained or not, with and without v5 properties: the subscriber sees each
    message's topic, payload, QoS, retain flag and properties as published (QoS 2 and messages
    with properties go through paho's own decoder, the rest through `Client._handle_publish`)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    pub = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="fields-pub", protocol=MQTTProtocolVersion.MQTTv5
    )
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish(TOPIC + "/kept", b"retained", qos=1, retain=True).wait_for_publish(10)

    got: list[tuple[str, bytes, int, bool, bool, list[tuple[str, str]]]] = []
    config = MqttConfig(url=mosquitto.url, protocol="5", keepalive_s=30)
    sub = make_client(config, "fields-sub")
    subscribed = threading.Event()
    sub.on_connect = lambda c, *_a: c.subscribe(TOPIC + "/#", qos=2)
    sub.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
        user = list(getattr(m.properties, "UserProperty", []) or []) if m.properties else []
        got.append((m.topic, bytes(m.payload), m.qos, m.retain, m.qos == 0 or m.mid > 0, user))

    sub.on_message = on_message
    connect(sub, config)
    try:
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("patient", "p-0001")
        for qos in (0, 1, 2):
            pub.publish(f"{TOPIC}/q{qos}", f"plain {qos}".encode(), qos=qos).wait_for_publish(10)
            pub.publish(
                f"{TOPIC}/p{qos}", f"props {qos}".encode(), qos=qos, properties=props
            ).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while len(got) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got[0] == (TOPIC + "/kept", b"retained", 1, True, True, [])
        rest = sorted(got[1:])
        assert rest == sorted(
            [(f"{TOPIC}/q{q}", f"plain {q}".encode(), q, False, True, []) for q in (0, 1, 2)]
            + [
                (f"{TOPIC}/p{q}", f"props {q}".encode(), q, False, True, [("patient", "p-0001")])
                for q in (0, 1, 2)
            ]
        )
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.publish(TOPIC + "/kept", b"", qos=1, retain=True).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()


def test_acknowledged_in_one_write_is_acknowledged(mosquitto: Mosquitto) -> None:
    """`Client.ack_many`: of 400 QoS 1 messages on a persistent session, the 300 acknowledged in
    batches are not delivered again after a reconnect; the 100 never acknowledged are."""
    config = MqttConfig(url=mosquitto.url, protocol="5", keepalive_s=30)
    got: list[tuple[int, bytes]] = []
    subscribed = threading.Event()

    def start() -> paho.Client:
        c = make_client(config, "acks-sub", persistent_session=True, manual_ack=True, max_inflight=1000)
        c.on_connect = lambda c, *_a: c.subscribe(TOPIC, qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = lambda _c, _u, m: got.append((m.mid, bytes(m.payload)))
        connect(c, config, persistent_session=True)
        return c

    sub = start()
    try:
        assert subscribed.wait(10)
        payloads = [f"m{i}".encode() for i in range(400)]
        _publish(mosquitto.port, payloads)
        deadline = time.monotonic() + 10
        while len(got) < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p for _m, p in got] == payloads
        mids = [m for m, _p in got]
        for i in range(0, 300, 64):
            sub.ack_many(mids[i : min(i + 64, 300)])
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        got.clear()
        subscribed.clear()
        sub = start()
        deadline = time.monotonic() + 5
        while len(got) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # and nothing more
        assert sorted(p for _m, p in got) == sorted(payloads[300:])
    finally:
        sub.disconnect()
        sub.loop_stop()


def _stream(seed: int, v5: bool = True) -> bytes:
    """A broker's side of a connection: PUBLISH packets of QoS 0, 1 and 2, retained or not, with
    and without v5 properties (a user property, or a message expiry alone), of lengths around the remaining length's varint boundaries, with
    PUBRELs (QoS 2), PUBACKs and PINGRESPs between them."""
    import random

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def varlen(n: int) -> bytes:
        out = bytearray()
        while True:
            n, b = divmod(n, 128)
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("patient", "p-0001")
    with_props = props.pack()
    rng = random.Random(seed)
    expiry_rng = random.Random(seed + 1000)
    out = bytearray()
    for k in range(600):
        qos, retain = rng.choice((0, 1, 1, 1, 2)), rng.random() < 0.1
        topic = f"nabz/v1/demo/gw-{k % 7}/ecg-{k % 5}/ecg".encode()
        var = len(topic).to_bytes(2, "big") + topic + ((k % 65535) + 1).to_bytes(2, "big")[: 2 if qos else 0]
        if v5:
            var += with_props if rng.random() < 0.1 else b"\x00"
            if var[-1] == 0 and expiry_rng.random() < 0.3:  # a reading's message expiry only
                var = var[:-1] + b"\x05\x02" + expiry_rng.randrange(1 << 32).to_bytes(4, "big")
        length = rng.choice(
            (0, 1, 127, 128, 129, 400, 16383, 16384, 16385, 70_000)
        )  # of all after the length
        body = var + bytes([k % 251]) * max(0, length - len(var))
        out += bytes([0x30 | qos << 1 | retain]) + varlen(len(body)) + body
        if qos == 2:  # delivered once released
            out += b"\x62\x02" + ((k % 65535) + 1).to_bytes(2, "big")
        if rng.random() < 0.05:
            out += b"\x40\x02" + rng.randrange(1, 65536).to_bytes(2, "big")  # a PUBACK
        if rng.random() < 0.05:
            out += b"\xd0\x00"  # a PINGRESP
    return bytes(out)


def _decoded(
    client: paho.Client, stream: bytes, seed: int, *, stop_after: int | None = None
) -> tuple[list[tuple[object, ...]], bytes]:
    """What `client` delivers of `stream`, fed to it over a socket pair in random pieces, and
    what it sends back (acknowledgements). With `stop_after`, the callback disconnects after
    that many messages."""
    import random
    import socket

    from paho.mqtt.enums import _ConnectionState

    got: list[tuple[object, ...]] = []
    sent = bytearray()

    def on_message(c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        user = list(getattr(m.properties, "UserProperty", []) or []) if m.properties else []
        expiry = getattr(m.properties, "MessageExpiryInterval", None)
        got.append((m.topic, bytes(m.payload), m.qos, m.mid, m.retain, m.dup, user, expiry))
        if len(got) == stop_after:
            c.disconnect()

    def drain(sock: socket.socket) -> None:
        try:
            while chunk := sock.recv(1 << 20):
                sent.extend(chunk)
        except (BlockingIOError, ConnectionResetError):  # nothing more yet; the client closed
            pass

    client.on_message = on_message
    ours, broker = socket.socketpair()
    with ours, broker:
        ours.setblocking(False)
        broker.setblocking(False)
        client._sock = ours  # type: ignore[assignment]
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        rng, at = random.Random(seed), 0
        while at < len(stream) and client._sock is not None:
            try:
                at += broker.send(stream[at : at + rng.choice((1, 2, 3, 50, 1000, 40_000, 200_000))])
            except BlockingIOError:
                pass  # the pair's buffer is full: the client reads first
            client.loop_read()
            if rng.random() < 0.2:
                client.loop_read()  # nothing new: must not lose or repeat anything
            drain(broker)
        while client._sock is not None:  # paho's own reader takes a packet or so per call
            before = len(got)
            for _ in range(50):
                client.loop_read()
            if len(got) == before:
                break
        drain(broker)
        client._sock = None
    return got, bytes(sent)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize(
    ("seed", "manual_ack", "stop_after"), [(1, False, None), (2, True, None), (3, False, 40), (4, False, 41)]
)
def test_messages_split_from_the_read_buffer_are_those_paho_decodes(
    protocol: str, seed: int, manual_ack: bool, stop_after: int | None
) -> None:
    """`Client` decodes whole PUBLISH packets straight from its read buffer: over a stream of
    every kind of packet, cut into pieces anywhere, it delivers exactly what paho's own reader
    does, in the same order, and sends the same acknowledgements (none of QoS 1 when the caller
    acknowledges); a callback that disconnects ends the delivery there, as with paho."""
    from nabz.mqtt import Backoff, Client

    class Counting(Client):
        slow = 0  # PUBLISH packets that went through paho's reader

        def _handle_publish(self) -> MQTTErrorCode:
            self.slow += 1
            return super()._handle_publish()

    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    stream = _stream(seed, v5=protocol == "5")
    stock = paho.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=version, manual_ack=manual_ack)
    want, want_sent = _decoded(stock, stream, seed, stop_after=stop_after)
    ours = Counting(
        CallbackAPIVersion.VERSION2,
        client_id="x",
        protocol=version,
        manual_ack=manual_ack,
        backoff=Backoff(1, 2),
    )
    got, got_sent = _decoded(ours, stream, seed, stop_after=stop_after)
    # all 600; or, disconnected from the callback, up to the acknowledgement that sends it
    assert len(want) == 600 if stop_after is None else stop_after <= len(want) < 600
    assert got == want and got_sent == want_sent
    assert (b"\x40\x02" in want_sent) is not manual_ack  # QoS 1 acknowledged by the client
    # the fast way was taken: by most of the 600, by some of the first forty or so
    assert ours.slow < (len(want) / 2 if stop_after is None else len(want))


def test_a_persistent_session_takes_a_backlog_a_window_at_a_time(mosquitto: Mosquitto) -> None:
    """After an outage the broker holds thousands of messages for ingest: it hands over at most
    RECEIVE_MAXIMUM unacknowledged at once (the protocol's default lets it push 65,535 into the
    service's memory), and the rest as they are acknowledged."""
    config = MqttConfig(url=mosquitto.url, protocol="5", keepalive_s=30)
    got: list[int] = []
    subscribed = threading.Event()
    c = make_client(config, "window-sub", persistent_session=True, manual_ack=True, max_inflight=1000)
    c.on_connect = lambda c, *_a: c.subscribe(TOPIC, qos=1)
    c.on_subscribe = lambda *_a: subscribed.set()
    c.on_message = lambda _c, _u, m: got.append(m.mid)
    connect(c, config, persistent_session=True)
    try:
        assert subscribed.wait(10)
        n = RECEIVE_MAXIMUM + 1500
        _publish(mosquitto.port, [b"x%d" % i for i in range(n)])
        deadline = time.monotonic() + 10
        while len(got) < RECEIVE_MAXIMUM and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # and no more until some are acknowledged
        assert len(got) == RECEIVE_MAXIMUM
        c.ack_many(got[:2000])
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) == n
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_reading_says_how_long_it_waited_in_the_brokers_queue(mosquitto: Mosquitto) -> None:
    """Every reading a gateway publishes (MQTT v5) carries READING_PROPERTIES: mosquitto counts
    its message expiry down while the reading waits in a queue, so the subscriber reads the wait
    (`queued_s`, in the whole seconds the broker counts): 2 or 3 s for one kept 2.2 s for a
    persistent session that was away, 0 or 1 for one delivered at once, 0 for one published
    without them (an MQTT 3.1.1 gateway)."""
    from nabz.mqtt import READING_PROPERTIES, queued_s

    config = MqttConfig(url=mosquitto.url, protocol="5", keepalive_s=30)
    got: dict[bytes, float] = {}
    subscribed = threading.Event()

    def start() -> paho.Client:
        c = make_client(config, "clock-sub", persistent_session=True)
        c.on_connect = lambda c, *_a: c.subscribe(TOPIC, qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = lambda _c, _u, m: got.__setitem__(bytes(m.payload), queued_s(m))
        connect(c, config, persistent_session=True)
        assert subscribed.wait(10)
        return c

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="clock-pub", protocol=MQTTProtocolVersion.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    sub = start()
    try:
        pub.publish(TOPIC, b"at once", qos=1, properties=READING_PROPERTIES).wait_for_publish(10)
        wait_for(1)
        sub.disconnect()
        sub.loop_stop()
        published = time.monotonic()
        pub.publish(TOPIC, b"kept", qos=1, properties=READING_PROPERTIES).wait_for_publish(10)
        pub.publish(TOPIC, b"kept, no clock", qos=1).wait_for_publish(10)
        time.sleep(2.2)
        subscribed.clear()
        sub = start()
        wait_for(3)
        waited = time.monotonic() - published  # at most
        assert got[b"at once"] in (0.0, 1.0)
        assert 2.0 <= got[b"kept"] <= waited + 1.0, (got, waited)
        assert got[b"kept, no clock"] == 0.0
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.disconnect()
        pub.loop_stop()


def test_a_wait_the_queue_clock_cannot_have_given_is_taken_as_unknown() -> None:
    """A message published with some other expiry (a minute, say) would read as waiting most of a
    year, and hold every gateway of the site: a wait over a day counts as unknown (0)."""
    from nabz.contract import QUEUE_CLOCK_S
    from nabz.mqtt import queued_s

    def waited(left: int | None) -> float:
        m = paho.MQTTMessage()
        if left is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            m.properties = Properties(PacketTypes.PUBLISH)
            m.properties.MessageExpiryInterval = left
        return queued_s(m)

    assert waited(QUEUE_CLOCK_S - 7) == 7.0
    assert waited(QUEUE_CLOCK_S - 86400) == 86400.0
    assert waited(QUEUE_CLOCK_S - 86401) == 0.0
    assert waited(60) == 0.0
    assert waited(QUEUE_CLOCK_S + 5) == 0.0
    assert waited(None) == 0.0
