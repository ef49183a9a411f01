"""Login throttling for /login/ and /admin/login/: per account and per client address, counted in Redis.

After LOGIN_FAILURES_PER_ACCOUNT wrong passwords for one user name within LOGIN_FAILURE_WINDOW_SECONDS, that
user name is locked for LOGIN_LOCKOUT_SECONDS; after LOGIN_FAILURES_PER_ADDRESS from one client address, the
address is. While locked, no password is checked (the right one is refused too, and no PBKDF2 time is spent).
Each lockout is an audit event (user.login_locked). Unknown user names are counted like real ones, so the
lockout says nothing about which accounts exist.

Counters live in Redis (shared by every web process, gone after the window); if Redis is away, logins are
not throttled rather than refused (a warning is logged), as the ingestion rate limit does.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from audit import services as audit
from moderation.redis import redis_client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lock:
    scope: str  # "account" or "address"
    seconds_left: int

    @property
    def minutes_left(self) -> int:
        return max(1, math.ceil(self.seconds_left / 60))

    @property
    def message(self) -> str:
        minutes = self.minutes_left
        return f"Too many failed attempts; try again in {minutes} minute{'' if minutes == 1 else 's'}."


def client_address(request: HttpRequest | None) -> str:
    """REMOTE_ADDR; X-Forwarded-For only as far as the LOGIN_TRUSTED_PROXIES in front append to it."""
    if request is None:
        return ""
    address = str(request.META.get("REMOTE_ADDR", ""))
    proxies = settings.LOGIN_TRUSTED_PROXIES
    if proxies > 0:
        forwarded = [a.strip() for a in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
        forwarded = [a for a in forwarded if a]
        # Each trusted proxy appends the address it saw; entries further left are the client's to invent.
        if len(forwarded) >= proxies:
            address = forwarded[-proxies]
    return address[:64]


def _account(username: str) -> str:
    # Case-folded: "Mona" and "mona" share one counter. Hashed: any user name makes a short, safe key.
    return hashlib.sha256(username.casefold().encode()).hexdigest()[:32]


def _scopes(username: str, address: str) -> list[tuple[str, str, int]]:
    """(scope, key suffix, failures allowed) for each rule that applies (a limit of 0 turns a rule off)."""
    scopes = []
    if username and settings.LOGIN_FAILURES_PER_ACCOUNT > 0:
        scopes.append(("account", _account(username), settings.LOGIN_FAILURES_PER_ACCOUNT))
    if address and settings.LOGIN_FAILURES_PER_ADDRESS > 0:
        scopes.append(("address", address, settings.LOGIN_FAILURES_PER_ADDRESS))
    return scopes


def lock_find(*, username: str, address: str) -> Lock | None:
    """The lock that holds longest on this user name or address, if any."""
    scopes = _scopes(username, address)
    if not scopes:
        return None
    try:
        pipe = redis_client().pipeline(transaction=False)
        for scope, key, _ in scopes:
            pipe.ttl(f"login:locked:{scope}:{key}")
        ttls = pipe.execute()
    except redis.RedisError:
        logger.warning("login throttle unavailable (Redis); not checking locks")
        return None
    locks = [Lock(scope, ttl) for (scope, _, _), ttl in zip(scopes, ttls, strict=True) if ttl > 0]
    return max(locks, key=lambda lock: lock.seconds_left, default=None)


def failure_record(*, username: str, address: str) -> Lock | None:
    """Count a wrong password; lock (and audit) what reached its limit. Returns the lock now in force."""
    window, lockout = settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.LOGIN_LOCKOUT_SECONDS
    try:
        client = redis_client()
        for scope, key, limit in _scopes(username, address):
            failures_key = f"login:failures:{scope}:{key}"
            pipe = client.pipeline()
            pipe.incr(failures_key)
            pipe.expire(failures_key, window, nx=True)  # a fixed window from the first failure
            failures, _ = pipe.execute()
            if failures < limit or not client.set(f"login:locked:{scope}:{key}", 1, nx=True, ex=lockout):
                continue
            client.delete(failures_key)  # after the lock, counting starts again
            _lock_audit(scope=scope, username=username, address=address, failures=failures)
    except redis.RedisError:
        logger.warning("login throttle unavailable (Redis); failure not counted")
        return None
    return lock_find(username=username, address=address)


def _lock_audit(*, scope: str, username: str, address: str, failures: int) -> None:
    logger.warning(
        "login locked: %s %s after %s failures", scope, username if scope == "account" else address, failures
    )
    audit.record_about(
        "user.login_locked",
        actor=None,
        actor_label="anonymous",
        object_type="auth.user" if scope == "account" else "client_address",
        object_id=username if scope == "account" else address,
        payload={
            "scope": scope,
            "username": username[:150],
            "address": address,
            "failures": failures,
            "lock_seconds": settings.LOGIN_LOCKOUT_SECONDS,
        },
    )


def success_record(*, username: str) -> None:
    """A right password (not locked): the account's count starts again. The address's count does not."""
    if not username:
        return
    try:
        redis_client().delete(f"login:failures:account:{_account(username)}")
    except redis.RedisError:
        logger.warning("login throttle unavailable (Redis); failures not reset")


def _clean_throttled(form: AuthenticationForm, clean: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The login form's clean(), refused while locked and counting wrong passwords."""
    username = str(form.cleaned_data.get("username") or "")
    address = client_address(form.request)
    lock = lock_find(username=username, address=address)
    if lock is None:
        try:
            cleaned = clean()
        except ValidationError:
            # A wrong password (not a missing field, an inactive account or a non-staff user at the admin).
            if form.cleaned_data.get("password") and form.user_cache is None:
                lock = failure_record(username=username, address=address)
            if lock is None:
                raise
        else:
            success_record(username=username)
            return cleaned
    raise LoginLocked(lock)


class LoginLocked(ValidationError):
    def __init__(self, lock: Lock) -> None:
        super().__init__(lock.message, code="locked")
        self.lock = lock


class ThrottledAuthenticationForm(AuthenticationForm):
    """/login/ (its template shows `form.lock.message`): a locked account or address is refused before any
    password is checked."""

    lock: Lock | None = None

    def clean(self) -> dict[str, Any]:
        try:
            return _clean_throttled(self, super().clean)
        except LoginLocked as locked:
            self.lock = locked.lock
            raise


class ThrottledAdminAuthenticationForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """/admin/login/ (the admin's template shows the lock message as the form's error)."""
