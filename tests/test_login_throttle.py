"""Login throttling on /login/ and /admin/login/: per account and per address, audited, with a message."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEvent
from tests.reviews.helpers import user_create

PASSWORD = "not-used-in-tests"  # the password tests.reviews.helpers.user_create sets
LOCKED = "Too many failed attempts; try again in 15 minutes."


@pytest.fixture(autouse=True)
def fast_hasher(settings: Any) -> Any:
    """Many logins per test: a fast hasher (the throttle does not care which one checks the password)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURES_PER_ACCOUNT = 5
    settings.LOGIN_FAILURES_PER_ADDRESS = 20
    settings.LOGIN_FAILURE_WINDOW_SECONDS = 900
    settings.LOGIN_LOCKOUT_SECONDS = 900
    settings.LOGIN_TRUSTED_PROXIES = 0
    return settings


@pytest.fixture
def mona(db: None, fast_hasher: Any) -> User:
    return user_create("mona")


def log_in(client: Client, username: str, password: str, *, path: str = "/login/", **extra: Any) -> Any:
    return client.post(path, {"username": username, "password": password}, **extra)


def is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_six_wrong_passwords_lock_the_account_and_the_right_one_is_refused(mona: User) -> None:
    client = Client()
    pages = [log_in(client, "mona", "guess") for _ in range(6)]
    assert [LOCKED in p.content.decode() for p in pages] == [False] * 4 + [True] * 2  # locked at the 5th
    assert "didn't match" in pages[0].content.decode()

    page = log_in(client, "mona", PASSWORD)
    assert page.status_code == 200 and LOCKED in page.content.decode()
    assert not is_logged_in(client)


def test_the_admin_login_is_throttled_too(db: None) -> None:
    User.objects.create_superuser("root", password=PASSWORD)
    client = Client()
    for _ in range(6):
        page = log_in(client, "root", "guess", path="/admin/login/?next=/admin/")
    assert LOCKED in page.content.decode()
    page = log_in(client, "root", PASSWORD, path="/admin/login/?next=/admin/")
    assert page.status_code == 200 and LOCKED in page.content.decode()
    assert not is_logged_in(client)


def test_attempts_on_both_pages_count_against_one_account(db: None) -> None:
    User.objects.create_superuser("root", password=PASSWORD)
    client = Client()
    for n in range(5):
        log_in(client, "root", "guess", path="/login/" if n % 2 else "/admin/login/")
    assert LOCKED in log_in(client, "root", PASSWORD).content.decode()


def test_a_lockout_is_audited_once(mona: User) -> None:
    client = Client()
    for _ in range(8):
        log_in(client, "mona", "guess", REMOTE_ADDR="192.0.2.7")
    [locked] = AuditEvent.objects.filter(action="user.login_locked")
    assert (locked.actor_label, locked.object_type, locked.object_id) == ("anonymous", "auth.user", "mona")
    assert locked.payload == {
        "scope": "account",
        "username": "mona",
        "address": "192.0.2.7",
        "failures": 5,
        "lock_seconds": 900,
    }
    # Attempts refused while locked check no password (no login_failed event for them).
    assert AuditEvent.objects.filter(action="user.login_failed").count() == 5


def test_another_account_from_the_same_address_is_not_locked(mona: User) -> None:
    user_create("otto")
    client = Client()
    for _ in range(6):
        log_in(client, "mona", "guess")
    other = Client()
    assert log_in(other, "otto", PASSWORD).status_code == 302
    assert is_logged_in(other)


def test_a_unknown_user_name_is_locked_like_a_real_one(db: None) -> None:
    client = Client()
    pages = [log_in(client, "nobody", "guess") for _ in range(6)]
    assert LOCKED in pages[-1].content.decode()


def test_the_lock_expires(mona: User, fast_hasher: Any) -> None:
    fast_hasher.LOGIN_LOCKOUT_SECONDS = 1
    client = Client()
    for _ in range(5):
        page = log_in(client, "mona", "guess")
    assert "try again in 1 minute." in page.content.decode()
    assert not is_logged_in(client) and log_in(client, "mona", PASSWORD).status_code == 200
    time.sleep(1.2)
    assert log_in(client, "mona", PASSWORD).status_code == 302
    assert is_logged_in(client)


def test_a_right_password_resets_the_account_count(mona: User) -> None:
    client = Client()
    for _ in range(4):
        log_in(client, "mona", "guess")
    assert log_in(client, "mona", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        log_in(client, "mona", "guess")
    assert log_in(client, "mona", PASSWORD).status_code == 302


def test_an_address_is_locked_after_many_failures_across_accounts(mona: User) -> None:
    client = Client()
    for n in range(20):  # four failures each for five names: no account reaches its limit
        log_in(client, f"name{n % 5}", "guess", REMOTE_ADDR="198.51.100.9")
    page = log_in(client, "mona", PASSWORD, REMOTE_ADDR="198.51.100.9")
    assert LOCKED in page.content.decode() and not is_logged_in(client)
    [locked] = AuditEvent.objects.filter(action="user.login_locked")
    assert (locked.object_type, locked.object_id, locked.payload["scope"]) == (
        "client_address",
        "198.51.100.9",
        "address",
    )
    elsewhere = Client()
    assert log_in(elsewhere, "mona", PASSWORD, REMOTE_ADDR="198.51.100.10").status_code == 302


def test_x_forwarded_for_is_trusted_only_when_a_proxy_is_configured(mona: User, fast_hasher: Any) -> None:
    fast_hasher.LOGIN_FAILURES_PER_ADDRESS = 3
    client = Client()
    for n in range(3):  # a client inventing a new X-Forwarded-For each time is still one address
        log_in(client, f"x{n}", "guess", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")
    assert LOCKED in log_in(client, "mona", PASSWORD, REMOTE_ADDR="203.0.113.5").content.decode()

    # Behind one proxy (REMOTE_ADDR is the proxy): the address it appended is the client's.
    fast_hasher.LOGIN_TRUSTED_PROXIES = 1
    proxy = {"REMOTE_ADDR": "10.9.9.9"}
    for n in range(3):
        log_in(client, f"y{n}", "guess", HTTP_X_FORWARDED_FOR=f"6.6.6.{n}, 198.51.100.20", **proxy)
    page = log_in(client, "mona", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.20", **proxy)
    assert LOCKED in page.content.decode()
    other = Client()
    assert log_in(other, "mona", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.21", **proxy).status_code == 302
