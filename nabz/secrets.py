"""Secrets hygiene (docs/security.md): secrets are never printed, never logged, and the files that
hold them are private.

Rules of this file:
- A configuration file that holds a secret (`password`, `token`, `sim_pin`, a URL with a password)
  must not be readable or writable by other users (mode bits `o=...`) nor writable by its group:
  the service refuses to start and says how to fix it (`permission_problem`). Readable by the
  group (0640, root:nabz, as docs/gateway.md installs it) is allowed.
- Files Nabz itself writes with secrets in them are created 0600, whatever the umask
  (`write_private`, `create_private`), and never through a file or a symbolic link that another
  user could have put there: an existing one must belong to us, and so must its directory (or to
  root), else `UnsafeFileError`.
- Every log line goes through `RedactingFormatter` once a configuration is loaded: the secrets it
  holds are replaced by `***` wherever they would appear (an error message that echoes an AT
  command with the SIM PIN, a URL with credentials), whichever module logged them.
"""

from __future__ import annotations

import contextlib
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
    "UnsafeFileError",
    "safe_url",
    "RedactingFormatter",
    "redact_logs",
]

log = logging.getLogger(__name__)

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


class UnsafeFileError(OSError):
    """A private file that cannot be made safely: its path is a symbolic link or not a regular
    file, or it or its directory belongs to another user. The message says what to do."""


def _check_directory(directory: Path) -> None:
    """Another user who can change `directory` can swap a file in it between our check and
    SQLite's open, or replace what we wrote. Root may own it (it can do that anyway: /tmp,
    /var/lib); the owner's group may write to it (trusted like the 0640 configuration's); other
    users only if the sticky bit stops them replacing our files (/tmp)."""
    st = os.stat(directory)
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeFileError(
            f"{directory} belongs to user id {st.st_uid}, not to this user ({os.geteuid()}) or root: "
            "keep private files in a directory of the user the service runs as"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafeFileError(f"{directory} is writable by every user: run chmod o-w {directory}")


def _check_existing(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"{path} is a symbolic link: give the path of the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise UnsafeFileError(
            f"{path} belongs to user id {st.st_uid}, not to this user ({os.geteuid()}): run this as the "
            "user that owns it, or remove it if nobody should"
        )


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist yet: before SQLite opens a new database
    there (its write-ahead log and shared-memory files then take the same mode). An existing file
    must be ours and a regular file (not a link someone planted); if users outside its group
    could use it, or its group change it (made before stores were private), it is made 0600."""
    path = Path(path)
    _check_directory(path.parent)
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), True
    except FileExistsError:
        created = False
        try:  # O_NONBLOCK: a FIFO planted here must not hang us before fstat says what it is
            fd = os.open(path, flags | os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:  # ELOOP: a symbolic link
            _check_existing(path, os.lstat(path))
            raise UnsafeFileError(f"{path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        _check_existing(path, st)
        mode = stat.S_IMODE(st.st_mode)
        if created:
            if mode != 0o600:
                os.fchmod(fd, 0o600)  # whatever the umask
        elif mode & (stat.S_IRWXO | stat.S_IWGRP):
            # Made before stores were private, or by hand. Group read (0640) is left alone, as for
            # the configuration: someone chose to share it with a service's group.
            log.warning("%s could be used by other users (mode %04o): made 0600", path, mode)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (0600), whatever the umask.

    Written to a new file of our own next to it (O_EXCL, O_NOFOLLOW) and renamed over `path`, so
    no other user sees it half-written or can have prepared the file it goes into; an existing
    `path` must be ours and not a symbolic link (`UnsafeFileError` otherwise)."""
    path = Path(path)
    _check_directory(path.parent)
    try:
        _check_existing(path, os.lstat(path))
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces whatever is at `path` without following it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
