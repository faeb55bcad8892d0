"""`nabz demo` serves the nurse page on localhost and prints where, with its demo account."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.dashboards.station.client import Agent, Events

ROOT = Path(__file__).parents[3]


def test_the_demo_prints_the_nurse_page_and_the_page_shows_its_patients_live(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nabz.cli", "demo", "--duration", "10", "--patients", "2", "--no-live",
         "--data-dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "nurse page:" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the demo ended before printing the nurse page"
        m = re.search(r"nurse page: (http://127\.0\.0\.1:\d+)\s+\(log in as (\S+) / (\S+)\)", line)
        assert m, line
        url, user, password = m.groups()
        agent = Agent(url)
        status, _, _, landed = agent.login(user, password)
        assert status == 200 and landed == url + "/"
        health = json.loads(agent.request("GET", "/healthz")[2])
        assert health["mqtt"] == "connected" and health["patients"] == 2
        ev = Events(agent, "/events")
        assert [t["patient"] for t in ev.until("snapshot")["tiles"]] == ["p-0001", "p-0002"]
        tile = ev.until("tile", lambda d: d["hr"] is not None and not d["stale"])  # live values arrive
        assert 30 <= tile["hr"]["value"] <= 200
        ev.resp.close()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
