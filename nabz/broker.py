"""The embedded MQTT broker for `nabz demo`: amqtt, in-process, on a loopback port.

amqtt speaks MQTT 3.1.1 only and manages about 2k messages/s: enough for a demo of a few
patients, not for production or load tests (use mosquitto there; see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

__all__ = ["EmbeddedBroker", "free_port"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nabz-broker", daemon=True)
        self._broker: object | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._thread.start()
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}}

        async def _start() -> object:
            broker = Broker(config)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout_s)
        log.info("embedded MQTT broker on %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        broker = self._broker
        if broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), self._loop).result(timeout_s)  # type: ignore[attr-defined]
            except Exception as exc:  # shutting down: report, do not mask the caller's outcome
                log.warning("embedded broker did not shut down cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
