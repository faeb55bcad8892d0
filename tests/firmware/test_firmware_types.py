"""The firmware type-checks against micropython-esp32-stubs (MicroPython 1.27's ESP32 API).

The stubs are installed with `pip install --target .typings/esp32` (`make esp32-stubs`), never into
the virtual environment, where their stdlib would shadow CPython's. The firmware modules are
checked as they sit on a board: flat, in one folder, with the codec seen through nabz_codec.pyi.
Known stub bugs are worked around with `# type: ignore[...]` at the call (docs/firmware.md); with
warn_unused_ignores, a fixed stub makes this test fail so the workaround can go.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.fw import FIRMWARE, REPO

STUBS = REPO / ".typings" / "esp32"
MODULES = sorted(p for p in FIRMWARE.glob("*.py") if p.name not in {"__init__.py", "manifest.py"})


def config(tmp: Path) -> Path:
    ini = tmp / "mypy_esp32.ini"
    ini.write_text(
        "[mypy]\n"
        "python_version = 3.11\n"
        f"mypy_path = {STUBS}\n"
        f"custom_typeshed_dir = {STUBS}\n"
        "check_untyped_defs = True\n"
        "warn_unreachable = True\n"
        "warn_unused_ignores = True\n"
        f"cache_dir = {tmp / '.mypy_cache'}\n"
        "\n[mypy-machine,bluetooth,vfs,_mpy_shed.*]\n"
        "ignore_errors = True\n"
    )
    return ini


def mypy(tmp: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    if not (STUBS / "machine.pyi").is_file():
        pytest.fail(f"{STUBS} has no ESP32 stubs: run `make esp32-stubs`", pytrace=False)
    board = tmp / "board"
    board.mkdir()
    for f in files:
        shutil.copy(f, board / f.name)
    shutil.copy(FIRMWARE / "nabz_codec.pyi", board / "nabz_codec.pyi")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config(tmp)), "."],
        cwd=board,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_firmware_type_checks_against_the_esp32_stubs(tmp_path: Path) -> None:
    proc = mypy(tmp_path, MODULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no issues found in {len(MODULES)} source files" in proc.stdout


def test_a_wrong_machine_call_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "nabz_bad.py"
    bad.write_text(
        "import machine\n\n\ndef f():\n    machine.Timer(0).init(mode=machine.Timer.PERIODIC, freq='250')\n"
    )
    proc = mypy(tmp_path, [bad])
    assert proc.returncode == 1
    assert "nabz_bad.py:5: error" in proc.stdout


def test_the_gatts_notify_stub_bug_is_still_there() -> None:
    """If this fails, the stubs were fixed: remove the ignores in nabz_ble.py and docs/firmware.md."""
    text = (STUBS / "bluetooth.pyi").read_text()
    assert "def gatts_notify(self, value_handle: memoryview, data: bytes, /) -> None:" in text
