"""The one place that knows paho-mqtt: a client built from configuration, and our exception.

Reconnection runs on paho's network thread (`loop_start`), forever, with our policy: exponential
backoff from `reconnect_min_s` to `reconnect_max_s` with jitter (`Backoff`), so that a hundred
gateways cut off by the same outage do not reconnect in lock-step when it ends. What to resend
after a reconnect is each caller's policy (the gateway's spool, the ingest's persistent session).
Callbacks run on paho's network thread: callers only hand events to their own thread from there.
"""

from __future__ import annotations

import logging
import random
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from nabz.config import MqttConfig
from nabz.contract import QUEUE_CLOCK_S, QUEUE_WAIT_MAX_S

__all__ = [
    "MqttError", "Will", "Backoff", "Client", "make_client", "connect", "reason_ok", "READING_PROPERTIES",
    "queued_s",
]  # fmt: skip

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024  # bytes asked of the socket at once
_PUBACK_HEAD = (PacketTypes.PUBACK << 4 << 24) | (2 << 16)  # a PUBACK of remaining length 2, as 4 bytes

# A persistent session outlives a restart of its client by this long (MQTT v5 session expiry).
SESSION_EXPIRY_S = 7 * 24 * 3600
# A persistent session's services (ingest, alerts) take at most this many unacknowledged QoS 1
# messages at once (MQTT v5 Receive Maximum; the protocol's default is 65,535): after an outage
# the broker hands over its queue this much at a time instead of into the service's memory.
# (mosquitto 2.0.11 keeps to it only until the first acknowledgement: docs/operations.md.)
RECEIVE_MAXIMUM = 4096


class _ReadingProperties(Properties):
    """The MQTT v5 properties of every reading a gateway publishes: its Message Expiry Interval,
    `contract.QUEUE_CLOCK_S`, for ingest to read how long the reading waited in the broker's queue
    (`queued_s`). Packed once: paho packs a message's properties at every publish."""

    _packed: bytes

    def __init__(self) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.MessageExpiryInterval = QUEUE_CLOCK_S
        packed = super().pack()  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)  # (Properties' own setter takes only property names)

    def pack(self) -> bytes:
        return self._packed


READING_PROPERTIES = _ReadingProperties()
# The properties block of READING_PROPERTIES as it comes to a subscriber, but for the value:
# length 5, then identifier 2 (Message Expiry Interval) and four bytes.
_EXPIRY_ONLY = b"\x05\x02"


class _Expiry:
    """A message's properties when they are only a Message Expiry Interval (the readings'), decoded
    on the fast path (`Client._plain_publish`) without building paho's `Properties`."""

    __slots__ = ("MessageExpiryInterval",)

    def __init__(self, left: int) -> None:
        self.MessageExpiryInterval = left


def queued_s(message: paho.MQTTMessage) -> float:
    """How long a reading waited in the broker's queue, in whole seconds as the broker counts them
    (the message expiry it was published with, `contract.QUEUE_CLOCK_S`, less what the broker
    forwards); 0 for a message published without it (an MQTT 3.1.1 or older gateway) or with
    some other expiry (a wait over `QUEUE_WAIT_MAX_S`: one bad publisher must not make every
    gateway of the site hold its readings)."""
    left = getattr(message.properties, "MessageExpiryInterval", None)
    if not isinstance(left, int) or not 0 <= QUEUE_CLOCK_S - left <= QUEUE_WAIT_MAX_S:
        return 0.0
    return float(QUEUE_CLOCK_S - left)


class MqttError(Exception):
    """The broker could not be reached or refused us; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": after the n-th failure in a row, wait a uniformly
    random time in [d/2, d], where d = min(max_s, min_s * 2**(n-1)). Pure; `rand` is injected."""

    min_s: float
    max_s: float
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, failures: int) -> float:
        base = min(self.max_s, self.min_s * 2.0 ** min(max(failures, 1) - 1, 40))
        return base / 2 + self.rand() * base / 2


