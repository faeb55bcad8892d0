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
PERIOD_S = 5.0  # the loop's wait when there is nothing to do: longer than the whole drain may take


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
            assert collector.wait_for(lambda: len(collector.readings) == BACKLOG, 60)
            took = time.monotonic() - started
            assert collector.wait_for(lambda: gw.spool.depth == 0, 10)
        # Ten windows that waited for a 3 s period took 15.1 s (2026-11-27); stepping at each
        # acknowledgement, all ten go out well within one period.
        assert took < PERIOD_S, took
    finally:
        gw.stop()
        collector.close()


class _Checkpointed(VirtualTransport):
    """Wearables behind a transport that keeps a checkpoint, as the serial link does (its session
    and the last line's number), here one that does not change while nothing arrives."""

    def checkpoint(self) -> dict[str, str]:
        return {"serial:/dev/ttyUSB0": "s-1:42"}


def test_an_unchanged_transport_checkpoint_is_written_once_not_at_every_step(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Each step wrote the serial link's checkpoint again, changed or not: a durable transaction,
    an fsync on the Pi's SD card, at every step (and a step now comes at every acknowledgement)."""
    cfg = gateway_config(mosquitto.url, id="gw-1", spool_path=str(tmp_path / "spool.sqlite"))
    gw = Gateway(cfg, _Checkpointed([]))
    writes: list[dict[str, str]] = []
    put = gw.spool.put

    def counting(items: list[tuple[str, str, bytes, str, int]], marks: dict[str, str] | None = None) -> int:
        if marks:
            writes.append(dict(marks))
        return put(items, marks)

    gw.spool.put = counting  # type: ignore[method-assign]
    try:
        for _ in range(50):
            gw.step()
        assert writes == [{"transport/serial:/dev/ttyUSB0": "s-1:42"}]
        assert gw.spool.marks("transport/") == {"transport/serial:/dev/ttyUSB0": "s-1:42"}
    finally:
        gw.stop()
