"""`nabz station user ...` as an installer types it: passwords never echoed, the file 0600."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from dashboards.station.auth import verify_password
from dashboards.station.db import StationDB

ROOT = Path(__file__).parents[3]


def nabz(tmp: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cfg = tmp / "nabz.toml"
    if not cfg.exists():
        cfg.write_text(f'[station]\ndb_path = "{tmp / "station.sqlite"}"\n')
    return subprocess.run([sys.executable, "-m", "nabz.cli", "station", *args, "--config", str(cfg)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_an_installer_adds_accounts_without_the_password_ever_showing(tmp_path: Path) -> None:
    secret = "ward-7-night-shift"
    out = nabz(
        tmp_path, "user", "add", "nurse.sana", "--role", "nurse", "--password-stdin", stdin=secret + "\n"
    )
    assert out.returncode == 0, out.stderr
    assert "added nurse nurse.sana" in out.stdout and secret not in out.stdout + out.stderr
    db_file = tmp_path / "station.sqlite"
    assert stat.S_IMODE(db_file.stat().st_mode) == 0o600
    user = StationDB(db_file).user("nurse.sana")
    assert (
        user is not None and verify_password(user.password_hash, secret) and secret not in user.password_hash
    )

    again = nabz(
        tmp_path, "user", "add", "nurse.sana", "--role", "doctor", "--password-stdin", stdin="x" * 12
    )
    assert again.returncode == 1 and "exists already" in again.stderr
    short = nabz(tmp_path, "user", "add", "dr.ali", "--role", "doctor", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10" in short.stderr
    no_tty = nabz(tmp_path, "user", "add", "dr.ali", "--role", "doctor")  # no terminal, no --password-stdin
    assert no_tty.returncode == 1 and "--password-stdin" in no_tty.stderr
    bad = nabz(tmp_path, "user", "add", "Dr Ali", "--role", "doctor", "--password-stdin", stdin=secret)
    assert bad.returncode == 2


def test_passwords_change_accounts_are_disabled_and_it_is_all_in_the_audit_log(tmp_path: Path) -> None:
    nabz(tmp_path, "user", "add", "imran", "--role", "doctor", "--password-stdin", stdin="first-password-1\n")
    assert (
        nabz(tmp_path, "user", "passwd", "imran", "--password-stdin", stdin="second-password-2\n").returncode
        == 0
    )
    assert nabz(tmp_path, "user", "disable", "imran").returncode == 0
    listing = nabz(tmp_path, "user", "list").stdout
    assert "imran" in listing and "doctor" in listing and "disabled" in listing
    assert (
        nabz(tmp_path, "user", "passwd", "nobody", "--password-stdin", stdin="whatever-123\n").returncode == 1
    )
    audit = nabz(tmp_path, "audit")
    assert audit.returncode == 0
    lines = audit.stdout.splitlines()
    assert [line.split()[5] for line in lines] == ["user_add", "user_passwd", "user_disable"]
    assert all(" cli:" in line for line in lines)
    assert "password-" not in audit.stdout


def test_the_audit_log_is_printed_without_terminal_escapes(tmp_path: Path) -> None:
    """Rows hold what login forms and proxy headers sent (a station before 2026-11-27 audited the
    user name as typed): printed raw, escape sequences could erase or hide rows on the installer's
    terminal. Each control character is shown as its escape instead."""
    db = StationDB(tmp_path / "station.sqlite")
    db.audit(1.9e9, "\x1b[2A\x1b[2Ksana", "login_failed", "\x1b[8m", "\r\u202edetail", "\x1b]0;title\x07")
    db.close()
    audit = nabz(tmp_path, "audit")
    assert audit.returncode == 0, audit.stderr
    printed = audit.stdout.rstrip("\n")
    assert printed and all(c.isprintable() for c in printed), repr(printed)
    for shown in (r"\x1b[2A\x1b[2Ksana", r"\x1b[8m", r"\r\u202edetail", r"\x1b]0;title\x07"):
        assert shown in printed
