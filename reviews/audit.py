"""Writing the audit log. Every write path in the product records its events through here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import models

from moderation.models import Source
from reviews.models import AuditEvent

Actor = AbstractBaseUser | Source | None


def _actor_fields(actor: Actor) -> dict[str, str]:
    if actor is None:
        return {"actor_kind": AuditEvent.ActorKind.SYSTEM, "actor_id": "", "actor_label": "system"}
    if isinstance(actor, Source):
        return {
            "actor_kind": AuditEvent.ActorKind.SOURCE,
            "actor_id": str(actor.pk),
            "actor_label": actor.slug,
        }
    return {
        "actor_kind": AuditEvent.ActorKind.USER,
        "actor_id": str(actor.pk),
        "actor_label": actor.get_username(),
    }


def record(
    action: str, *, actor: Actor, obj: models.Model, payload: dict[str, Any] | None = None
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        payload=payload or {},
        **_actor_fields(actor),
    )


def record_many(
    action: str, *, actor: Actor, objects: Iterable[tuple[models.Model, dict[str, Any]]]
) -> list[AuditEvent]:
    """One event per (object, payload), in a single INSERT."""
    actor_fields = _actor_fields(actor)
    events = [
        AuditEvent(
            action=action,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            payload=payload,
            **actor_fields,
        )
        for obj, payload in objects
    ]
    return AuditEvent.objects.bulk_create(events)
