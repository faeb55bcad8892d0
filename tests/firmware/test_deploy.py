"""What goes onto a board: boot.py and main.py as the board runs them (in MicroPython 1.27, real
asyncio, real time, fake hardware), the per-device configuration, and the frozen-build manifest."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.firmware.fw import DEVICE_MODULES, FIRMWARE, REPO, RunMicroPython, run_script

CONFIGS = sorted((FIRMWARE / "config").glob("*.json"))


def nabz_config() -> ModuleType:
    # Pure Python (json only), so CPython can load it too; the main.py test runs it in MicroPython.
    spec = importlib.util.spec_from_file_location("nabz_config", FIRMWARE / "nabz_config.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(run_micropython: RunMicroPython, config: Path | bytes, mode: str = "run") -> dict[str, Any]:
    got: dict[str, Any] = run_script(
        run_micropython, "mp_main.py", files={"/device.json": config}, args=[mode]
    )["main"]
    return got


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_main_starts_the_wearable_of_the_config(run_micropython: RunMicroPython, config: Path) -> None:
    got = run_main(run_micropython, config)
    device = json.loads(config.read_text())["device_id"]
    assert got["outcome"] == "stopped by the test"  # the loop ran until the test ended it
    assert got["name"] == f"Nabz {device}" and got["advertising"]
    assert got["wdt_timeout"] == 8000 and got["feeds"] == 25
    assert got["last_error"] is None
    if device.startswith("oxi"):
        assert got["chip_mode"] == 0x03 and got["chip_reads"] > 3  # the MAX30102 is sampling


def test_holding_boot_at_reset_is_safe_mode(run_micropython: RunMicroPython) -> None:
    got = run_main(run_micropython, CONFIGS[0], mode="safe")
    assert got["outcome"] == "returned" and got["wdt_timeout"] is None and not got["advertising"]


def test_a_bad_config_is_logged_and_the_board_restarts(run_micropython: RunMicroPython) -> None:
    got = run_main(run_micropython, b'{"device_id": "ecg-0001", "sensor": "ecg", "ecg_gian": 3}')
    assert got["outcome"] == "reset" and got["events"] == [["reset", None]]
    assert "ConfigError: device config: unknown keys ecg_gian" in got["last_error"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_example_configs_are_valid(config: Path) -> None:
    cfg = nabz_config().validate(json.loads(config.read_text()))
    assert cfg["device_id"] == config.stem and cfg["sensor"] in ("ecg", "oximeter")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sensor": "ecg"}, "device_id"),
        ({"device_id": "ecg-0001"}, "sensor must be one of"),
        ({"device_id": "a-much-too-long-id", "sensor": "ecg"}, "device_id"),
        ({"device_id": "ecg/1", "sensor": "ecg"}, "device_id"),
        ({"device_id": "ecg-0001", "sensor": "ecg", "mtu": "247"}, "mtu must be int"),
        ({"device_id": "ecg-0001", "sensor": "ecg", "ring_frames": 500}, "power of two"),
        ({"device_id": "ecg-0001", "sensor": "ecg", "ring_seconds": 30}, "a minute"),
        # A 248-sample ECG frame (MTU 517) is 514 bytes: more than one ATT value holds; the patch
        # restarted on every connection.
        ({"device_id": "ecg-0001", "sensor": "ecg", "mtu": 517}, r"mtu must be 23\.\.515"),
        # 300 s at 250 Hz overflow the ring's 16-bit index (and the heap): refused here, not a
        # boot loop later.
        (
            {"device_id": "ecg-0001", "sensor": "ecg", "ring_seconds": 300},
            r"ring_seconds must be 60\.\.76 at 250 Hz with ring_frames 512 .*300 s would take 159216 bytes",
        ),
        # 600 s of PPG fit the index but are a 360,000-byte ring: a MemoryError at every boot on
        # an ESP32-WROOM (the oximeter restarted in a loop).
        (
            {"device_id": "oxi-0001", "sensor": "oximeter", "ring_seconds": 600},
            r"ring_seconds must be 60\.\.64 at 100 Hz .*600 s would take 369216 bytes of heap, "
            r"and the ring may take 47616",
        ),
        ({"device_id": "oxi-0001", "sensor": "oximeter", "ring_seconds": 65}, r"60\.\.64 at 100 Hz"),
        # A bigger index leaves less room for samples; 1024 frames leave none for a minute.
        (
            {"device_id": "ecg-0001", "sensor": "ecg", "ring_frames": 1024},
            r"ring_frames 1024 take 18432 bytes",
        ),
        ({"device_id": "ecg-0001", "sensor": "ecg", "ring_frames": 256, "ring_seconds": 87}, r"60\.\.86 at"),
        ({"device_id": "ecg-0001", "sensor": "ecg", "ecg_rate_hz": 0}, "ecg_rate_hz must be > 0"),
        ({"device_id": "ecg-0001", "sensor": "ecg", "battery_low_pct": 2}, "battery_critical_pct"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(raw: dict[str, Any], message: str) -> None:
    cfg = nabz_config()
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.validate(raw)


def test_the_largest_allowed_values_are_accepted() -> None:
    cfg = nabz_config()
    assert (
        cfg.validate({"device_id": "ecg-0001", "sensor": "ecg", "mtu": 515, "ring_seconds": 76})["mtu"] == 515
    )
    assert (
        cfg.validate({"device_id": "oxi-0001", "sensor": "oximeter", "ring_seconds": 64})["ring_seconds"]
        == 64
    )
    assert cfg.validate({"device_id": "ecg-0001", "sensor": "ecg", "ring_frames": 256, "ring_seconds": 86})


def test_the_ring_budget_counts_what_the_ring_really_allocates(run_micropython: RunMicroPython) -> None:
    """The config's sizes must be nabz_ring's: rings built in MicroPython at the largest accepted
    settings take exactly what the check counted, within the budget (a ring it under-counted would
    pass the check and still fail at boot)."""
    got = run_script(run_micropython, "mp_ring_budget.py")["ring budget"]
    assert got["budget"] == 47_616
    assert [case["sensor"] for case in got["cases"]] == ["ecg", "oximeter", "ecg", "oximeter"]
    for case in got["cases"]:
        assert case["allocated"] == case["counted"] <= got["budget"], case
    # One more second is refused for each.
    assert all("ring_seconds must be 60.." in case["one_more"] for case in got["cases"]), got


def test_an_oximeter_ring_too_big_for_the_heap_stops_the_boot_with_the_reason(
    run_micropython: RunMicroPython,
) -> None:
    """The 600 s ring the docs allowed runs here (this heap grows on demand) but is a MemoryError
    at every boot on a WROOM, a restart loop with no reason given. The config check refuses it
    first: the board restarts as after any bad config, with the reason in /last_error.txt."""
    got = run_main(run_micropython, b'{"device_id": "oxi-0001", "sensor": "oximeter", "ring_seconds": 600}')
    assert got["outcome"] == "reset" and not got["advertising"]
    assert "ConfigError: device config: ring_seconds must be 60..64 at 100 Hz" in got["last_error"]
    assert "600 s would take 369216 bytes of heap" in got["last_error"]


def test_the_manifest_freezes_every_device_module() -> None:
    listed = set(re.findall(r'^module\("([^"]+)"\)', (FIRMWARE / "manifest.py").read_text(), re.MULTILINE))
    on_filesystem = {"boot.py", "main.py"}  # kept as files: safe mode and updates need them
    assert listed == {p.name for p in DEVICE_MODULES} - on_filesystem


def test_make_deploy_copies_what_the_board_needs() -> None:
    make = (REPO / "Makefile").read_text()
    assert (
        "FIRMWARE_FILES := $(filter-out firmware/__init__.py firmware/manifest.py,$(wildcard firmware/*.py))"
        in make
    )
    assert "cp firmware/config/$(DEVICE).json :device.json" in make
    assert "esptool" in make and "mpremote" in make
