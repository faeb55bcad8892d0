"""The heartbeat and operations-board examples in docs/contract.md are what the code writes."""

from __future__ import annotations

import msgspec

from ingest.opsstats import GatewayState, Totals, ops_lines
from nabz import contract
from nabz.contract import GatewayStatus, Heartbeat
from tests.contract_doc import vectors


def test_heartbeat_examples_are_valid_and_on_their_topics() -> None:
    found = vectors("mqtt:heartbeat")
    assert {v.body and msgspec.json.decode(v.body.encode(), type=Heartbeat).service for v in found} == {
        "ingest",
        "alerts",
    }
    for v in found:
        hb = msgspec.json.decode(v.body.encode(), type=Heartbeat)
        assert v.attrs["topic"] == contract.heartbeat_topic(hb.site, hb.instance)
        assert msgspec.json.decode(contract.encode(hb)) == msgspec.json.decode(
            v.body.encode()
        )  # the wire form


def test_the_operations_board_example_is_what_ingest_writes() -> None:
    (v,) = vectors("storage:ops")
    a = v.attrs
    totals = Totals(
        stored_messages=int(a["stored_messages"]), stored_readings=int(a["stored_readings"]),
        dead_letters=int(a["dead_letters"]), duplicates=int(a["duplicates"]),
    )  # fmt: skip
    # gw-0001's status is the heartbeat example with the devices' health (section 2)
    (status,) = [
        s
        for v in vectors("mqtt:status")
        if (s := msgspec.json.decode(v.body.encode(), type=GatewayStatus)).health
    ]
    gateways = [
        GatewayState("demo", "gw-0001", True, 12, 0.0, devices=tuple(status.health)),
        GatewayState("demo", "gw-0002", False, 0, 0.0),
    ]
    t_ns = 1_795_597_210_000_000_000
    assert ops_lines(a["site"], int(a["worker"]), totals, gateways, t_ns) == v.body.strip().splitlines()
