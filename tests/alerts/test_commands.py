"""`nabz alerts ...` as an operator types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts.engine import AlertEngine
from alerts.store import AlertStore
from nabz import config as config_mod
from nabz.cli import main
from tests.alerts.helpers import T0

TOML = """
site = "demo"
[alerts]
store_path = "{store}"
outbox_path = "{outbox}"
notifiers = ["outbox"]
[alerts.patients."p-0007"]
spo2_target_pct = [88, 92]
label = "Bed 7"
[oncall]
timezone = "Asia/Karachi"
team = ["aisha", "bilal"]
[oncall.people]
aisha = {{ phone = "+923001111111" }}
bilal = {{ phone = "+923002222222", language = "ur" }}
[[oncall.rotations]]
role = "primary"
members = ["aisha", "bilal"]
start = "2026-11-02T08:00"
shift_h = 12
[[oncall.overrides]]
person = "bilal"
start = "2026-11-25T20:00"
end = "2026-11-26T08:00"
[escalation]
all_clear = true
[escalation.high]
renotify_s = 120
steps = [{{ after_s = 0, notify = ["primary"] }}, {{ after_s = 120, notify = ["team"] }}]
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    f = tmp_path / "nabz.toml"
    f.write_text(TOML.format(store=tmp_path / "alerts.sqlite", outbox=tmp_path / "sms.jsonl"))
    return f


def test_the_documented_configuration_loads(cfg_file: Path) -> None:
    cfg = config_mod.load(cfg_file, environ={})
    assert cfg.alerts.patients["p-0007"].spo2_target_pct == (88.0, 92.0)
    assert cfg.escalation.high.steps[1].notify == ["team"] and cfg.escalation.all_clear


def test_oncall_shows_rotation_and_override(cfg_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "oncall", "--at", "2026-11-25T10:00", "--config", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert (
        "primary  aisha +923001111111" in out and "team     aisha +923001111111, bilal +923002222222" in out
    )
    assert main(["alerts", "oncall", "--at", "2026-11-25T21:00", "--config", str(cfg_file)]) == 0
    assert "primary  bilal" in capsys.readouterr().out  # the override


def test_silence_is_queued_for_the_service_and_applied_by_it(
    cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_mod.load(cfg_file, environ={})
    store = AlertStore(cfg.alerts.store_path)  # made by the service (the commands never make it)
    args = ["alerts", "silence", "p-0007", "sensor_off", "--for", "45m", "--by", "aisha", "--wait", "0",
            "--config", str(cfg_file)]  # fmt: skip
    assert main(args) == 0
    assert "queued as command 1" in capsys.readouterr().out
    AlertEngine(cfg, store).tick(T0)  # the service picks it up
    (s,) = store.silences(T0)
    assert (s.patient, s.kind, s.ends_at - s.starts_at, s.created_by) == (
        "p-0007",
        "sensor_off",
        2700.0,
        "aisha",
    )
    assert main(["alerts", "silences", "--config", str(cfg_file)]) == 0


def test_test_sms_goes_through_the_configured_notifier(cfg_file: Path, tmp_path: Path) -> None:
    assert main(["alerts", "test-sms", "+923001111111", "--config", str(cfg_file)]) == 0
    (line,) = (tmp_path / "sms.jsonl").read_text().splitlines()
    assert json.loads(line)["to"] == "+923001111111"
