"""Reads of the audit log for its page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from audit.models import AuditEvent
from config.db_router import replica_alias

AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""
    object_type: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None


def audit_events_page(
    filters: AuditFilters, *, before_seq: int | None
) -> tuple[list[AuditEvent], int | None]:
    """Newest first, AUDIT_PAGE_SIZE at a time (keyset on seq); the seq to continue before, if any.

    Read from the replica when one is configured (DATABASE_REPLICA_URL; config/db_router.py)."""
    events = AuditEvent.objects.using(replica_alias()).order_by("-seq")
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor:
        events = events.filter(actor_label=filters.actor)
    if filters.object_type:
        events = events.filter(object_type=filters.object_type)
    if filters.object_id:
        events = events.filter(object_id=filters.object_id)
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    if before_seq is not None:
        events = events.filter(seq__lt=before_seq)
    rows = list(events[: AUDIT_PAGE_SIZE + 1])
    more = len(rows) > AUDIT_PAGE_SIZE
    rows = rows[:AUDIT_PAGE_SIZE]
    return rows, rows[-1].seq if more else None
