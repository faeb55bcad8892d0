"""A backlog (an outage of the home's link, of the broker, of ingest) goes out as fast as the broker
acknowledges it: the gateway's loop steps when an acknowledgement arrives, not at its next period.
It waited its whole period (50 ms in service) for every `max_inflight` window, which held a
six-hour backlog to ~2,650 messages a second on this machine (docs/benchmarks.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.service import Gateway
from gateway.spool import Spool
from gateway.virtual import VirtualTransport
from nabz import contract
from tests.gateway.helpers import Collector, gateway_config, running
from tests.servers import Mosquitto

BACKLOG = 500
WINDOW = 50  # max_inflight: ten windows
PERIOD_S = 3.0  # the loop's wait when there is nothing to do: longer than the whole drain may take


def _backlog(path: Path) -> None:
    spool = Spool(path)
    topic = contract.reading_topic("test", "gw-1", "oxi-1", "hr")
    spool.put([
        (f"m-{i:05d}", topic, json.dumps({"id": f"m-{i:05d}", "device": "oxi-1", "stream": "hr"}).encode(), "hr", 1)
        for i in range(BACKLOG)
    ])  # fmt: skip
    spool.close()


def test_a_backlog_goes_out_window_after_window_as_the_broker_acknowledges(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    spool_path = tmp_path / "spool.sqlite"
    _backlog(spool_path)
    collector = Collector("127.0.0.1", mosquitto.port)
    cfg = gateway_config(mosquitto.url, id="gw-1", spool_path=str(spool_path), max_inflight=WINDOW)
    gw = Gateway(cfg, VirtualTransport([]))
    try:
        with running(gw, period_s=PERIOD_S):
            assert collector.wait_for(lambda: len(collector.readings) >= 1, 20)  # connected, sending
            started = time.monotonic()
            assert collector.wait_for(lambda: len(collector.readings) == BACKLOG, 20)
            took = time.monotonic() - started
            assert collector.wait_for(lambda: gw.spool.depth == 0, 10)
        # Ten windows that waited for the loop's period took 15.1 s (2026-11-27); stepping at each
        # acknowledgement, all ten go out well within one period.
        assert took < PERIOD_S, took
    finally:
        gw.stop()
        collector.close()
