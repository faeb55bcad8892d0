"""What an installer's walk-through found (review 48), each as the installer met it: a token sent
along a redirect to another host (and, found beside it, the SMS provider's), the SMS outbox readable by every user, and tracebacks where one
line saying what to do was due."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alerts.notify import HttpSmsNotifier, OutboxNotifier
from dashboards.push import PushError, push
from ingest.influxsetup import InfluxSetupError, setup_influx
from nabz.config import InfluxConfig, SmsHttpConfig

ROOT = Path(__file__).parents[2]


class _Server:
    """A loopback HTTP server: `redirect_to` set, it answers every request `code` to there (as a
    misconfigured proxy or a hostile server could); otherwise 404, recording what it received."""

    def __init__(self, redirect_to: str | None = None, code: int = 307) -> None:
        self.authorizations: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if redirect_to is not None:
                    self.send_response(code)
                    self.send_header("Location", redirect_to + self.path)
                else:
                    outer.authorizations.append(self.headers.get("Authorization"))
                    self.send_response(404)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def redirected() -> Iterator[tuple[_Server, _Server]]:
    """(the server the configuration names, which redirects; the other host it redirects to)"""
    other = _Server()
    first = _Server(redirect_to=other.url)
    yield first, other
    first.close()
    other.close()


def test_influx_setup_does_not_send_its_token_along_a_redirect(redirected: tuple[_Server, _Server]) -> None:
    first, other = redirected
    config = InfluxConfig(url=first.url, token="operator-secret-token", org="nabz", bucket="nabz")
    with pytest.raises(InfluxSetupError):
        list(setup_influx(config))
    assert other.authorizations == [None]  # the redirect was followed, without the token


def test_dashboards_push_does_not_send_its_token_along_a_redirect(
    redirected: tuple[_Server, _Server],
) -> None:
    first, other = redirected
    with pytest.raises(PushError):
        push(first.url, "glsa_secret_grafana_token", {})
    assert other.authorizations and set(other.authorizations) == {None}


def test_the_sms_provider_token_does_not_go_along_a_redirect() -> None:
    """A POST answered 302 is followed as a GET (urllib, like browsers): the provider's token or
    account credentials must not go with it."""
    other = _Server()
    first = _Server(redirect_to=other.url, code=302)
    try:
        for kind in ("json", "twilio"):
            cfg = SmsHttpConfig(url=first.url + "/sms", kind=kind, token="sms-secret", account="AC1")
            HttpSmsNotifier(cfg).send("+923001234567", "NABZ test", "k-1", 0.0)
    finally:
        first.close()
        other.close()
    assert other.authorizations == [None, None]


def test_the_sms_outbox_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """It holds patient ids and ACK codes, like the alerts store (docs/security.md I7)."""
    path = tmp_path / "outbox" / "sms.jsonl"
    old = os.umask(0o022)
    try:
        assert OutboxNotifier(path).send("+923001234567", "NABZ HIGH p-0001 ... ACK 4821", "k-1", 0.0).ok
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)  # written before this was fixed
    assert OutboxNotifier(path).send("+923001234567", "NABZ LOW p-0001 ... ACK 1910", "k-2", 60.0).ok
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().splitlines()) == 2


def _nabz(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nabz.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        input=stdin, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("command", "section", "stdin"),
    [
        (["enrol", "ecg-0001", "p-0001"], '[ingest]\nstore_path = "{dir}/nabz.sqlite"\n', ""),
        (
            ["station", "user", "add", "sana", "--role", "nurse", "--password-stdin"],
            '[station]\ndb_path = "{dir}/station.sqlite"\n',
            "a-long-enough-password-1\n",
        ),
    ],
)
def test_root_on_the_service_users_files_gets_one_line_saying_to_run_as_that_user(
    tmp_path: Path, command: list[str], section: str, stdin: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    theirs = tmp_path / "var-lib-nabz"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)  # the service user's, as systemd's StateDirectory= makes it
    cfg = tmp_path / "nabz.toml"
    cfg.write_text('site = "demo"\n' + section.format(dir=theirs))
    out = _nabz(*command, "--config", str(cfg), stdin=stdin)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"sudo -u nabz nabz {' '.join(command)} --config {cfg}" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and list(theirs.iterdir()) == []


def test_alerts_run_that_would_text_the_demo_number_is_a_configuration_error(tmp_path: Path) -> None:
    cfg = tmp_path / "nabz.toml"
    cfg.write_text(
        f'site = "demo"\n[alerts]\nnotifiers = ["gsm"]\nstore_path = "{tmp_path / "alerts.sqlite"}"\n'
    )
    out = _nabz("alerts", "run", "--config", str(cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("nabz: configuration error: ") and "placeholder number" in out.stderr


def test_gateway_scan_without_bluez_says_so_in_one_line() -> None:
    out = _nabz(
        "gateway", "scan", "--seconds", "1", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("nabz gateway scan: ") and "bluetoothd" in out.stderr
