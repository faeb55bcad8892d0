"""Real servers for tests: mosquitto and VictoriaMetrics on free loopback ports.

A test that needs one of them and cannot start it fails with the command that installs it; it
never skips. `make test` installs both (Debian packages) when run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from nabz.broker import free_port

__all__ = ["Mosquitto", "VictoriaMetrics", "require"]


def require(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise RuntimeError(
            f"{command} is not installed; run `make test` as root, or: sudo apt-get install -y {package}"
        )
    return path


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout_s} s")


class Mosquitto:
    """A mosquitto broker with persistence (so a graceful restart keeps queued QoS 1 messages)."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        self.binary = require("mosquitto", "mosquitto")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            # With the defaults a slow QoS 1 subscriber silently loses messages (REALPARTS.md).
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            # As root, mosquitto drops to its own user, which cannot write under pytest's private
            # temporary directory: the persistence file would silently never be saved.
            f"{'user root' + chr(10) if os.geteuid() == 0 else ''}"
            f"{self.extra_config}"
        )

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        _wait_port(self.port, 10, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file on SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if "Error saving" in self.log.read_text(errors="replace"):
            raise RuntimeError(f"mosquitto could not save its persistence file; see {self.log}")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class VictoriaMetrics:
    """VictoriaMetrics: accepts influxdb-client's `/api/v2/write`; read back with `/api/v1/export`."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = require("victoria-metrics", "victoria-metrics")
        self.extra_args = extra_args
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "victoria-metrics.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"-storageDataPath={self.workdir / 'data'}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=100y",
                    "-search.latencyOffset=0s",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=log,
            )
        _wait_port(self.port, 15, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """All series matching a selector, as VictoriaMetrics' JSON-lines export."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line.strip()]

    def count_points(self, match: str) -> dict[tuple[str, ...], int]:
        """Points per series (metric name and sorted labels), after a flush."""
        out: dict[tuple[str, ...], int] = {}
        for series in self.export(match):
            metric = series["metric"]
            key = tuple(f"{k}={metric[k]}" for k in sorted(metric))
            out[key] = out.get(key, 0) + len(series["timestamps"])
        return out
