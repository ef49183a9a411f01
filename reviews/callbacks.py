"""Decision callbacks: the platform is told the outcome, signed, and told again until it answers 2xx."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import ssl
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import httpcore
import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit import services as audit
from moderation import callback_urls
from moderation.redis import redis_client
from moderation.signatures import signature_compute
from reviews.models import CallbackDelivery, Decision

# Per connect, read or write; the whole attempt ends by CALLBACK_TOTAL_TIMEOUT_SECONDS.
CALLBACK_TIMEOUT_SECONDS = 10.0
# The sweep re-sends a decision never attempted this long after it was made, within the horizon.
CALLBACK_RESEND_AFTER = timedelta(minutes=5)
CALLBACK_RESEND_HORIZON = timedelta(days=7)
CALLBACK_RESEND_EVERY_SECONDS = 3600


# The end of the current attempt (time.monotonic()), read by every socket operation of the callback client.
_attempt_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "callback_attempt_deadline", default=None
)


def _deadline_message() -> str:
    return f"callback took longer than {settings.CALLBACK_TOTAL_TIMEOUT_SECONDS:g} s"


def _within_deadline(timeout: float | None, expired: type[Exception]) -> float | None:
    """The per-operation timeout, shortened to what is left of the attempt; raises `expired` when none is."""
    deadline = _attempt_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired(_deadline_message())
    return left if timeout is None else min(timeout, left)


@contextlib.contextmanager
def _deadline_named(expired: type[Exception]) -> Iterator[None]:
    """A socket timeout cut short by the deadline says so (not only "timed out")."""
    try:
        yield
    except expired as exc:
        deadline = _attempt_deadline.get()
        if deadline is not None and time.monotonic() >= deadline:
            raise expired(_deadline_message()) from exc
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the attempt's deadline (a trickle cannot hold it)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _deadline_named(httpcore.ReadTimeout):
            return self._stream.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _deadline_named(httpcore.WriteTimeout):
            self._stream.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # server_hostname is the URL's host: SNI and certificate checks use the name, not the address.
        with _deadline_named(httpcore.ConnectTimeout):
            timeout = _within_deadline(timeout, httpcore.ConnectTimeout)
            return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CheckedBackend(httpcore.SyncBackend):
    """Resolves the host once, checks every address, and connects only to an address it checked.

    Checking the URL when it is set is not enough: the name may resolve elsewhere later (DNS rebinding), and
    a resolver asked twice may answer twice differently. The Host header and TLS (SNI, certificate) still
    use the URL's host name.
    """

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _within_deadline(timeout, httpcore.ConnectTimeout)
        try:
            addresses = callback_urls.host_addresses(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
        callback_urls.addresses_check(host, addresses)
        failure: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                with _deadline_named(httpcore.ConnectTimeout):
                    left = _within_deadline(timeout, httpcore.ConnectTimeout)
                    stream = super().connect_tcp(str(address), port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream)
        raise failure


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's transport over a pool that connects through _CheckedBackend.

    httpx offers no way to pass a network backend to the pool it builds, so the pool is replaced by the same
    pool with ours. Certificates are verified as httpx does by default (certifi, or SSL_CERT_FILE).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(), network_backend=_CheckedBackend()
        )


@functools.cache
def _http_client(pid: int) -> httpx.Client:
    """One client per worker process (keyed by pid: a forked child must not share its parent's sockets).

    A client per attempt would build a TLS context each time: ~25 ms of CPU, which dominated the cost of
    retrying thousands of callbacks while a platform was down (tests/faults). Proxy variables are ignored
    (trust_env=False): a proxy would connect to addresses the policy never checked. Redirects are not
    followed (httpx's default).
    """
    return httpx.Client(timeout=CALLBACK_TIMEOUT_SECONDS, transport=_CheckedTransport(), trust_env=False)


def _post_capped(url: str, *, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST and read at most CALLBACK_RESPONSE_MAX_BYTES of the answer; the rest is never read."""
    cap = settings.CALLBACK_RESPONSE_MAX_BYTES
    received = bytearray()
    with _http_client(os.getpid()).stream("POST", url, content=body, headers=headers) as response:
        for chunk in response.iter_raw():
            received += chunk[: cap - len(received)]
            if len(received) >= cap:
                break  # closing an unread response closes its connection
        return response.status_code, bytes(received)


def _text(data: bytes) -> str:
    # PostgreSQL text and jsonb cannot hold NUL.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


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
    # Counted in a subquery, not by grouping decisions: their primary key is (id, created_at) since they are
    # partitioned by month, so grouping by id no longer lets the query order by created_at.
    attempts = deliveries.order_by().values("decision").annotate(n=Count("pk")).values("n")
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
        .annotate(attempts=Coalesce(Subquery(attempts), 0))
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
        "Accept-Encoding": "identity",  # the capped read counts bytes as sent: no decompression bomb
        "X-Signature-Timestamp": timestamp,
        "X-Signature": signature_compute(secret=source.hmac_secret, timestamp=timestamp, body=body),
    }
    started = time.monotonic()
    status_code: int | None = None
    response = b""
    error = ""
    # Every way an attempt can end is recorded below and retried (CallbackFailed): an answer, a refusal, a
    # network error, the attempt's deadline, or Celery's soft time limit.
    deadline = _attempt_deadline.set(started + settings.CALLBACK_TOTAL_TIMEOUT_SECONDS)
    try:
        callback_urls.callback_url_check(
            source.callback_url, resolve=False
        )  # the address is checked at connection time
        status_code, response = _post_capped(source.callback_url, body=body, headers=headers)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except callback_urls.CallbackAddressRefused:
        error = callback_urls.ADDRESS_REFUSED
    except callback_urls.CallbackUrlRefused as exc:
        error = f"callback URL not allowed: {exc}"
    except SoftTimeLimitExceeded:
        error = "time limit exceeded"
    except Exception as exc:  # any failure is this attempt's outcome, recorded and retried
        error = f"{type(exc).__name__}: {exc}"
    finally:
        _attempt_deadline.reset(deadline)
    error = _text(error.encode())[:300]
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
                # What the platform answered, cut at CALLBACK_RESPONSE_MAX_BYTES.
                "response": _text(response),
            },
        )
    if error:
        raise CallbackFailed(error)
    return delivery
