"""Secrets hygiene as a user meets it: a configuration file with a secret that others can read is
refused (with the fix in the message); secrets never show in `nabz config`, `--help` or logs,
even when a modem echoes the SIM PIN back in an error."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
import tty
from pathlib import Path

import pytest

from nabz.cli import build_parser
from nabz.secrets import UnsafeFileError, create_private, redact_logs, safe_url, write_private

ROOT = Path(__file__).parents[2]
SECRETS = {"password": "pw-Zq81xK", "token": "tok-9fJ2mm", "sim_pin": "4321", "url_pw": "urlpw-77QQ"}
CONFIG = f"""site = "demo"
[mqtt]
url = "mqtts://gw-0001:{SECRETS["url_pw"]}@broker.example:8883"
username = "gw-0001"
password = "{SECRETS["password"]}"
[influx]
url = "http://127.0.0.1:8086"
token = "{SECRETS["token"]}"
[modem]
sim_pin = "{SECRETS["sim_pin"]}"
"""


def nabz(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nabz.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o666])
def test_a_config_file_with_secrets_that_others_can_read_or_change_is_refused(
    tmp_path: Path, mode: int
) -> None:
    f = tmp_path / "nabz.toml"
    f.write_text(CONFIG)
    f.chmod(mode)
    out = nabz("config", "--config", str(f))
    assert out.returncode == 2
    assert f"chmod 600 {f}" in out.stderr and f"{mode:04o}" in out.stderr
    assert all(s not in out.stdout + out.stderr for s in SECRETS.values())


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_private_config_files_are_used_and_shown_with_secrets_redacted(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "nabz.toml"
    f.write_text(CONFIG)
    f.chmod(mode)
    out = nabz("config", "--config", str(f))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["mqtt"]["password"] == shown["influx"]["token"] == shown["modem"]["sim_pin"] == "***"
    assert shown["mqtt"]["url"] == "mqtts://gw-0001:***@broker.example:8883"
    assert all(s not in out.stdout + out.stderr for s in SECRETS.values())


def test_a_config_without_secrets_may_be_world_readable(tmp_path: Path) -> None:
    f = tmp_path / "nabz.toml"
    f.write_text('site = "demo"\n[mqtt]\nurl = "mqtts://broker.example:8883"\n')
    f.chmod(0o644)
    assert nabz("config", "--config", str(f)).returncode == 0


def test_no_help_text_shows_a_secret_from_the_environment() -> None:
    env = {"NABZ_MQTT__PASSWORD": SECRETS["password"], "NABZ_INFLUX__TOKEN": SECRETS["token"]}
    texts = []

    def walk(p: object) -> None:
        texts.append(p.format_help())  # type: ignore[attr-defined]
        for action in getattr(p, "_actions", []):
            for child in (
                (getattr(action, "choices", None) or {}).values()
                if hasattr(action, "_name_parser_map")
                else []
            ):
                walk(child)

    old = dict(os.environ)
    os.environ.update(env)
    try:
        walk(build_parser())
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert len(texts) > 40  # every command and sub-command
    assert all(s not in t for t in texts for s in SECRETS.values())
    assert nabz("gateway", "run", "--help", env=env).stdout.count("--config") >= 1


def test_log_lines_show_configured_secrets_as_stars() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("nabz-test-redaction")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        redact_logs(
            {"mqtt": {"password": SECRETS["password"], "url": f"mqtt://u:{SECRETS['url_pw']}@h:1"}}, logger
        )
        logger.error(
            "could not log in as gw-0001/%s to %s", SECRETS["password"], f"mqtt://u:{SECRETS['url_pw']}@h:1"
        )
        try:
            raise RuntimeError(f"refused: {SECRETS['password']}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "could not log in as gw-0001/***" in text and "refused: ***" in text
    assert SECRETS["password"] not in text and SECRETS["url_pw"] not in text
    assert safe_url(f"mqtts://u:{SECRETS['url_pw']}@h:8883/x?key=1") == "mqtts://h:8883/x"


def test_files_written_with_secrets_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "s.toml", "token = 'x'\n")
    finally:
        os.umask(old)
    assert (tmp_path / "s.toml").stat().st_mode & 0o777 == 0o600


def test_a_secret_is_never_written_through_a_link_another_user_planted(tmp_path: Path) -> None:
    """Another local user who knows where a secret goes (`--out DIR`'s accounts.toml, the
    station's database) puts a symbolic link there first. Before, write_private followed it and
    wrote the secret over whatever it named (as root: any file on the machine)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    link = tmp_path / "accounts.toml"
    link.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        write_private(link, "gw-0001 = 'secret'\n")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        create_private(link)
    assert victim.read_text() == "untouched\n" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accounts.toml", "victim.txt"]  # no temporary left


def test_a_file_or_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    """A file another user made where a secret or a store goes would stay theirs to read; a
    directory of theirs lets them swap the file after the check. Before, both were used."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    nobody = 65534
    theirs = tmp_path / "station.sqlite"
    theirs.write_bytes(b"")
    os.chown(theirs, nobody, nobody)
    with pytest.raises(UnsafeFileError, match=f"belongs to user id {nobody}"):
        create_private(theirs)
    with pytest.raises(UnsafeFileError, match=f"belongs to user id {nobody}"):
        write_private(theirs, "token = 'secret'\n")
    assert theirs.read_bytes() == b""
    their_dir = tmp_path / "theirs"
    their_dir.mkdir()
    os.chown(their_dir, nobody, nobody)
    with pytest.raises(UnsafeFileError, match=f"{their_dir} belongs to user id {nobody}"):
        write_private(their_dir / "accounts.toml", "token = 'secret'\n")
    with pytest.raises(UnsafeFileError, match=f"{their_dir} belongs to user id {nobody}"):
        create_private(their_dir / "nabz.sqlite")
    assert list(their_dir.iterdir()) == []


def test_a_directory_anyone_may_change_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeFileError, match="writable by every user"):
        write_private(shared / "accounts.toml", "token = 'secret'\n")
    with pytest.raises(UnsafeFileError, match="writable by every user"):
        create_private(shared / "nabz.sqlite")
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot remove or rename our files there
    write_private(shared / "accounts.toml", "token = 'secret'\n")
    assert (shared / "accounts.toml").stat().st_mode & 0o777 == 0o600


def test_a_secret_written_over_a_readable_file_is_not_seen_by_who_had_it_open(tmp_path: Path) -> None:
    """A file others could read was opened by one of them; then Nabz writes a secret to that path.
    Before, it truncated and wrote that same file, so the open reader read the new secret."""
    path = tmp_path / "accounts.toml"
    path.write_text("old = 1\n")
    path.chmod(0o644)
    with path.open() as reader:
        write_private(path, "gw-0001 = 'new-secret'\n")
        assert reader.read() == "old = 1\n"
    assert path.read_text() == "gw-0001 = 'new-secret'\n" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["accounts.toml"]


def test_a_store_that_others_could_read_is_made_private(tmp_path: Path) -> None:
    """A database made before stores were private (or copied with a loose umask) is made 0600
    when Nabz next opens it, not left readable by every user."""
    from dashboards.station.db import StationDB

    path = tmp_path / "station.sqlite"
    StationDB(path).close()
    path.chmod(0o644)
    StationDB(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)  # shared with a service's group on purpose, as a configuration may be: kept
    StationDB(path).close()
    assert path.stat().st_mode & 0o777 == 0o640


def test_the_stores_of_health_data_are_private_files_whatever_the_umask(tmp_path: Path) -> None:
    """The gateway spool, the ingest store, the alerts store and the nurse station's accounts:
    other users of the machine can read none of them (nor their write-ahead logs)."""
    from alerts.store import AlertStore
    from dashboards.station.db import StationDB
    from gateway.spool import Spool
    from ingest.store import Store

    old = os.umask(0o022)
    try:
        opened = [Spool(tmp_path / "spool.sqlite"), Store(tmp_path / "ingest.sqlite"),
                  AlertStore(tmp_path / "alerts.sqlite"), StationDB(tmp_path / "station.sqlite")]  # fmt: skip
    finally:
        os.umask(old)
    files = sorted(tmp_path.glob("*.sqlite*"))
    assert len(files) >= 8, files  # each database and its -wal
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    for o in opened:
        o.close()


def test_a_modem_that_refuses_the_sim_pin_does_not_put_the_pin_in_output_or_logs(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)
    log = tmp_path / "modem.jsonl"
    modem = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "alerts" / "fake_modem.py"), str(master), json.dumps({"pin": "0000"}),
         str(log)],
        pass_fds=[master], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    os.close(master)
    try:
        f = tmp_path / "nabz.toml"
        f.write_text(
            f'[alerts]\nnotifiers = ["gsm"]\nstore_path = "{tmp_path / "a.sqlite"}"\n'
            f'[modem]\nport = "{os.ttyname(slave)}"\nsim_pin = "{SECRETS["sim_pin"]}"\ncommand_timeout_s = 2.0\n'
        )
        f.chmod(0o600)
        out = nabz("-vv", "alerts", "test-sms", "+923001111111", "--config", str(f))
    finally:
        modem.terminate()
        modem.wait(5)
        os.close(slave)
    assert out.returncode == 1
    assert "CME ERROR: 16" in out.stdout + out.stderr  # the modem said the PIN was wrong...
    assert SECRETS["sim_pin"] not in out.stdout + out.stderr  # ...and nobody reading it learns the PIN
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"cmd": f'AT+CPIN="{SECRETS["sim_pin"]}"'} in sent  # (it was sent: the modem saw it)
