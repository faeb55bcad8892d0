"""Transports deliver notifications to the gateway; the gateway does not care which one.

A transport is polled from the gateway's own thread: `poll(now_us)` returns what arrived since the
last poll, stamped with the gateway's receive time. Radio stacks that push (bleak's callbacks, a
serial reader) buffer between polls. `make_transport` imports each implementation only when it is
asked for, so a gateway without bleak installed can still run the virtual or serial transport.

Beyond `poll`, a transport may
- write to a device (`write`: the Nabz control characteristic's RESEND),
- report each device's link (`health`) and what happened to it (`take_events`),
- hand over lines it could not parse (`take_rejects`, for the dead-letter table), and
- keep a position in its input that the gateway stores with the readings (`checkpoint`) and
  gives back after a restart (`restore`), for links that can replay (the serial protocol).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.decode import Notification

__all__ = [
    "Transport",
    "make_transport",
    "TransportError",
    "LinkHealth",
    "LinkEvent",
    "Reject",
    "TRANSPORTS",
]

TRANSPORTS = ("virtual", "ble", "serial")

LinkState = Literal["connecting", "connected", "reconnecting", "lost"]


class TransportError(Exception):
    """A transport could not start or lost its devices in a way it cannot recover from by itself."""


@dataclass(frozen=True, slots=True)
class LinkHealth:
    """One device's link as its transport sees it. Times: gateway clock, µs since the epoch."""

    state: LinkState
    since_us: int | None = None
    rssi_dbm: int | None = None
    mtu: int | None = None
    reconnects: int = 0
    reason: str = ""  # why it last dropped or failed


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something that happened to a device's link: 'connected', 'disconnected', 'lost', 'found'."""

    device: str
    kind: Literal["connected", "disconnected", "lost", "found"]
    at_us: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    """Input a transport could not parse (e.g. a serial line with a bad checksum)."""

    device: str
    char: str
    data: bytes
    reason: str
    detail: str


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

    # --- optional capabilities -----------------------------------------------------------------
    def write(self, device: str, char: str, data: bytes) -> bool:
        """Write `data` to a characteristic of `device` (asynchronously); False if impossible now."""
        return False

    def health(self, now_us: int) -> dict[str, LinkHealth]:
        """Each device's link. By default every device counts as connected."""
        return {d: LinkHealth("connected") for d in self.devices}

    def take_events(self) -> list[LinkEvent]:
        """Link events since the last call."""
        return []

    def take_rejects(self) -> list[Reject]:
        """Unparseable input since the last call."""
        return []

    def checkpoint(self) -> dict[str, str]:
        """Marks describing the input consumed by the polls so far (stored with their readings)."""
        return {}

    def restore(self, marks: Mapping[str, str]) -> None:  # noqa: B027 - optional hook
        """Resume after the input described by `marks` (from the last checkpoint stored)."""


def make_transport(kind: str, **options: Any) -> Transport:
    """The transport named `kind`: 'virtual', 'ble' or 'serial' (see each module for options)."""
    if kind == "virtual":
        from gateway.virtual import VirtualTransport

        return VirtualTransport(**options)
    if kind == "ble":
        from gateway.ble import BleTransport

        return BleTransport(**options)
    if kind == "serial":
        from gateway.serial_transport import SerialTransport

        return SerialTransport(**options)
    raise TransportError(f"unknown transport {kind!r}; known: {', '.join(TRANSPORTS)}")
