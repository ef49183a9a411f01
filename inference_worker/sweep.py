"""The triage sweep: what a lost message or a dead worker left behind is sent again."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from config import publish
from moderation.models import Case


def cases_triage_sweep(*, stuck_after_seconds: int | None = None) -> list[int]:
    """Re-enqueue what a lost message or a dead worker left behind. Returns the case ids re-enqueued."""
    stuck_after = (
        stuck_after_seconds if stuck_after_seconds is not None else settings.TRIAGE_STUCK_AFTER_SECONDS
    )
    cutoff = timezone.now() - timedelta(seconds=stuck_after)
    with transaction.atomic():
        # A worker died mid-call: the case goes back to pending (the attempt it used still counts).
        revived = list(
            Case.objects.filter(state=Case.State.TRIAGING, updated_at__lt=cutoff)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        Case.objects.filter(pk__in=revived, state=Case.State.TRIAGING).update(
            state=Case.State.PENDING_TRIAGE, updated_at=timezone.now()
        )
        # A message was lost: pending cases nobody touched for a while, and due.
        forgotten = list(
            Case.objects.filter(state=Case.State.PENDING_TRIAGE, updated_at__lt=cutoff)
            .exclude(triage_not_before__gt=timezone.now())
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:10_000]
        )
        Case.objects.filter(pk__in=forgotten).update(updated_at=timezone.now())
        case_ids = sorted(set(revived) | set(forgotten))
        if case_ids:
            audit.record_many(
                "case.triage_requeued",
                actor=None,
                objects=[(Case(pk=pk), {"worker_lost": pk in set(revived)}) for pk in case_ids],
            )
            for start in range(0, len(case_ids), 500):
                transaction.on_commit(partial(publish.triage_enqueue, case_ids=case_ids[start : start + 500]))
    return case_ids
