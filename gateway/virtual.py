"""The virtual transport: simulated wearables from `hardware/` in place of a radio.

Each poll advances every wearable by the gateway time that passed, so the stream runs in real time
under a wall clock and as fast as the machine allows under a compressed test clock. A wearable can
be taken out of range (`disconnect`) and brought back: while it is away, its samples go nowhere,
as over a real radio, and when it is back the gateway can ask it for the frames it missed
(`write` to its control characteristic; the wearable answers from its resend buffer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.decode import Notification
from gateway.transport import LinkEvent, LinkHealth, Transport

__all__ = ["VirtualTransport", "Wearable"]


class _SimNotification(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def char_uuid(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def device_t_us(self) -> int: ...


class Wearable(Protocol):
    """What the virtual transport needs from a simulated device (hardware.wearables)."""

    @property
    def device_id(self) -> str: ...
    @property
    def readings_generated(self) -> int: ...
    @property
    def device_t_us(self) -> int: ...

    def advance(self, seconds: float) -> Sequence[_SimNotification]: ...


class VirtualTransport(Transport):
    """Delivers the notifications of simulated wearables."""

    def __init__(self, wearables: Sequence[Wearable]) -> None:
        self.wearables = list(wearables)
        self._last_us: int | None = None
        self._away: set[str] = set()
        self._since: dict[str, int] = {}
        self._reconnects: dict[str, int] = {}
        self._events: list[LinkEvent] = []
        self._resent: list[_SimNotification] = []
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
        for d in self.devices:
            self._since[d] = now_us
            self._events.append(LinkEvent(d, "connected", now_us))

    def disconnect(self, device: str) -> None:
        """Take a wearable out of range (its notifications are lost until `reconnect`)."""
        if device not in self._away:
            self._away.add(device)
            at = self._last_us or 0
            self._since[device] = at
            self._events.append(LinkEvent(device, "disconnected", at, "out of range"))

    def reconnect(self, device: str) -> None:
        if device in self._away:
            self._away.discard(device)
            at = self._last_us or 0
            self._since[device] = at
            self._reconnects[device] = self._reconnects.get(device, 0) + 1
            self._events.append(LinkEvent(device, "connected", at))

    def write(self, device: str, char: str, data: bytes) -> bool:
        """A write to a wearable in range; what it sends back arrives with the next poll."""
        w = next((w for w in self.wearables if w.device_id == device), None)
        write = getattr(w, "write", None)
        if w is None or device in self._away or write is None:
            return False
        try:
            self._resent.extend(write(char, data))
        except ValueError:  # the wearable refused the write (the GATT error a real one returns)
            return False
        return True

    def health(self, now_us: int) -> dict[str, LinkHealth]:
        return {
            d: LinkHealth(
                "reconnecting" if d in self._away else "connected",
                since_us=self._since.get(d),
                reconnects=self._reconnects.get(d, 0),
            )
            for d in self.devices
        }

    def take_events(self) -> list[LinkEvent]:
        out, self._events = self._events, []
        return out

    def poll(self, now_us: int) -> list[Notification]:
        if self.stopped:
            return []
        if self._last_us is None:
            self._last_us = now_us
            return []
        elapsed = (now_us - self._last_us) / 1e6
        out: list[Notification] = [
            Notification(n.device_id, n.char_uuid, n.data, now_us) for n in self._resent
        ]
        self._resent.clear()
        if elapsed <= 0:
            return out
        self._last_us = now_us
        for w in self.wearables:
            sent = w.advance(elapsed)
            if w.device_id in self._away:
                continue
            # Each notification arrives when the device sent it, not all at the poll's instant:
            # two heart-rate values a second apart must not share a timestamp (that would
            # overwrite a point in InfluxDB).
            device_now = w.device_t_us
            out.extend(
                Notification(n.device_id, n.char_uuid, n.data, now_us - max(0, device_now - n.device_t_us))
                for n in sent
            )
        return out

    def stop(self) -> None:
        self.stopped = True
