"""The station's own SQLite file: user accounts, sessions and the append-only audit log.

Rules of this file:
- The file holds password hashes: it is created readable by its owner only (0600), and its
  directory is not widened.
- Session tokens are never stored: only their SHA-256, so a copy of the file logs nobody in.
- The audit table is append-only (triggers refuse UPDATE and DELETE) and hash-chained: each row
  carries SHA-256(previous row's hash + this row), so a row changed or removed behind SQLite's back
  (with the triggers dropped) breaks the chain at that row, and `verify_audit` says where.
- Time is a parameter (`now`); the web app passes its clock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nabz.secrets import create_private

__all__ = ["StationDB", "User", "Session", "AuditRow", "token_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_at REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, password_changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, created_at REAL NOT NULL,
    last_active_at REAL NOT NULL, csrf TEXT NOT NULL, address TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, username TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, address TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_GENESIS = "0" * 64
_VERIFY_BATCH = 5000  # audit rows read at once while checking the chain


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    password_hash: str
    created_at: float
    disabled: bool


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    username: str
    created_at: float
    last_active_at: float
    csrf: str
    address: str


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    at: float
    username: str
    action: str
    target: str
    detail: str
    address: str
    hash: str


def _row_hash(
    prev: str, at: float, username: str, action: str, target: str, detail: str, address: str
) -> str:
    text = json.dumps([prev, repr(at), username, action, target, detail, address], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class StationDB:
    """Safe to share between threads of one process (a lock serialises every statement)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_private(self.path)  # password hashes and the audit trail: owner only
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        for side in ("-wal", "-shm"):  # SQLite makes these with the umask; they hold the same data
            p = Path(f"{self.path}{side}")
            if p.exists():
                p.chmod(0o600)
        self.lock = threading.RLock()
        self._verified: tuple[str, int] | None = None  # (hash, seq) of the last row found intact

    # --- users --------------------------------------------------------------------------------
    def add_user(self, username: str, role: str, password_hash: str, now: float) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO users (username, role, password_hash, created_at, password_changed_at) "
                "VALUES (?,?,?,?,?)",
                (username, role, password_hash, now, now),
            )

    def user(self, username: str) -> User | None:
        with self.lock:
            r = self.db.execute(
                "SELECT username, role, password_hash, created_at, disabled FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return None if r is None else User(r[0], r[1], r[2], r[3], bool(r[4]))

    def users(self) -> list[User]:
        with self.lock:
            rows = self.db.execute(
                "SELECT username, role, password_hash, created_at, disabled FROM users ORDER BY username"
            ).fetchall()
        return [User(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def set_password(self, username: str, password_hash: str, now: float) -> bool:
        with self.lock:
            cur = self.db.execute(
                "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE username = ?",
                (password_hash, now, username),
            )
            self.db.execute("DELETE FROM sessions WHERE username = ?", (username,))
        return cur.rowcount == 1

    def set_disabled(self, username: str, disabled: bool) -> bool:
        with self.lock:
            cur = self.db.execute(
                "UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username)
            )
            if disabled:
                self.db.execute("DELETE FROM sessions WHERE username = ?", (username,))
        return cur.rowcount == 1

    # --- sessions -----------------------------------------------------------------------------
    def new_session(self, username: str, now: float, address: str) -> tuple[str, Session]:
        """A new session; returns the token (for the cookie, never stored) and the session."""
        token = secrets.token_urlsafe(32)
        s = Session(token_hash(token), username, now, now, secrets.token_urlsafe(24), address)
        with self.lock:
            self.db.execute(
                "INSERT INTO sessions VALUES (?,?,?,?,?,?)",
                (s.token_hash, s.username, s.created_at, s.last_active_at, s.csrf, s.address),
            )
        return token, s

    def session(self, token: str) -> Session | None:
        with self.lock:
            r = self.db.execute(
                "SELECT token_hash, username, created_at, last_active_at, csrf, address FROM sessions "
                "WHERE token_hash = ?",
                (token_hash(token),),
            ).fetchone()
        return None if r is None else Session(*r)

    def touch(self, session: Session, now: float) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE sessions SET last_active_at = ? WHERE token_hash = ?", (now, session.token_hash)
            )

    def end_session(self, session: Session) -> None:
        with self.lock:
            self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (session.token_hash,))

    def prune_sessions(self, now: float, idle_s: float, max_s: float) -> int:
        with self.lock:
            cur = self.db.execute(
                "DELETE FROM sessions WHERE created_at <= ? OR last_active_at <= ?",
                (now - max_s, now - idle_s),
            )
        return cur.rowcount

    # --- audit --------------------------------------------------------------------------------
    def audit(
        self, now: float, username: str, action: str, target: str = "", detail: Any = "", address: str = ""
    ) -> None:
        """Append one row (detail: text, or anything JSON can write)."""
        text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True, ensure_ascii=False)
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                r = self.db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                h = _row_hash(r[0] if r else _GENESIS, now, username, action, target, text, address)
                self.db.execute(
                    "INSERT INTO audit (at, username, action, target, detail, address, hash) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (now, username, action, target, text, address, h),
                )
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def audit_rows(self, limit: int | None = None, action: str | None = None) -> list[AuditRow]:
        """Oldest first; with `limit`, the newest `limit` rows."""
        where, args = ("WHERE action = ?", (action,)) if action else ("", ())
        sql = (
            f"SELECT seq, at, username, action, target, detail, address, hash FROM audit {where} ORDER BY seq"
        )
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY seq"
        with self.lock:
            rows = self.db.execute(sql, args).fetchall()
        return [AuditRow(*r) for r in rows]

    def verify_audit(self, *, whole: bool = True) -> int | None:
        """The seq of the first row whose hash does not follow from the rows before it, or None.

        Read in batches, the lock released between them (every request's session check waits
        for it). With `whole=False`, only the rows after the last check that found the chain
        intact (the admin page, on every visit: the whole chain once per process, then what was
        added since; `nabz station audit` checks it all)."""
        prev, after = (_GENESIS, 0) if whole or self._verified is None else self._verified
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT seq, at, username, action, target, detail, address, hash FROM audit "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _VERIFY_BATCH),
                ).fetchall()
            for r in (AuditRow(*row) for row in rows):
                if _row_hash(prev, r.at, r.username, r.action, r.target, r.detail, r.address) != r.hash:
                    return r.seq
                prev, after = r.hash, r.seq
            if len(rows) < _VERIFY_BATCH:
                self._verified = (prev, after)
                return None

    def close(self) -> None:
        with self.lock:
            self.db.close()
