"""Transports deliver BLE notifications to the gateway; the gateway does not care which one.

A transport is polled from the gateway's own thread: `poll(now_us)` returns what arrived since the
last poll, stamped with the gateway's receive time. Radio stacks that push (bleak's callbacks)
buffer between polls. `make_transport` imports each implementation only when it is asked for, so a
gateway without bleak installed can still run the virtual or serial transport.
"""

from __future__ import annotations

import abc
from typing import Any

from gateway.decode import Notification

__all__ = ["Transport", "make_transport", "TransportError"]


class TransportError(Exception):
    """A transport could not start or lost its devices in a way it cannot recover from by itself."""


class Transport(abc.ABC):
    """Where notifications come from."""

    @property
    @abc.abstractmethod
    def devices(self) -> list[str]:
        """Ids of the devices this transport serves."""

    def start(self, now_us: int) -> None:  # noqa: B027 - optional hook
        """Begin delivering; `now_us` is the gateway's clock."""

    @abc.abstractmethod
    def poll(self, now_us: int) -> list[Notification]:
        """Notifications received since the last poll, in arrival order."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release the radio or line."""


def make_transport(kind: str, **options: Any) -> Transport:
    """The transport named `kind` ('virtual'; 'ble' and 'serial' come with the gateway issue)."""
    if kind == "virtual":
        from gateway.virtual import VirtualTransport

        return VirtualTransport(**options)
    raise TransportError(f"unknown transport {kind!r}; known: virtual")