class Client(paho.Client):
    """paho's client with our reconnect wait (`Backoff`), buffered socket reads, one-pass decoding
    of plain PUBLISH packets, a direct path to `on_message` and batched PUBACKs (`ack_many`), all
    below; the protocol is paho's.

    paho calls `_reconnect_wait` between attempts on its network thread and resets
    `_reconnect_delay` to None on every successful CONNACK, which restarts our count.
    `reconnect_waits` keeps the latest waits (seconds) for status and tests.
    """

    def __init__(self, *args: Any, backoff: Backoff, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoff = backoff
        self.failures = 0
        self.reconnect_waits: deque[float] = deque(maxlen=32)
        self._per_topic = False  # any message_callback_add yet (see _handle_on_message)
        self._rbuf = b""  # read from the socket, not yet parsed (see _sock_recv)
        self._rpos = 0

    # Reading. paho reads a packet in three or more recv() calls (its type, each byte of its
    # length, the rest) and one packet per wakeup of its thread; every call gives up the GIL and
    # has to win it back from our own busy threads. At thousands of messages a second that was
    # ~40 % of an ingest worker's network thread (py-spy, 1,750 patients). Here the socket is read
    # 64 KiB at a time into a buffer paho's parser takes its small reads from, and each wakeup
    # parses everything that has arrived: `loop_read` returns only when the buffer and the
    # socket are both empty (would block), so no parsed-but-unread bytes wait behind select().
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_READ_CHUNK)  # BlockingIOError, OSError or b"" as before
            if len(data) <= bufsize:
                return data  # all of it asked for: the (spent) buffer stays spent
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        out = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self._in_packet["command"] == 0 and self._rpos < len(self._rbuf):
                rc = self._read_buffered_publishes()
                if rc > 0:
                    return self._loop_rc_handle(rc)
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)

    # Splitting. Between packets (paho holds none half-read), the whole PUBLISH packets at the head
    # of the read buffer are decoded straight from it, each in one pass, where paho's reader makes
    # three or more calls per packet (type, each length byte, the rest) and copies it twice: 6.7
    # -> 2.7-2.9 µs a message (messages of the ingest benchmark, socket pair, no broker). The first
    # packet that is not a plain PUBLISH, or not wholly read yet, ends the run: paho's reader
    # takes it from the buffer as before, so every other packet and every partial read goes
    # paho's way. So does whatever follows a callback (or its acknowledgement) that closed or
    # replaced the connection: its buffer is gone with it.
    def _read_buffered_publishes(self) -> MQTTErrorCode:
        buf, pos, size = self._rbuf, self._rpos, len(self._rbuf)
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        done = 0
        try:
            while pos < size and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                header = buf[pos]
                if header & 0xF0 != 0x30 or header & 0x06 > 0x02:  # a PUBLISH of QoS 0 or 1 only
                    break
                length, shift, at = 0, 0, pos + 1  # the remaining length: 1 to 4 bytes
                while at < size and shift <= 21:
                    byte = buf[at]
                    at += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                else:
                    break  # not all read yet (or malformed: paho says so)
                end = at + length
                message = self._plain_publish(header, buf, at, end) if end <= size else None
                if message is None:
                    break
                pos = self._rpos = end
                done += 1
                rc = self._deliver(message)
                if self._sock is None or self._rbuf is not buf:
                    break
        finally:
            if done:
                with self._msgtime_mutex:
                    self._last_bytes_received = time.monotonic()  # paho's keepalive clock
        return rc

    def _deliver(self, message: paho.MQTTMessage) -> MQTTErrorCode:
        """A decoded message to `on_message`, then its PUBACK unless the caller acknowledges."""
        self._handle_on_message(message)
        if message.qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # Decoding. For every PUBLISH paho slices the packet three times, builds a v5 `Properties`
    # object even when there are none, and gives each incoming message an `info` with its own
    # threading.Condition, which only outgoing messages use: about a third of an ingest worker's
    # network thread at 1,950 patients (py-spy). The common case -- QoS 0 or 1, a UTF-8 topic, no
    # v5 properties but a reading's message expiry -- is decoded here into the same `MQTTMessage`
    # (``info`` None, ``properties`` None or an `_Expiry`); anything else (QoS 2, other properties
    # such as a topic alias, a malformed packet) goes through paho's own decoder.
    def _handle_publish(self) -> MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        message = self._plain_publish(header, packet, 0, len(packet))
        if message is None:
            return super()._handle_publish()
        return self._deliver(message)

    def _plain_publish(
        self, header: int, data: bytes | bytearray, begin: int, size: int
    ) -> paho.MQTTMessage | None:
        """The message of a PUBLISH packet whose variable header and payload are data[begin:size],
        if it is the common case decoded here; None for anything else (paho's decoder)."""
        qos = (header & 0x06) >> 1
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        if qos == 2 or size - begin < 2:
            return None
        end = begin + 2 + ((data[begin] << 8) | data[begin + 1])  # the topic ends here
        start = end + (2 if qos else 0) + (1 if v5 else 0)  # the payload starts here
        expiry: _Expiry | None = None
        if v5 and start <= size and data[start - 1] != 0:
            if data[start - 1 : start + 1] != _EXPIRY_ONLY or start + 5 > size:
                return None  # other properties
            expiry = _Expiry(int.from_bytes(data[start + 1 : start + 5], "big"))
            start += 5
        if end == begin + 2 or start > size:
            return None
        topic = bytes(data[begin + 2 : end])
        try:
            topic.decode("utf-8")
        except UnicodeDecodeError:
            return None
        message = paho.MQTTMessage.__new__(paho.MQTTMessage)
        message.timestamp = time.monotonic()  # paho's clock for this field
        message.state = paho.mqtt_ms_invalid
        message.dup = bool(header & 0x08)
        message.mid = (data[end] << 8) | data[end + 1] if qos else 0
        message.topic = topic  # the setter takes bytes; reading it decodes
        message.payload = bytes(data[start:size])
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.info = None  # type: ignore[assignment]
        message.properties = expiry  # type: ignore[assignment]
        return message

    def ack_many(self, mids: Sequence[int]) -> None:
        """Acknowledge these QoS 1 messages (``manual_ack``), in this order: their PUBACKs go out
        as one write, where `ack` queues a packet, wakes the network thread and makes a system
        call per message."""
        if not mids or not self._manual_ack:
            return
        blob = struct.pack(f"!{len(mids)}I", *[_PUBACK_HEAD | mid for mid in mids])
        self._packet_queue(PacketTypes.PUBACK << 4, blob, mids[-1], 1)

    # Delivery. paho looks every message's topic up in its per-topic callbacks (a tree walk) even
    # when there are none, as in every Nabz service: then on_message is called directly, with
    # paho's own error handling.
    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._per_topic = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if self._per_topic or on_message is None:
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0  # a new connection starts from its own first byte
        super()._sock_close()

    def _reconnect_wait(self) -> None:
        with self._reconnect_delay_mutex:
            if self._reconnect_delay is None:
                self.failures = 0
            self.failures += 1
            delay = self.backoff.delay(self.failures)
            self._reconnect_delay = max(1, round(delay))  # non-None: "failing"; paho reads nothing else
        self.reconnect_waits.append(delay)
        log.debug("mqtt: reconnecting in %.2f s (failure %d in a row)", delay, self.failures)
        deadline = time.monotonic() + delay
        stopping = (_ConnectionState.MQTT_CS_DISCONNECTING, _ConnectionState.MQTT_CS_DISCONNECTED)
        while not self._thread_terminate and self._state not in stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.1))


