"""Readings nobody on the server takes yet: which devices the gateway holds back, and when it asks
again. Pure: no I/O, no clock of its own (every call takes `now`, seconds on a monotonic clock).

An MQTT v5 broker answers a QoS 1 PUBLISH that no subscription matches with the PUBACK reason
"No matching subscribers" (0x10): not a refusal, and the broker has dropped the message. For a
reading that means nobody will ever store it: a wearable paired before it was enrolled (with
several ingest workers only the devices of enrolled patients are subscribed), the seconds between
`nabz enrol` and its owner's subscription, or a server whose ingest has not subscribed yet (a
first installation, a broker restarted without its sessions). So the gateway keeps such a
reading, and holds the device's later readings back with it (the spool's held rows: out of the
way of the other devices' rows, the first dropped when the spool is full) instead of sending a growing
backlog into nothing over a rural link. Once in a while it sends the device's oldest held
reading again (a probe: one message, the first after 5 s, then twice as long each time up to 2
minutes). When the probe is taken, everything held goes back into the spool, in order, and is
sent; a probe the broker refuses (an ACL being changed) is tried again at the next probe time.
A move a full card cut short is tried again at the device's probe time too, not at every answer
(found by review: a retry per answer cost most of a CPU). A release it cut short leaves the
device taken (`releases`: no longer held) with part of its rows still held; the release is tried
again at the same times, so the readings go as soon as the card has room (found by review: such
a device was held for ever, and again after every restart).

Which devices are held is kept in the spool (their held rows), so a restart goes on holding them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hold", "Holds", "NO_MATCHING_SUBSCRIBERS"]

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
PROBE_FIRST_S = 5.0
PROBE_MAX_S = 120.0


@dataclass
class Hold:
    """One held device's probing."""

    wait_s: float  # until the probe after the next one
    probe_due: float
    probing: bool = False  # a probe is in flight


class Holds:
    """The devices held back, keyed by device id; and the devices taken whose release a full card
    cut short (`releases`: tried again at `probe_due`, with the same back-off)."""

    def __init__(self, first_s: float | None = None, max_s: float | None = None) -> None:
        self.first_s = PROBE_FIRST_S if first_s is None else first_s
        self.max_s = PROBE_MAX_S if max_s is None else max_s
        self.devices: dict[str, Hold] = {}
        self.releases: dict[str, Hold] = {}

    def __bool__(self) -> bool:
        return bool(self.devices or self.releases)

    def held(self, device: str | None) -> bool:
        return device is not None and device in self.devices

    def hold(self, device: str, now: float) -> bool:
        """A reading of `device` came back with nobody subscribed (or it was held before a
        restart). True when the device is newly held (worth telling people once)."""
        self.releases.pop(device, None)  # (taken, then nobody again: the hold finishes its release)
        if device in self.devices:
            return False
        self.devices[device] = Hold(min(2 * self.first_s, self.max_s), now + self.first_s)
        return True

    def probes(self, now: float) -> list[str]:
        """Devices to probe now."""
        return [d for d, h in self.devices.items() if not h.probing and now >= h.probe_due]

    def probing(self, device: str) -> None:
        """Its probe went out."""
        self.devices[device].probing = True

    def unanswered(self, device: str, now: float) -> None:
        """Its probe came back with nobody subscribed, or was refused, or could not go: the next
        probe after the current wait, which then doubles (up to `max_s`)."""
        hold = self.devices.get(device)
        if hold is not None:
            hold.probing = False
            _later(hold, now, self.max_s)

    def server_back(self, now: float) -> list[str]:
        """Ingest is heard working again after a silence (a broker or ingest restart): every held
        device not already probing is probed now, its back-off from the start, instead of at its
        next probe time, up to 2 minutes away after a long outage. Returns those devices."""
        hurried = []
        for device, hold in self.devices.items():
            if not hold.probing and hold.probe_due > now:
                hold.probe_due, hold.wait_s = now, min(2 * self.first_s, self.max_s)
                hurried.append(device)
        return hurried

    def release_later(self, device: str, now: float) -> None:
        """`device`'s readings are taken, but a full card kept some of its held rows from going
        back: it is no longer held, and its release is tried again after `first_s`, then twice as
        long each time (up to `max_s`)."""
        self.devices.pop(device, None)
        hold = self.releases.get(device)
        if hold is None:
            self.releases[device] = Hold(min(2 * self.first_s, self.max_s), now + self.first_s)
        else:
            _later(hold, now, self.max_s)

    def releases_due(self, now: float) -> list[str]:
        """Devices whose release to try again now."""
        return [d for d, h in self.releases.items() if now >= h.probe_due]

    def taken(self, device: str | None) -> Hold | None:
        """A reading of `device` was taken and all it held is back in the spool: it is released
        (returned, if it was held)."""
        if device is None:
            return None
        self.releases.pop(device, None)
        return self.devices.pop(device, None)


def _later(hold: Hold, now: float, max_s: float) -> None:
    hold.probe_due = now + hold.wait_s
    hold.wait_s = min(2 * hold.wait_s, max_s)
