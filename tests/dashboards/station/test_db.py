"""The station's own database: file permissions, sessions, the append-only hash-chained audit log."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from dashboards.station.db import StationDB, token_hash


def test_the_file_with_the_password_hashes_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    db = StationDB(tmp_path / "deep" / "station.sqlite")
    db.add_user("sana", "nurse", "$argon2id$fake", 1.0)
    for p in (tmp_path / "deep").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_session_tokens_are_kept_only_as_hashes(tmp_path: Path) -> None:
    db = StationDB(tmp_path / "s.sqlite")
    db.add_user("sana", "nurse", "h", 0.0)
    token, s = db.new_session("sana", 10.0, "127.0.0.1")
    assert db.session(token) == s and s.token_hash == token_hash(token)
    raw = (tmp_path / "s.sqlite").read_bytes() + (tmp_path / "s.sqlite-wal").read_bytes()
    assert token.encode() not in raw
    assert db.session(token + "x") is None
    db.set_password("sana", "h2", 20.0)  # a new password ends every session of the user
    assert db.session(token) is None


def test_idle_and_old_sessions_are_pruned(tmp_path: Path) -> None:
    db = StationDB(tmp_path / "s.sqlite")
    t_old, _ = db.new_session("a", 0.0, "-")
    t_idle, s_idle = db.new_session("b", 5000.0, "-")
    t_ok, s_ok = db.new_session("c", 5000.0, "-")
    db.touch(s_ok, 6900.0)
    assert db.prune_sessions(7000.0, idle_s=1800, max_s=6000) == 2
    assert db.session(t_old) is None and db.session(t_idle) is None and db.session(t_ok) is not None


def test_the_audit_log_refuses_changes_and_its_chain_shows_tampering(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    db = StationDB(path)
    for k in range(5):
        db.audit(100.0 + k, "sana", "view_patient", f"p-000{k}", {"hours": 6}, "10.0.0.7")
    assert db.verify_audit() is None
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.db.execute("UPDATE audit SET username = 'someone' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.db.execute("DELETE FROM audit WHERE seq = 2")
    # Someone with the file drops the triggers and edits a row: the chain breaks there.
    db.db.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
    db.db.execute("UPDATE audit SET target = 'p-9999' WHERE seq = 3")
    assert db.verify_audit() == 3
    db.close()
    db2 = StationDB(path)  # triggers come back with the schema
    with pytest.raises(sqlite3.DatabaseError):
        db2.db.execute("DELETE FROM audit WHERE seq = 4")


def test_a_deleted_row_breaks_the_chain_at_the_next_one(tmp_path: Path) -> None:
    db = StationDB(tmp_path / "s.sqlite")
    for k in range(4):
        db.audit(float(k), "sana", "ack", f"a{k}")
    db.db.execute("DROP TRIGGER audit_no_delete")
    db.db.execute("DELETE FROM audit WHERE seq = 2")
    assert db.verify_audit() == 3
    rows = db.audit_rows(limit=2)
    assert [r.seq for r in rows] == [3, 4]


def test_the_admin_pages_check_reads_only_the_rows_added_since_it_last_found_the_chain_intact(
    tmp_path: Path,
) -> None:
    """So that a long log does not hold up every request each time the page is opened; the
    command line still checks the whole chain."""
    db = StationDB(tmp_path / "s.sqlite")
    t0 = 1_795_597_200.0
    for k in range(12_000):  # more than one batch
        db.audit(t0 + k, "sana", "view_ward")
    assert db.verify_audit(whole=False) is None
    db.db.execute("DROP TRIGGER audit_no_update")  # a row changed behind the application's back
    db.db.execute("UPDATE audit SET detail = 'x' WHERE seq = 5")
    assert db.verify_audit(whole=False) is None  # checked already: not read again
    assert db.verify_audit() == 5  # the whole chain
    db2 = StationDB(tmp_path / "s.sqlite")  # a new process: its first check reads it all
    assert db2.verify_audit(whole=False) == 5
    db.audit(t0 + 20_000, "sana", "view_ward")
    db.db.execute("DROP TRIGGER audit_no_update")  # (the second opening made it again)
    db.db.execute("UPDATE audit SET detail = 'y' WHERE seq = 12001")
    assert db.verify_audit(whole=False) == 12001  # a row added since: found


def test_every_action_the_station_audits_is_classed_for_the_admin_page() -> None:
    """Rows about patients are shown to the admin without their target and detail: an action
    that is in neither class would be shown whole (found: the automatic logoff was hidden)."""
    import ast

    from dashboards.station.app import AUDIT_ABOUT_ACCOUNTS, AUDIT_ABOUT_PATIENTS

    root = Path(__file__).parents[3]
    actions: set[str] = set()
    for source in [
        *(root / "dashboards" / "station").glob("*.py"),
        root / "dashboards" / "station_commands.py",
    ]:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "audit"
            ):
                for arg in node.args[2:3]:  # (now, user, action, ...) and (ctx, request, action, ...)
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        actions.add(arg.value)
    assert "logoff_auto" in actions and "view_patient" in actions  # the scan finds them
    assert not AUDIT_ABOUT_PATIENTS & AUDIT_ABOUT_ACCOUNTS
    assert actions - AUDIT_ABOUT_PATIENTS - AUDIT_ABOUT_ACCOUNTS == set()
