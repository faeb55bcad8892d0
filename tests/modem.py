"""A scripted GSM modem (tests/alerts/fake_modem.py) in its own process on a pty pair, for tests
outside tests/alerts that need one: `start_modem(tmp_path, errors=[331, -1])`."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]


@dataclass
class ModemProcess:
    port: str  # the device path to open, as /dev/ttyUSB2 would be
    log: Path  # one JSON line per command and per SMS
    proc: subprocess.Popen[bytes]
    slave: int

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def sms(self) -> list[dict[str, Any]]:
        """Messages the network took, in order: {"to", "text", ...}."""
        return [e["sms"] for e in self.entries() if "sms" in e]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        os.close(self.slave)


def start_modem(directory: Path, name: str = "modem", **script: Any) -> ModemProcess:
    master, slave = pty.openpty()
    tty.setraw(slave)
    log = directory / f"{name}.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "alerts" / "fake_modem.py"), str(master), json.dumps(script), str(log)],
        pass_fds=[master], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    os.close(master)
    return ModemProcess(os.ttyname(slave), log, proc, slave)
