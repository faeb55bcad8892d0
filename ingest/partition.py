"""Which ingest worker owns which patient, and the MQTT subscriptions that follow. Pure.

Mosquitto's shared subscriptions hand messages round-robin to the members of a group, which
would scatter one patient's stream over all workers. So a worker never joins a group for all
readings: it subscribes, in the shared group, to the reading topics of the devices of the patients
it owns (``$share/<group>/nabz/v1/+/gw/+/<device>/+``). Each such (group, filter) subscription has
exactly one member, its owner, so a patient's messages reach one worker, in order. The owner's
session is persistent: while it is down the broker queues its patients' messages, and whichever
process starts in its slot (a restart, or a standby) resumes them. On a broker with a hash or
sticky strategy (EMQX) a standby can be a second live member of the same subscriptions.

A device moved to a patient of another worker changes hands without a moment with no subscriber
(mosquitto acknowledges a reading nobody subscribes to, to the gateway, and drops it): the old
owner keeps its subscription until the new owner's is confirmed by the broker (`holding`). In
between both are members and the broker shares the device's messages between them; each stores
what it gets (the store deduplicates across workers).
See docs/scale.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Container, Iterable, Mapping, Set

from nabz.contract import ROOT

__all__ = ["owner_of", "owned_devices", "holding", "device_filter", "filter_device", "slot_client_id"]


def owner_of(patient: str, workers: int) -> int:
    """The worker slot (0 .. workers - 1) that owns a patient: CRC-32 of the id, modulo."""
    return zlib.crc32(patient.encode()) % max(1, workers)


def owned_devices(enrolment: Mapping[str, str], worker: int, workers: int) -> set[str]:
    """Devices whose patient the given worker owns."""
    return {d for d, p in enrolment.items() if owner_of(p, workers) == worker}


def holding(
    owned: Set[str], held: Iterable[str], enrolled: Container[str], taken_over: Container[str]
) -> set[str]:
    """The devices a worker is to be subscribed to: those it owns, and of those it holds now, the
    ones moved to another worker that has no confirmed subscription to them yet (`taken_over`
    lists those that have: let go). A device no longer enrolled has nobody to hand over to."""
    return set(owned) | {d for d in held if d not in owned and d in enrolled and d not in taken_over}


def device_filter(device: str, group: str) -> str:
    """The shared subscription to one device's readings."""
    return f"$share/{group}/{ROOT}/+/gw/+/{device}/+"


def filter_device(topic_filter: str, group: str) -> str | None:
    """The device of a `device_filter` of this group (None: not one)."""
    head, tail = f"$share/{group}/{ROOT}/+/gw/+/", "/+"
    device = topic_filter[len(head) : -len(tail)]
    if topic_filter.startswith(head) and topic_filter.endswith(tail) and device and "/" not in device:
        return device
    return None


def slot_client_id(client_id: str, worker: int, workers: int) -> str:
    """The MQTT client id of a worker slot: one persistent session per slot when there are
    several (``<client_id>-<worker>``), the configured id itself when there is one."""
    return f"{client_id}-{worker}" if workers > 1 else client_id
