"""Accounts and sessions: hashing, who may do what, automatic logoff, the login rate limit."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from dashboards.station import auth


def test_a_password_is_stored_as_an_argon2id_hash_and_checked_against_it() -> None:
    h = auth.hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert auth.verify_password(h, "correct horse battery")
    assert not auth.verify_password(h, "correct horse battery ")
    assert not auth.verify_password(None, "correct horse battery")  # unknown user: same work, refused
    assert not auth.verify_password("not a hash", "x")
    assert auth.hash_password("same") != auth.hash_password("same")  # salted


def test_a_hash_with_weaker_parameters_is_flagged_for_upgrade() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw-1234567890")
    assert auth.verify_password(weak, "pw-1234567890")
    assert auth.needs_rehash(weak) and not auth.needs_rehash(auth.hash_password("pw-1234567890"))


def test_only_nurses_and_doctors_act_on_alarms_and_only_admins_manage_accounts() -> None:
    table = {(role, action): auth.allowed(role, action) for role in auth.ROLES for action in auth.PERMISSIONS}
    assert {r for r in auth.ROLES if table[(r, "ack")]} == {"nurse", "doctor"}
    assert {r for r in auth.ROLES if table[(r, "silence")]} == {"nurse", "doctor"}
    assert {r for r in auth.ROLES if table[(r, "view_patients")]} == {"nurse", "doctor"}
    assert {r for r in auth.ROLES if table[(r, "manage_users")]} == {"admin"}
    assert {r for r in auth.ROLES if table[(r, "read_audit")]} == {"admin"}
    assert not auth.allowed("nurse", "no_such_action") and not auth.allowed("root", "ack")


def test_sessions_end_after_idleness_and_after_their_longest_life() -> None:
    idle, longest = 1800.0, 12 * 3600.0
    assert auth.session_state(0, 0, 1799, idle, longest) == "ok"
    assert auth.session_state(0, 0, 1800, idle, longest) == "idle"
    assert auth.session_state(0, 40_000, 41_000, idle, longest) == "ok"  # active all along
    assert auth.session_state(0, 43_100, 43_200, idle, longest) == "expired"  # twelve hours after login


def test_failed_logins_block_a_name_for_the_rest_of_the_window() -> None:
    rl = auth.RateLimiter(max_failures=5, window_s=900)
    for k in range(4):
        rl.failed("sana", 100.0 + k)
        assert rl.blocked("sana", 100.0 + k) == 0
    rl.failed("sana", 104.0)
    assert rl.blocked("sana", 105.0) == pytest.approx(895.0)  # until the first failure leaves the window
    assert rl.blocked("imran", 105.0) == 0  # other names are not affected
    assert rl.blocked("sana", 999.0) == pytest.approx(1.0)
    assert rl.blocked("sana", 1000.0) == 0  # four failures left in the window
    rl.failed("sana", 1005.0)
    rl.clear("sana")  # a successful login forgets the name's failures
    assert rl.blocked("sana", 1006.0) == 0


def test_user_names_and_new_passwords_are_checked() -> None:
    assert auth.check_username("nurse.sana") == "nurse.sana"
    for bad in ("", "a", "Sana", "sana smith", "-sana", "x" * 33, "sana;drop"):
        with pytest.raises(auth.AuthError):
            auth.check_username(bad)
    with pytest.raises(auth.AuthError, match="at least 10"):
        auth.check_new_password("sana", "short")
    with pytest.raises(auth.AuthError, match="user name"):
        auth.check_new_password("sana", "my-name-is-SANA")
    auth.check_new_password("sana", "a long enough passphrase")
