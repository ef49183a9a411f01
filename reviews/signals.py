"""Logins and failed logins go to the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from audit import services as audit


@receiver(user_logged_in)
def login_audit(sender: Any, request: Any, user: Any, **_: Any) -> None:
    audit.record("user.login", actor=user, obj=user, payload={})


@receiver(user_login_failed)
def login_failed_audit(sender: Any, credentials: dict[str, Any], request: Any = None, **_: Any) -> None:
    # No user object: record the username tried (never the password) against the system actor.
    username = str(credentials.get("username", ""))
    audit.record_about(
        "user.login_failed",
        actor=None,
        actor_label="anonymous",
        object_type="auth.user",
        object_id=username,
        payload={"username": username[:150]},
    )
