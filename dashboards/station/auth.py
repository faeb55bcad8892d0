"""Who may do what on the nurse station, and the pure parts of logging in.

Rules of this file:
- No I/O and no clocks: every function that depends on time takes `now` (epoch seconds).
- PERMISSIONS is the whole access policy: one table, read by the web app and the tests.
- Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106); a hash made with older
  parameters is upgraded at the next successful login (`needs_rehash`).
- A failed login says the same thing whether the user exists or not, and costs the same time
  (a dummy hash is verified for unknown users), so user names cannot be probed.

HIPAA technical safeguards (45 CFR 164.312) this serves: unique user identification (one account
per person, no shared logins), automatic logoff (`session_state`), person authentication.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "Role",
    "ROLES",
    "PERMISSIONS",
    "AuthError",
    "allowed",
    "hash_password",
    "verify_password",
    "needs_rehash",
    "check_new_password",
    "check_username",
    "session_state",
    "RateLimiter",
]

Role = Literal["nurse", "doctor", "admin"]
ROLES: tuple[Role, ...] = ("nurse", "doctor", "admin")

# Action -> roles allowed. Admins manage accounts and read the audit log; they do not see patients
# (least privilege: an installer's account is not a clinical one). Clinicians see patients and act
# on alarms; nobody acknowledges an alarm without being logged in as themselves.
PERMISSIONS: dict[str, frozenset[Role]] = {
    "view_patients": frozenset({"nurse", "doctor"}),
    "ack": frozenset({"nurse", "doctor"}),
    "silence": frozenset({"nurse", "doctor"}),
    "manage_users": frozenset({"admin"}),
    "read_audit": frozenset({"admin"}),
}

MIN_PASSWORD_LENGTH = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_hasher = PasswordHasher()  # argon2id, time_cost 3, memory 64 MiB, parallelism 4 (argon2-cffi defaults)
_DUMMY_HASH = _hasher.hash("not a real password, only here to spend the same time")


class AuthError(Exception):
    """A user name or password that cannot be accepted; the message says why, for the installer."""


def allowed(role: str, action: str) -> bool:
    """Whether `role` may perform `action` (an unknown action is allowed to nobody)."""
    return role in PERMISSIONS.get(action, frozenset())


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True if `password` matches; for an unknown user pass None (the same work is done)."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def check_username(name: str) -> str:
    if not _USERNAME.match(name):
        raise AuthError("a user name is 2-32 characters: lower-case letters, digits, '.', '_' or '-'")
    return name


def check_new_password(username: str, password: str) -> None:
    """NIST SP 800-63B style: long enough, not the user name; no composition rules."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if username.lower() in password.lower():
        raise AuthError("a password must not contain the user name")


SessionState = Literal["ok", "idle", "expired"]


def session_state(
    created_at: float, last_active_at: float, now: float, idle_s: float, max_s: float
) -> SessionState:
    """A session ends after `idle_s` without a user action (automatic logoff) or `max_s` after login."""
    if now - created_at >= max_s:
        return "expired"
    if now - last_active_at >= idle_s:
        return "idle"
    return "ok"


@dataclass
class RateLimiter:
    """Login attempts per key (a user name, an address), remembered until the key has made none
    for twice `window_s` (longer than its longest block, or waiting out a block would wipe it).

    A key is blocked once `max_failures` of its attempts came within `window_s` of each other
    (a sliding window: a typo now and then over a long shift never adds up to a block). It then
    waits `first_block_s` after its latest attempt, and each attempt after that, while the key
    keeps trying (no gap longer than twice `window_s`), doubles the wait up to `window_s`: a nurse
    who mistypes five times waits a minute, a guesser soon waits the whole window for each guess
    (12 guesses in the first hour with the defaults, then 4 an hour). The block holds even for
    the right password (anything else tells a guesser when they are right), so whoever can send a
    few wrong passwords for a name can keep it blocked (docs/security.md, I1).

    The station counts a user name's attempt from the moment it starts (`attempt`), before its
    password is checked, so attempts sent in parallel each see the ones before them; a success
    clears the name (`clear`). An address counts failures only (an address is shared: a ward
    behind one NAT), after their check, and is looked at again just before each check.
    """

    max_failures: int
    window_s: float
    first_block_s: float = 60.0
    _attempts: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._attempts.get(key)
        if q is None:
            return deque()
        if not q or q[-1] <= now - 2 * self.window_s:  # quiet for long after any block: forgotten
            del self._attempts[key]
            return deque()
        return q

    def blocked(self, key: str, now: float) -> float:
        """How long (s) `key` must wait before its next attempt; 0 if it may try now."""
        q = list(self._recent(key, now))
        n = self.max_failures
        start = len(q) - 1  # the run of attempts that ends with the latest, none long apart
        while start > 0 and q[start] - q[start - 1] <= 2 * self.window_s:
            start -= 1
        run = q[start:]
        first = next((i for i in range(len(run) - n + 1) if run[i + n - 1] - run[i] <= self.window_s), None)
        if first is None:
            return 0.0
        beyond = len(run) - (first + n)
        block = min(self.window_s, self.first_block_s * 2.0 ** min(beyond, 32))
        return max(0.0, max(run) + block - now)  # two checks may finish in either order

    def attempt(self, key: str, now: float) -> None:
        """Count an attempt that starts now (a failure unless taken back)."""
        self._recent(key, now)
        # Bounded: a guesser's run longer than this (days at one guess per window) starts afresh.
        self._attempts.setdefault(key, deque(maxlen=self.max_failures + 256)).append(now)

    def clear(self, key: str) -> None:
        self._attempts.pop(key, None)

    def prune(self, now: float) -> None:
        """Forget keys long quiet (names and addresses tried once, long ago)."""
        for key in list(self._attempts):
            self._recent(key, now)
