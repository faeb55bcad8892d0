"""Fixtures shared by all tests: real servers on free loopback ports, stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import InfluxDB1, Mosquitto, VictoriaMetrics

# `make test` runs the suite in two processes (pytest-xdist, `-n 2`): most tests wait on servers, and one
# process kept this 2-core box half idle. Each file's tests stay together, in order, in one process
# (some share a module's servers and build on each other: the nurse station's browser tests).
# These files run in one process, one after another: they keep simulated time in step with the
# real clock (the fault rig, the demo, the BLE link), pace messages by the clock, or measure
# speed, and two of them at once would starve each other of the two cores. (xdist's own
# `--dist loadgroup` does not group under pytest 9: it renames node ids through an attribute
# pytest 9 no longer reads.)
_ONE_AT_A_TIME = (
    "tests/faults/",
    "tests/gateway/test_ble.py",
    "tests/gateway/test_catch_up.py",
    "tests/gateway/test_drain.py",
    "tests/nabz/test_demo.py",
    "tests/alerts/test_bench.py",
    "tests/ingest/test_bench_load.py",
)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: ignored without it (or with -p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Overrides any --dist given: each file one scope, the files above one scope together."""
    from xdist.scheduler import LoadFileScheduling

    class OneAtATime(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "one at a time" if path.startswith(_ONE_AT_A_TIME) else path

    return OneAtATime(config, log)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "victoria")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    server = InfluxDB1(tmp_path / "influxdb")
    server.start()
    yield server
    server.stop()
