"""An alerts store that is not where a command or the nurse station looks for it: they say so and
make nothing. Before, `nabz alerts list` run from another working directory (the default
`[alerts] store_path` is relative) made an empty store there and printed "no open alarms", and
the station showed no alarm history with /healthz saying nothing about it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts.store import AlertStore
from dashboards.station import StationServer
from nabz.broker import free_port
from nabz.cli import main
from tests.dashboards.station.client import Agent
from tests.dashboards.station.stack import add_users, config_for


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the alerts service's, and a configuration that leaves
    `[alerts] store_path` at its relative default."""
    cfg = tmp_path / "nabz.toml"
    cfg.write_text('site = "demo"\n')
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.delenv("NABZ_ALERTS__STORE_PATH", raising=False)
    return cfg


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["ack", "4821", "--by", "farah", "--wait", "0"],
        ["silence", "p-0001", "--for", "30m", "--by", "farah", "--wait", "0"],
        ["unsilence", "sil-1", "--wait", "0"],
        ["silences"],
        ["audit"],
    ],
)
def test_alerts_commands_refuse_a_store_that_is_not_there_and_make_none(
    elsewhere: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", *command, "--config", str(elsewhere)]) == 2
    out = capsys.readouterr()
    expected = Path.cwd() / "var" / "alerts.sqlite"
    assert f"no alerts store at {expected}" in out.err and "[alerts] store_path" in out.err
    assert "no open alarms" not in out.out
    assert not (Path.cwd() / "var").exists()


def test_alerts_list_reads_the_store_once_the_service_has_made_it(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (Path.cwd() / "var").mkdir()
    AlertStore(Path.cwd() / "var" / "alerts.sqlite").close()  # as `nabz alerts run` makes it
    assert main(["alerts", "list", "--config", str(elsewhere)]) == 0
    assert "no open alarms" in capsys.readouterr().out


def test_the_station_reports_a_missing_alerts_store_in_its_health_and_makes_none(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    add_users(config.station.db_path)
    store = Path(config.alerts.store_path)
    s = StationServer(config)
    s.start()
    try:
        status, _, text, _ = Agent(s.url).request("GET", "/healthz")
        missing = json.loads(text)["unreadable_stores"]
        assert status == 503 and "no alerts store at" in missing[str(store)]
        assert "[alerts] store_path" in missing[str(store)]
        assert not store.exists()
        AlertStore(store).close()  # the alerts service starts and makes it
        status, _, text, _ = Agent(s.url).request("GET", "/healthz")
        assert str(store) not in json.loads(text)["unreadable_stores"]
    finally:
        s.stop()
