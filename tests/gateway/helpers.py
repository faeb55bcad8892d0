"""Shared by the gateway tests: a broker-side collector of what the gateway published, a test
configuration, and a loop that steps a gateway in the background."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.service import Gateway
from nabz import contract
from nabz.config import Config, GatewayConfig, MqttConfig

_SAMPLES = {"ecg": ("signal_uv",), "ppg": ("red_counts",)}


def gateway_config(url: str, **gateway: Any) -> Config:
    gateway.setdefault("status_interval_s", 2.0)
    return Config(
        site="test",
        mqtt=MqttConfig(url=url, reconnect_min_s=0.2, reconnect_max_s=1.0),
        gateway=GatewayConfig(**gateway),
    )


class Collector:
    """Subscribes to everything under nabz/v1/ and keeps readings by message id, and statuses."""

    def __init__(
        self,
        url_host: str,
        port: int,
        *,
        ca: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.readings: dict[str, tuple[str, str, int, int | None]] = {}  # id -> device, stream, n, seq
        self.bodies: dict[str, dict[str, Any]] = {}  # id -> payload, in arrival order
        self.deliveries = 0
        self.statuses: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        if ca is not None:
            self.client.tls_set(ca_certs=ca)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(url_host, port)
        self.client.subscribe("nabz/v1/#", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/status"):
                self.statuses.append(body)
                return
            self.deliveries += 1
            stream = body["stream"]
            n = len(body[_SAMPLES[stream][0]]) if stream in _SAMPLES else 1
            self.readings[body["id"]] = (body["device"], stream, n, body.get("seq"))
            self.bodies.setdefault(body["id"], body)

    def tally(self) -> Counter[tuple[str, str]]:
        with self._lock:
            out: Counter[tuple[str, str]] = Counter()
            for device, stream, n, _ in self.readings.values():
                out[(device, stream)] += n
            return out

    def of(self, device: str, stream: str) -> list[dict[str, Any]]:
        """Payloads of one device's stream, in arrival order (each message id once)."""
        with self._lock:
            return [b for b in self.bodies.values() if b["device"] == device and b["stream"] == stream]

    def frames_twice(self) -> list[tuple[str, str, int]]:
        """Waveform frames that arrived under more than one message id (must never happen)."""
        with self._lock:
            seen = Counter((d, s, q) for d, s, _, q in self.readings.values() if q is not None)
        return [k for k, c in seen.items() if c > 1]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _holds(predicate):
                return True
            time.sleep(0.05)
        return _holds(predicate)

    def last_status(self) -> dict[str, Any] | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _holds(predicate: Callable[[], bool]) -> bool:
    try:
        return predicate()
    except (LookupError, StopIteration, TypeError):  # nothing to look at yet
        return False


def health(status: dict[str, Any] | None, device: str) -> dict[str, Any]:
    """The health entry of `device` in a status message (KeyError if there is none yet)."""
    for h in (status or {}).get("health", []):
        if h["device"] == device:
            return dict(h)
    raise KeyError(device)


@contextmanager
def running(gw: Gateway, period_s: float = 0.02) -> Iterator[Gateway]:
    """Start a gateway and step it on a background thread until the block ends."""
    stop = threading.Event()
    gw.start()
    thread = threading.Thread(target=gw.run, args=(stop, period_s), daemon=True)
    thread.start()
    try:
        yield gw
    finally:
        stop.set()
        thread.join(10)


def readings_of(payload: bytes) -> int:
    r = contract.decode_reading("nabz/v1/x/gw/x/x/" + json.loads(payload)["stream"], payload)
    assert not isinstance(r, contract.Rejected)
    return contract.reading_count(r)
