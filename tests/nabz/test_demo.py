"""`nabz demo` as a user runs it: the real command, its embedded broker and store, its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_demo_catches_the_desaturation_texts_the_doctor_and_loses_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "nabz.cli", "demo", "--duration", "20", "--patients", "3",
            "--report", str(report_path), "--data-dir", str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    readings = report["readings"]
    assert readings["generated"] > 3 * 20 * 350 * 0.9  # ~20 s of ECG + PPG from three patients
    assert readings["generated"] == readings["published"] == readings["stored"]
    assert readings["dead_lettered"] == 0

    spo2 = [a for a in report["alarms"] if a["kind"] == "spo2_low"]
    assert [(a["patient"], a["priority"]) for a in spo2] == [("p-0002", "high")]
    assert not [a for a in report["alarms"] if a["patient"] == "p-0001"], "the well patient raised an alarm"
    texts = [n["text"] for n in report["notifications"]]
    assert any("p-0002" in t and "SpO2" in t for t in texts)
    assert all(len(t) <= 160 for t in texts)
    outbox = (tmp_path / "demo" / "outbox" / "sms.jsonl").read_text().splitlines()
    assert len(outbox) == len(report["notifications"])
