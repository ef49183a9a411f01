"""Personal API tokens for the export API: issued on the audit page, shown once, stored hashed."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit import services as audit
from audit.models import ApiToken

# last_used_at is informative: refreshing it at most this often keeps a burst of requests read-only.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_tokens_of(user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


@transaction.atomic
def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token for the user; returns it with its clear text, which is never stored."""
    token = ApiToken(user=user, name=name)
    secret = token.issue()
    token.save()
    audit.record("api_token.created", actor=user, obj=token, payload={"name": name, "key_id": token.key_id})
    return token, secret


@transaction.atomic
def api_token_revoke(*, user: User, token_id: int) -> bool:
    revoked = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if revoked:
        audit.record_about(
            "api_token.revoked", actor=user, object_type="reviews.apitoken", object_id=str(token_id)
        )
    return revoked == 1


def api_token_user(secret: str) -> User | None:
    """The active user a token belongs to, or None for an unknown, revoked or malformed token."""
    key_id = ApiToken.key_id_of(secret)
    if key_id is None:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_id=key_id, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None or not token.matches(secret):
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
