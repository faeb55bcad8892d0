"""Secrets hygiene (docs/security.md): secrets are never printed, never logged, and the files that
hold them are private.

Rules of this file:
- A configuration file that holds a secret (`password`, `token`, `sim_pin`, a URL with a password)
  must not be readable or writable by other users (mode bits `o=...`) nor writable by its group:
  the service refuses to start and says how to fix it (`permission_problem`). Readable by the
  group (0640, root:nabz, as docs/gateway.md installs it) is allowed.
- Files Nabz itself writes with secrets in them are created 0600, whatever the umask
  (`write_private`).
- Every log line goes through `RedactingFormatter` once a configuration is loaded: the secrets it
  holds are replaced by `***` wherever they would appear (an error message that echoes an AT
  command with the SIM PIN, a URL with credentials), whichever module logged them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "SECRET_KEYS",
    "secret_values",
    "permission_problem",
    "write_private",
    "create_private",
    "safe_url",
    "RedactingFormatter",
    "redact_logs",
]

SECRET_KEYS = frozenset({"password", "token", "sim_pin", "account_token", "secret"})
_MIN_LEN = 4  # a 4-digit PIN is the shortest secret; shorter values would star out common text
# in every log line, so they are not redacted there (`nabz config` still masks them by key)


def _walk(node: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def secret_values(data: Any) -> list[str]:
    """The secret values in plain configuration data (dicts and lists), longest first."""
    out: set[str] = set()
    for key, value in _walk(data):
        if key in SECRET_KEYS and value not in (None, ""):
            out.add(str(value))
        elif isinstance(value, str) and "://" in value:
            password = urlsplit(value).password
            if password:
                out.add(password)
    return sorted((s for s in out if len(s) >= _MIN_LEN), key=len, reverse=True)


def permission_problem(path: Path, data: Any) -> str | None:
    """Why `path` (holding `data`) is unsafe to use, or None."""
    if not secret_values(data):
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        return (
            f"{path} holds a secret but its mode is {mode:04o} (other users can read or change it); "
            f"run: chmod 600 {path}  (or 640 with the service's group as owner group)"
        )
    return None


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist yet: before SQLite opens a new database
    there (its write-ahead log and shared-memory files then take the same mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def safe_url(url: str | None) -> str:
    """A URL fit for a log line: no user name or password, no query string."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then replaces every secret by ***."""

    def __init__(self, inner: logging.Formatter | None, secrets: list[str]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def redact_logs(data: Any, logger: logging.Logger | None = None) -> None:
    """From now on, the secrets in `data` are written as *** by every handler of `logger` (root)."""
    secrets = secret_values(data)
    if not secrets:
        return
    for handler in (logger or logging.getLogger()).handlers:
        current = handler.formatter
        if isinstance(current, RedactingFormatter):
            current.secrets = sorted(set(current.secrets) | set(secrets), key=len, reverse=True)
        else:
            handler.setFormatter(RedactingFormatter(current, secrets))
