"""Decision callbacks: the platform is told the outcome, signed, and told again until it answers 2xx."""

from __future__ import annotations

import functools
import json
import os
import time
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from moderation.redis import redis_client
from moderation.signatures import signature_compute
from reviews import audit
from reviews.models import CallbackDelivery, Decision

CALLBACK_TIMEOUT_SECONDS = 10.0
# The sweep re-sends a decision never attempted this long after it was made, within the horizon.
CALLBACK_RESEND_AFTER = timedelta(minutes=5)
CALLBACK_RESEND_HORIZON = timedelta(days=7)
CALLBACK_RESEND_EVERY_SECONDS = 3600


@functools.cache
def _http_client(pid: int) -> httpx.Client:
    """One client per worker process (keyed by pid: a forked child must not share its parent's sockets).

    A client per attempt would build a TLS context each time: ~25 ms of CPU, which dominated the cost of
    retrying thousands of callbacks while a platform was down (tests/faults).
    """
    return httpx.Client(timeout=CALLBACK_TIMEOUT_SECONDS)


class CallbackFailed(Exception):
    """The platform did not accept the callback; the task retries with backoff."""


def callback_payload(decision: Decision) -> dict[str, Any]:
    case = decision.case
    return {
        "event": "case.decided",
        "decision_id": decision.pk,
        "case_id": case.pk,
        "item": {"id": case.item_id, "external_id": case.item.external_id},
        "policy": case.policy_version.policy.slug,
        "policy_version": case.policy_version.number,
        "is_appeal": case.is_appeal,
        "outcome": decision.final_label,
        "rule_ids": decision.rule_ids,
        "model_verdict": decision.model_verdict,
        "decided_at": decision.created_at.isoformat(),
    }


def callbacks_lost(*, max_attempts: int, limit: int = 500) -> list[int]:
    """Decisions the platform should have heard about whose delivery is not under way.

    The enqueue after commit never raises (a broker outage must not fail a moderator's decision), so a
    message can be lost: then a decision has no attempt at all. A retry waits in the broker (or in a
    worker's memory), so it can be lost too, with Redis or a killed worker: then a decision has only
    failed attempts, the last one older than the longest wait between retries. Postgres remembers, and
    this sweep sends those again, unless the retries ran out (max_attempts: left failed, visible on the
    callbacks page). A decision is re-sent at most once per CALLBACK_RESEND_EVERY_SECONDS, so a backlog in
    the broker is not multiplied.
    """
    now = timezone.now()
    retrying_since = (
        now - CALLBACK_RESEND_AFTER - timedelta(seconds=settings.CALLBACK_RETRY_BACKOFF_MAX_SECONDS)
    )
    deliveries = CallbackDelivery.objects.filter(decision=OuterRef("pk"))
    candidates = list(
        Decision.objects.filter(
            created_at__lt=now - CALLBACK_RESEND_AFTER,
            created_at__gte=now - CALLBACK_RESEND_HORIZON,
            case__qa_of__isnull=True,
        )
        .exclude(action=Decision.Action.ESCALATE)
        .exclude(case__item__source__callback_url="")
        .exclude(Exists(deliveries.filter(succeeded=True)))
        .exclude(Exists(deliveries.filter(created_at__gte=retrying_since)))
        .annotate(attempts=Count("callback_deliveries"))
        .filter(attempts__lt=max_attempts)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    client = redis_client()
    return [
        pk
        for pk in candidates
        if client.set(f"callback:resent:{pk}", 1, nx=True, ex=CALLBACK_RESEND_EVERY_SECONDS)
    ]


def callback_deliver(*, decision_id: int) -> CallbackDelivery | None:
    """One delivery attempt. Safe to run twice: a decision already delivered is not sent again."""
    decision = (
        Decision.objects.select_related("case__item__source", "case__policy_version__policy")
        .filter(pk=decision_id)
        .first()
    )
    if decision is None or decision.callback_deliveries.filter(succeeded=True).exists():
        return None
    # Only a settled outcome is news to the platform: not an escalation, not a QA second review.
    if decision.action == Decision.Action.ESCALATE or decision.case.qa_of_id is not None:
        return None
    source = decision.case.item.source
    if not source.callback_url:
        return None
    body = json.dumps(callback_payload(decision), separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "safeguard-review-queue",
        "X-Signature-Timestamp": timestamp,
        "X-Signature": signature_compute(secret=source.hmac_secret, timestamp=timestamp, body=body),
    }
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    try:
        response = _http_client(os.getpid()).post(source.callback_url, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    with transaction.atomic():
        delivery = CallbackDelivery.objects.create(
            decision=decision,
            url=source.callback_url,
            attempt=decision.callback_deliveries.count() + 1,
            status_code=status_code,
            succeeded=not error,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        audit.record(
            "callback.delivered" if delivery.succeeded else "callback.failed",
            actor=None,
            obj=delivery,
            payload={
                "decision_id": decision.pk,
                "attempt": delivery.attempt,
                "status_code": status_code,
                "error": error,
            },
        )
    if error:
        raise CallbackFailed(error)
    return delivery
