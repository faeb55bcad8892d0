"""The virtual transport: simulated wearables from `hardware/` in place of a radio.

Each poll advances every wearable by the gateway time that passed, so the stream runs in real time
under a wall clock and as fast as the machine allows under a compressed test clock. A wearable can
be taken out of range (`disconnect`) and brought back: while it is away, its samples go nowhere,
as over a real radio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.decode import Notification
from gateway.transport import Transport

__all__ = ["VirtualTransport", "Wearable"]


class _SimNotification(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def char_uuid(self) -> str: ...
    @property
    def data(self) -> bytes: ...


class Wearable(Protocol):
    """What the virtual transport needs from a simulated device (hardware.wearables)."""

    @property
    def device_id(self) -> str: ...
    @property
    def readings_generated(self) -> int: ...

    def advance(self, seconds: float) -> Sequence[_SimNotification]: ...


class VirtualTransport(Transport):
    """Delivers the notifications of simulated wearables."""

    def __init__(self, wearables: Sequence[Wearable]) -> None:
        self.wearables = list(wearables)
        self._last_us: int | None = None
        self._away: set[str] = set()
        self.stopped = False

    @property
    def devices(self) -> list[str]:
        return [w.device_id for w in self.wearables]

    @property
    def readings_generated(self) -> int:
        """Readings the wearables produced, delivered or not (the demo's 'generated')."""
        return sum(w.readings_generated for w in self.wearables)

    def start(self, now_us: int) -> None:
        self._last_us = now_us

    def disconnect(self, device: str) -> None:
        self._away.add(device)

    def reconnect(self, device: str) -> None:
        self._away.discard(device)

    def poll(self, now_us: int) -> list[Notification]:
        if self.stopped:
            return []
        if self._last_us is None:
            self._last_us = now_us
            return []
        elapsed = (now_us - self._last_us) / 1e6
        if elapsed <= 0:
            return []
        self._last_us = now_us
        out: list[Notification] = []
        for w in self.wearables:
            sent = w.advance(elapsed)
            if w.device_id in self._away:
                continue
            out.extend(Notification(n.device_id, n.char_uuid, n.data, now_us) for n in sent)
        return out

    def stop(self) -> None:
        self.stopped = True
