"""An alerts service whose notifiers reach no phone (the outbox only, the default) texts nobody:
it says so at start and in its metrics, outside the demo, and still runs. Before, it started
without a word and looked healthy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from alerts.notify import OutboxNotifier
from alerts.service import AlertService
from nabz.cli import main
from nabz.config import AlertsConfig, Config, OncallConfig, PersonConfig
from tests.alerts.helpers import Recorder

WARNING = "no notifier reaches a phone"


def _config(tmp_path: Path, *, on_call: bool) -> Config:
    people = {"aisha": PersonConfig(phone="+923001111111")} if on_call else {}
    return Config(
        site="demo",
        alerts=AlertsConfig(
            store_path=str(tmp_path / "alerts.sqlite"), outbox_path=str(tmp_path / "sms.jsonl")
        ),
        oncall=OncallConfig(people=people),
    )


def _phone_gauge(service: AlertService) -> float:
    (metric,) = [m for m in service.metrics() if m.name == "nabz_alerts_phone_notifier"]
    ((_labels, value),) = metric.samples
    return value


def test_outbox_only_with_doctors_on_call_warns_at_start_and_in_the_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        service = AlertService(
            _config(tmp_path, on_call=True), notifiers=[OutboxNotifier(tmp_path / "o.jsonl")]
        )
    assert any(WARNING in r.getMessage() and "outbox file only" in r.getMessage() for r in caplog.records)
    assert _phone_gauge(service) == 0.0
    service.store.close()


def test_a_notifier_that_reaches_a_phone_is_quiet_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        service = AlertService(
            _config(tmp_path, on_call=True), notifiers=[Recorder("gsm"), OutboxNotifier(tmp_path / "o.jsonl")]
        )
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    assert _phone_gauge(service) == 1.0
    service.store.close()


def test_the_demo_runs_on_the_outbox_without_a_word(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        service = AlertService(_config(tmp_path, on_call=False))  # the demo's notifiers and number
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
    service.store.close()


def test_alerts_run_on_the_default_configuration_warns_and_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nabz alerts run` is never the demo: with nothing set, it says nobody gets a text."""
    served: list[object] = []
    monkeypatch.setattr("alerts.commands.serve", lambda *services: served.extend(services) or 0)
    cfg = tmp_path / "nabz.toml"
    cfg.write_text(f'site = "demo"\n[alerts]\nstore_path = "{tmp_path / "alerts.sqlite"}"\n')
    with caplog.at_level(logging.WARNING):
        assert main(["alerts", "run", "--config", str(cfg)]) == 0
    assert any(WARNING in r.getMessage() and "nobody is on call" in r.getMessage() for r in caplog.records)
    assert len(served) == 1