def make_client(
    config: MqttConfig,
    client_id: str,
    *,
    persistent_session: bool = False,
    will: Will | None = None,
    manual_ack: bool = False,
    max_inflight: int = 100,
    server: bool = False,
) -> Client:
    """A paho client configured for TLS, credentials, protocol version, Last Will and backoff;
    `server`: one of the server's own processes, whose back-off stops at
    `server_reconnect_max_s`."""
    v5 = config.protocol == "5"
    max_s = min(config.reconnect_max_s, config.server_reconnect_max_s) if server else config.reconnect_max_s
    min_s = min(config.reconnect_min_s, max_s)
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    kwargs: dict[str, object] = {}
    if not v5:
        kwargs["clean_session"] = not persistent_session
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        manual_ack=manual_ack,
        backoff=Backoff(min_s, max_s),
        **kwargs,
    )
    client.enable_logger(logging.getLogger("paho"))
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        client.tls_set_context(context)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.reconnect_delay_set(max(1, int(min_s)), max(1, int(max_s)))
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)  # unbounded in paho; callers bound what they hand it
    return client


def connect(client: paho.Client, config: MqttConfig, *, persistent_session: bool = False) -> None:
    """Start connecting in the background; paho retries forever with backoff until stopped."""
    props = None
    clean_start: bool | Literal[3] = paho.MQTT_CLEAN_START_FIRST_ONLY
    if config.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent_session:
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            clean_start = False
    try:
        client.connect_async(
            config.host, config.port, keepalive=config.keepalive_s, clean_start=clean_start, properties=props
        )
    except (OSError, ValueError) as exc:
        raise MqttError(f"cannot connect to {config.url}: {exc}") from exc
    client.loop_start()


def end_session(config: MqttConfig, client_id: str, timeout_s: float = 10.0) -> bool:
    """End a client id's session at the broker, queued messages and subscriptions with it: connect
    once with a clean start (and no session expiry), then disconnect. True once the broker said so."""
    client = make_client(config, client_id)
    done = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: done.set() if reason_ok(reason) else None
    connect(client, config)
    try:
        return done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()


def reason_ok(reason_code: object) -> bool:
    """True for a successful CONNACK/PUBACK reason (v5 ReasonCode or a v3 int)."""
    is_failure = getattr(reason_code, "is_failure", None)
    if is_failure is not None:
        return not bool(is_failure)
    return reason_code == 0
