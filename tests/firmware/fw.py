"""Running a firmware test script in MicroPython and reading what it measured.

Scripts under tests/firmware/mp/ import the firmware modules (firmware/*.py, copied to /lib as a
board would have them) and the fake hardware under tests/firmware/fakes/, and print one
``JSON {"name": ..., "value": ...}`` line per result (fakes/mptest.py ``emit``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIRMWARE = REPO / "firmware"
FAKES = HERE / "fakes"
SCRIPTS = HERE / "mp"
# What a board's flash holds: every firmware module but the CPython package marker.
DEVICE_MODULES = sorted(p for p in FIRMWARE.glob("*.py") if p.name not in {"__init__.py", "manifest.py"})

RunMicroPython = Callable[..., subprocess.CompletedProcess[str]]


def run_script(
    run_micropython: RunMicroPython,
    name: str,
    files: Mapping[str, PathLike[str] | bytes] | None = None,
    args: list[str] | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    """Run tests/firmware/mp/<name> under MicroPython; its results by name. Fails on a traceback."""
    proc = run_micropython(
        SCRIPTS / name,
        libs=[*DEVICE_MODULES, FAKES],
        files=files,
        args=args or [],
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{name} failed\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    out: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("JSON "):
            item = json.loads(line[5:])
            out[item["name"]] = item["value"]
    return out
