"""The gateway's commands as an operator uses them: the systemd unit, `status` while it runs and
when the broker is away, `scan` over a virtual radio in another process (HCI over TCP), and
`run` with structured logs and a clean SIGTERM."""

from __future__ import annotations

import configparser
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from hardware.ble_peripherals import peripheral_address
from nabz.broker import free_port
from nabz.cli import build_parser
from nabz.config import load
from tests.gateway.helpers import Collector, running
from tests.servers import Mosquitto

ROOT = Path(__file__).parents[2]


def _nabz(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nabz.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def test_the_systemd_unit_runs_this_installation_with_a_command_line_that_parses() -> None:
    out = _nabz("gateway", "unit", "--config", "/etc/nabz/gw.toml")
    assert out.returncode == 0, out.stderr
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(out.stdout)
    service = unit["Service"]
    assert service["Restart"] == "always" and unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["StateDirectory"] == "nabz" and "bluetooth" in service["SupplementaryGroups"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "nabz" and Path(argv[0]).parent == Path(sys.executable).parent
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.action, args.config, args.log_format) == (
        "gateway",
        "run",
        "/etc/nabz/gw.toml",
        "json",
    )


def _config(tmp_path: Path, url: str) -> Path:
    f = tmp_path / "gateway.toml"
    f.write_text(
        f'site = "test"\n[mqtt]\nurl = "{url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 0.5\n'
        f'[gateway]\nid = "gw-cmd"\nspool_path = "{tmp_path / "spool.sqlite"}"\nstatus_interval_s = 1.0\n'
    )
    return f


def test_status_shows_spool_and_devices_while_running_and_says_when_the_broker_is_away(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg_file = _config(tmp_path, mosquitto.url)
    gw = Gateway(load(cfg_file, environ={}), VirtualTransport(make_patients(1, 8)[0].devices))
    server = Collector("127.0.0.1", mosquitto.port)  # stands in for ingest: the readings are taken
    with running(gw):
        time.sleep(2.5)
        ok = _nabz("gateway", "status", "--config", str(cfg_file), "--json")
        human = _nabz("gateway", "status", "--config", str(cfg_file))
        mosquitto.stop()
        time.sleep(2.5)
        away = _nabz("gateway", "status", "--config", str(cfg_file), "--json")
        mosquitto.start()
    gw.stop()
    server.close()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["spool"]["published_readings"] > 500
    assert [(d["device"], d["state"]) for d in report["devices"]] == [
        ("ecg-0001", "connected"),
        ("oxi-0001", "connected"),
    ]
    assert "ecg-0001" in human.stdout and "OK" in human.stdout
    assert away.returncode == 1
    late: dict[str, Any] = json.loads(away.stdout)
    assert late["problems"] == ["not connected to the broker"] and late["spool"]["messages"] > 0


def test_scan_lists_wearables_on_a_virtual_radio_in_another_process(tmp_path: Path) -> None:
    port = free_port()
    radio = subprocess.Popen(
        [sys.executable, "-m", "hardware.ble_peripherals", "--patients", "1", "--hci-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        assert radio.stdout is not None
        for line in radio.stdout:
            if line.startswith(b"ready"):
                break
        cfg = tmp_path / "scan.toml"
        cfg.write_text(f'[[gateway.devices]]\nid = "ecg-0001"\naddress = "{peripheral_address(0)}"\n'
                       '[[gateway.devices]]\nid = "oxi-9999"\nname = "Nabz oxi-9999"\n')  # fmt: skip
        out = _nabz("gateway", "scan", "--config", str(cfg), "--hci", f"tcp-client:127.0.0.1:{port}",
                    "--seconds", "2", "--json")  # fmt: skip
    finally:
        radio.send_signal(signal.SIGINT)
        radio.wait(10)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    seen = {r["address"]: r for r in found["seen"]}
    assert seen[peripheral_address(0)]["enrolled_as"] == "ecg-0001"
    assert (
        seen[peripheral_address(1)]["name"] == "Nabz oxi-0001"
        and seen[peripheral_address(1)]["enrolled_as"] is None
    )
    # (The Nabz 128-bit UUID goes in the scan response, which bumble's virtual controller replaces
    # with the advertising data; the Heart Rate service is in the advertisement itself.)
    assert "0000180d-0000-1000-8000-00805f9b34fb" in seen[peripheral_address(0)]["services"]
    assert found["enrolled_not_seen"] == ["oxi-9999"]


def test_run_logs_json_lines_and_says_goodbye_on_sigterm(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg_file = _config(tmp_path, mosquitto.url)
    seen = Collector("127.0.0.1", mosquitto.port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nabz.cli", "-v", "gateway", "run", "--config", str(cfg_file),
         "--transport", "virtual", "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert seen.wait_for(lambda: sum(seen.tally().values()) > 0, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert seen.wait_for(lambda: (seen.last_status() or {}).get("reason") == "shutdown", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        seen.close()
    assert proc.stderr is not None
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert any("started" in x["msg"] and x["logger"] == "gateway.service" for x in lines)
    assert any(x["level"] == "warning" and "SIMULATED" in x["msg"] for x in lines)  # said loudly


def test_a_gateway_configured_without_a_transport_uses_its_enrolled_wearables_not_simulated_ones(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The installer's configuration names no transport: the gateway uses BLE and its enrolled
    wearables; with none enrolled it says so and stops. Until 2026-11-27 the default was the
    virtual transport: simulated vital signs went to the broker under the real devices' ids."""
    cfg_file = _config(tmp_path, mosquitto.url)
    seen = Collector("127.0.0.1", mosquitto.port)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "nabz.cli", "gateway", "run", "--config", str(cfg_file)],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
        time.sleep(0.5)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "no enrolled devices ([[gateway.devices]]" in run.stderr
        assert seen.tally() == {} and seen.statuses == []  # nothing was sent
    finally:
        seen.close()
