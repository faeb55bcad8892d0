"""Readings nobody on the server takes yet: which devices the gateway holds back, and when it asks
again. Pure: no I/O, no clock of its own (every call takes `now`, seconds on a monotonic clock).

An MQTT v5 broker answers a QoS 1 PUBLISH that no subscription matches with the PUBACK reason
"No matching subscribers" (0x10): not a refusal, and the broker has dropped the message. For a
reading that means nobody will ever store it: a wearable paired before it was enrolled (with
several ingest workers only the devices of enrolled patients are subscribed), the seconds between
`nabz enrol` and its owner's subscription, or a server whose ingest has not subscribed yet (a
first installation, a broker restarted without its sessions). So the gateway keeps such a
reading in its spool, as it keeps one the broker refused, and holds the device's later readings
back too instead of sending a growing backlog into nothing over a rural link. Once in a while it
sends the device's oldest held reading again (a probe: one message, the first after 5 s, then
twice as long each time up to 2 minutes). When a reading of the device is taken, everything held
is sent, in the order it was spooled.

The state is per process: after a restart the first readings of a held device go out once more,
and their answers hold it again.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hold", "Holds", "NO_MATCHING_SUBSCRIBERS"]

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
PROBE_FIRST_S = 5.0
PROBE_MAX_S = 120.0


@dataclass
class Hold:
    """One held device."""

    since: float  # when its first reading came back untaken (the caller's clock)
    first_seq: int  # the oldest spool row known to be held (rows before it are not its)
    wait_s: float  # until the next probe after this one
    probe_due: float
    probe_seq: int | None = None  # the probe in flight, if any


class Holds:
    """The devices held back, keyed by device id."""

    def __init__(self, first_s: float | None = None, max_s: float | None = None) -> None:
        self.first_s = PROBE_FIRST_S if first_s is None else first_s
        self.max_s = PROBE_MAX_S if max_s is None else max_s
        self.devices: dict[str, Hold] = {}

    def __bool__(self) -> bool:
        return bool(self.devices)

    def held(self, device: str | None) -> bool:
        """Whether this device's readings are held back (its rows are not to be sent)."""
        return device is not None and device in self.devices

    def untaken(self, device: str, seq: int, now: float) -> bool:
        """A reading of `device` (spool row `seq`) came back with nobody subscribed. True when
        the device is newly held (worth telling people once)."""
        hold = self.devices.get(device)
        if hold is None:
            self.devices[device] = Hold(now, seq, min(2 * self.first_s, self.max_s), now + self.first_s)
            return True
        hold.first_seq = min(hold.first_seq, seq)
        if hold.probe_seq == seq:  # the probe: nobody yet; ask again later, less often
            hold.probe_seq = None
            hold.probe_due = now + hold.wait_s
            hold.wait_s = min(2 * hold.wait_s, self.max_s)
        return False

    def taken(self, device: str | None) -> Hold | None:
        """A reading of `device` was taken: it is released (returned, if it was held)."""
        if device is None:
            return None
        return self.devices.pop(device, None)

    def probes(self, now: float) -> list[tuple[str, int]]:
        """Devices to probe now, each with the oldest row that may be its held reading."""
        return [
            (device, hold.first_seq)
            for device, hold in self.devices.items()
            if hold.probe_seq is None and now >= hold.probe_due
        ]

    def probing(self, device: str, seq: int) -> None:
        """Row `seq` went out as this device's probe."""
        self.devices[device].probe_seq = seq

    def lost_probe(self, device: str, now: float) -> None:
        """The probe could not be sent, or the held rows are gone (dropped by the spool's
        overflow): nothing to ask with until the next probe time."""
        hold = self.devices.get(device)
        if hold is not None:
            hold.probe_seq = None
            hold.probe_due = now + hold.wait_s

    def forget(self, device: str) -> None:
        """Nothing of this device is left in the spool."""
        self.devices.pop(device, None)
