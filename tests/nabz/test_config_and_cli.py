"""Configuration (TOML + environment, defaults with no file) and the `nabz` command's help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nabz.config import ConfigError, load, redacted

ROOT = Path(__file__).parents[2]


def test_defaults_work_with_no_file_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load(environ={})
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883" and cfg.alerts.stale_after_s == 300
    assert cfg.alerts.timezone == "Asia/Karachi"


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "nabz.toml"
    f.write_text('site = "lahore"\n[mqtt]\nurl = "mqtts://broker:8883"\n[enrolment]\n"ecg-1" = "p-1"\n')
    cfg = load(
        f, environ={"NABZ_ALERTS__SPO2_LOW_PCT": "88", "NABZ_MQTT__USERNAME": "gw-1", "NABZ_SITE": "karachi"}
    )
    assert cfg.site == "karachi"
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883 and cfg.mqtt.username == "gw-1"
    assert cfg.alerts.spo2_low_pct == 88.0
    assert cfg.enrolment == {"ecg-1": "p-1"}


def test_mistakes_are_named(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[mqtt]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match="urll"):
        load(f, environ={})
    f.write_text("[alerts]\nspo2_low_pct = 'low'\n")
    with pytest.raises(ConfigError, match="spo2_low_pct"):
        load(f, environ={})
    f.write_text("site = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml", environ={})


def test_secrets_are_redacted() -> None:
    cfg = load(environ={"NABZ_MQTT__PASSWORD": "hunter2", "NABZ_INFLUX__TOKEN": "tok"})
    shown = json.dumps(redacted(cfg))
    assert "hunter2" not in shown and 'tok"' not in shown and shown.count("***") == 2


def _nabz(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nabz.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_help_names_every_command_and_the_demo_options() -> None:
    top = _nabz("--help")
    assert top.returncode == 0
    for command in ("demo", "gateway", "ingest", "alerts", "enrol", "deadletter", "config"):
        assert command in top.stdout
    demo = _nabz("demo", "--help").stdout
    for option in ("--patients", "--duration", "--seed", "--broker", "--influx", "--report"):
        assert option in demo


def test_config_command_shows_environment_overrides_without_secrets(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, NABZ_MQTT__PASSWORD="s3cret-pass", NABZ_GATEWAY__ID="gw-7", NABZ_CONFIG="")
    out = _nabz("config", env=env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["gateway"]["id"] == "gw-7" and shown["mqtt"]["password"] == "***"
    assert "s3cret-pass" not in out.stdout + out.stderr


def test_a_configuration_error_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[gateway]\nspool_max_mb = 'lots'\n")
    out = _nabz("config", "--config", str(f))
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "spool_max_mb" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_service_stops_on_sigint_or_sigterm_even_started_with_sigint_ignored(
    tmp_path: Path, sig: str
) -> None:
    """A shell starts a background job (`nabz ingest run &` in a script) with SIGINT ignored, and
    Python keeps an inherited "ignore": Ctrl-C or `kill -INT` then did nothing."""
    import signal
    import time

    from nabz.broker import free_port

    cfg = tmp_path / "nabz.toml"
    cfg.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n'  # nobody there: it keeps retrying
        f'[ingest]\nstore_path = "{tmp_path / "ingest.sqlite"}"\n'
    )
    cfg.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nabz.cli", "ingest", "run", "--config", str(cfg)],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not (tmp_path / "ingest.sqlite").exists():  # running: its store is open
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # past start-up, into its run loop
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
