"""Decision callbacks to the platform: signed, logged per attempt, retried, and never in a moderator's way."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from audit.models import AuditEvent
from config.celery import app as celery_app
from moderation.models import Case, Source
from moderation.signatures import signature_verify
from policies.models import Policy
from reviews import callbacks, services, tasks
from reviews.callbacks import CallbackFailed
from reviews.models import CallbackDelivery, Decision
from reviews.services import DecisionIn
from tests.conftest import ApiClient, CasesFactory
from tests.reviews.helpers import CallbackReceiver, refused_url


@pytest.fixture(autouse=True)
def no_qa_sampling(policy: Policy) -> None:
    policy.qa_sample_rate = 0
    policy.save()


def platform_at(source: ApiClient, url: str) -> Source:
    source.source.callback_url = url
    source.source.save()
    return source.source


def decided(moderator: User, queued_cases: CasesFactory, **fields: Any) -> Decision:
    [case] = queued_cases(**fields)
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    return services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="safe", rule_ids=[]),
    )


def test_it_delivers_a_signed_callback(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, callback_receiver: CallbackReceiver
) -> None:
    platform = platform_at(source, callback_receiver.url)
    decision = decided(moderator, queued_cases)

    delivery = callbacks.callback_deliver(decision_id=decision.pk)

    [received] = callback_receiver.received
    assert received.path == "/hooks/decisions"
    assert received.headers["content-type"] == "application/json"
    # The platform checks the signature exactly as we check theirs.
    signature_verify(
        secret=platform.hmac_secret,
        timestamp=received.headers["x-signature-timestamp"],
        signature=received.headers["x-signature"],
        body=received.body,
        window_seconds=300,
        replay_scope="platform",
    )
    body = json.loads(received.body)
    case = decision.case
    assert body == {
        "event": "case.decided",
        "decision_id": decision.pk,
        "case_id": case.pk,
        "item": {"id": case.item_id, "external_id": case.item.external_id},
        "policy": "spam",
        "policy_version": 1,
        "is_appeal": False,
        "outcome": "safe",
        "rule_ids": [],
        "model_verdict": "violates",
        "decided_at": decision.created_at.isoformat(),
    }
    assert delivery is not None
    assert (delivery.attempt, delivery.status_code, delivery.succeeded, delivery.error) == (1, 200, True, "")
    assert delivery.url == callback_receiver.url
    assert AuditEvent.objects.filter(action="callback.delivered", object_id=str(delivery.pk)).count() == 1


def test_a_tampered_callback_does_not_verify(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, callback_receiver: CallbackReceiver
) -> None:
    from moderation.signatures import SignatureRefused

    platform = platform_at(source, callback_receiver.url)
    decision = decided(moderator, queued_cases)
    callbacks.callback_deliver(decision_id=decision.pk)
    [received] = callback_receiver.received
    with pytest.raises(SignatureRefused):
        signature_verify(
            secret=platform.hmac_secret,
            timestamp=received.headers["x-signature-timestamp"],
            signature=received.headers["x-signature"],
            body=received.body.replace(b'"safe"', b'"violates"'),
            window_seconds=300,
            replay_scope="platform",
        )


def test_it_logs_a_failed_attempt_retries_and_delivers_once(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, callback_receiver: CallbackReceiver
) -> None:
    platform_at(source, callback_receiver.url)
    decision = decided(moderator, queued_cases)
    callback_receiver.status = 500

    with pytest.raises(CallbackFailed, match="HTTP 500"):
        tasks.callback_deliver(decision_id=decision.pk)  # the task body: Celery retries on CallbackFailed
    failed = CallbackDelivery.objects.get(decision=decision)
    assert (failed.attempt, failed.status_code, failed.succeeded, failed.error) == (1, 500, False, "HTTP 500")
    assert AuditEvent.objects.filter(action="callback.failed", object_id=str(failed.pk)).count() == 1

    callback_receiver.status = 204  # the platform recovered
    tasks.callback_deliver(decision_id=decision.pk)
    assert tasks.callback_deliver(decision_id=decision.pk) is None  # a redelivered message: nothing sent

    assert len(callback_receiver.received) == 2
    assert list(
        CallbackDelivery.objects.filter(decision=decision)
        .order_by("attempt")
        .values_list("attempt", "status_code", "succeeded")
    ) == [(1, 500, False), (2, 204, True)]


def test_it_logs_an_unreachable_platform(
    source: ApiClient, moderator: User, queued_cases: CasesFactory
) -> None:
    url = refused_url()
    platform_at(source, url)
    decision = decided(moderator, queued_cases)
    with pytest.raises(CallbackFailed, match="ConnectError"):
        callbacks.callback_deliver(decision_id=decision.pk)
    failed = CallbackDelivery.objects.get(decision=decision)
    assert failed.url == url and failed.status_code is None and not failed.succeeded
    assert failed.error.startswith("ConnectError")


def test_it_sends_nothing_for_an_escalation_or_a_source_without_callback_url(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    decision = decided(moderator, queued_cases)
    assert callbacks.callback_deliver(decision_id=decision.pk) is None
    platform_at(source, callback_receiver.url)
    [case] = queued_cases()
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    with django_capture_on_commit_callbacks() as captured:
        services.case_decide(
            case=claimed, moderator=moderator, decision=DecisionIn(action=Decision.Action.ESCALATE, note="?")
        )
    assert captured == []
    assert not CallbackDelivery.objects.exists() and callback_receiver.received == []


def test_the_task_retries_callback_failures_with_backoff() -> None:
    task: Any = tasks.callback_deliver  # the retry options are set on the task class by the decorator
    assert task.name == "reviews.callback_deliver"
    assert CallbackFailed in task.autoretry_for
    assert task.retry_backoff and task.retry_backoff_max >= 600 and task.retry_jitter
    assert task.max_retries is not None and task.max_retries >= 10
    assert task.acks_late
    # The callbacks page promises about 4.5 hours of retries; full jitter halves the average wait.
    longest = sum(min(2**n, task.retry_backoff_max) for n in range(task.max_retries))
    average = longest / 2 if task.retry_jitter else longest
    assert 4 * 3600 <= average <= 5 * 3600


def test_the_admin_page_lists_every_attempt(
    source: ApiClient,
    moderator: User,
    admin: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
) -> None:
    platform_at(source, callback_receiver.url)
    decision = decided(moderator, queued_cases)
    callback_receiver.status = 503
    with pytest.raises(CallbackFailed):
        callbacks.callback_deliver(decision_id=decision.pk)
    client = Client()
    client.force_login(admin)
    page = client.get("/callbacks/")
    assert page.status_code == 200
    assert b"HTTP 503" in page.content
    assert decision.case.item.external_id.encode() in page.content


def test_a_decision_succeeds_while_the_platform_is_down(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    redis_test_db: redis.Redis,
    django_capture_on_commit_callbacks: Any,
) -> None:
    platform_at(source, refused_url())
    [case] = queued_cases()
    client = Client()
    client.force_login(moderator)
    client.post("/queue/next")
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"]})
    assert time.monotonic() - started < 2
    assert response.status_code == 302
    decision = Decision.objects.get(case=case)
    # Delivery is the worker's job: a message waits in the broker, nothing was attempted yet.
    message = json.loads(redis_test_db.lindex("celery", 0) or b"{}")
    assert message["headers"]["task"] == "reviews.callback_deliver"
    assert message["headers"]["argsrepr"] == "()" and str(decision.pk) in message["headers"]["kwargsrepr"]
    assert not CallbackDelivery.objects.exists()


@contextlib.contextmanager
def broker_unreachable() -> Iterator[None]:
    """Publishing goes to a Redis port nobody listens on (connection refused)."""
    app: Any = celery_app  # private pools: reset so the next publish connects to the new URL
    saved = app.conf.broker_write_url
    app.conf.broker_write_url = "redis://127.0.0.1:1/0"
    app._pool = app.amqp._producer_pool = None
    try:
        yield
    finally:
        app.conf.broker_write_url = saved
        app._pool = app.amqp._producer_pool = None


@pytest.fixture
def broken_broker() -> Iterator[None]:
    with broker_unreachable():
        yield


def test_a_decision_succeeds_while_the_broker_is_down(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    broken_broker: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with pytest.raises(BrokerError):  # the broker really is out of reach
        tasks.callback_deliver.delay(decision_id=0)
    platform_at(source, "http://127.0.0.1:9/hooks")
    first, second = queued_cases(2)
    client = Client()
    client.force_login(moderator)
    client.post("/queue/next")
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True) as captured:
        response = client.post(f"/cases/{first.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"]})
    assert len(captured) == 1  # the enqueue ran, and swallowed the broker error
    assert time.monotonic() - started < 5
    assert response.status_code == 302 and response["Location"] == f"/cases/{second.pk}/"
    assert Decision.objects.filter(case=first).exists()
    first.refresh_from_db()
    assert first.state == Case.State.DECIDED


def test_the_sweep_sends_a_callback_the_broker_outage_lost(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    redis_test_db: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    platform_at(source, callback_receiver.url)
    # Decided while the broker was down: the enqueue was swallowed.
    with broker_unreachable(), django_capture_on_commit_callbacks(execute=True):
        lost = decided(moderator, queued_cases)
    with django_capture_on_commit_callbacks(execute=True):
        delivered = decided(moderator, queued_cases)
    callbacks.callback_deliver(decision_id=delivered.pk)
    redis_test_db.delete("celery")

    tasks.callbacks_sweep()  # too early: the message may just be waiting for a worker
    assert redis_test_db.llen("celery") == 0

    monkeypatch.setattr(callbacks, "CALLBACK_RESEND_AFTER", timedelta(0))
    tasks.callbacks_sweep()
    [message] = [json.loads(m) for m in redis_test_db.lrange("celery", 0, -1)]
    assert message["headers"]["task"] == "reviews.callback_deliver"
    assert f"'decision_id': {lost.pk}" in message["headers"]["kwargsrepr"]
    tasks.callbacks_sweep()  # not re-sent on every run
    assert redis_test_db.llen("celery") == 1

    tasks.callback_deliver(decision_id=lost.pk)
    assert [json.loads(r.body)["decision_id"] for r in callback_receiver.received] == [delivered.pk, lost.pk]


def test_the_sweep_resumes_a_callback_whose_retry_was_lost(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    platform_at(source, refused_url())
    monkeypatch.setattr(callbacks, "CALLBACK_RESEND_AFTER", timedelta(0))
    settings.CALLBACK_RETRY_BACKOFF_MAX_SECONDS = 1800
    with django_capture_on_commit_callbacks(execute=False):  # no delivery task: we make the attempt
        stalled = decided(moderator, queued_cases)
    with pytest.raises(CallbackFailed):
        callbacks.callback_deliver(decision_id=stalled.pk)

    # Its retry may still be waiting (up to 30 minutes): not sent again yet.
    assert callbacks.callbacks_lost(max_attempts=29) == []

    # Nothing for longer than any retry waits: the retry was lost with the broker or a killed worker.
    long_ago = timezone.now() - timedelta(minutes=31)
    CallbackDelivery.objects.filter(decision=stalled).update(created_at=long_ago)
    assert callbacks.callbacks_lost(max_attempts=2) == [stalled.pk]


def test_the_sweep_leaves_a_callback_whose_retries_ran_out(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_at(source, refused_url())
    monkeypatch.setattr(callbacks, "CALLBACK_RESEND_AFTER", timedelta(0))
    given_up = decided(moderator, queued_cases)
    with pytest.raises(CallbackFailed):
        callbacks.callback_deliver(decision_id=given_up.pk)
    CallbackDelivery.objects.filter(decision=given_up).update(created_at=timezone.now() - timedelta(days=1))

    assert callbacks.callbacks_lost(max_attempts=1) == []


def test_it_never_calls_back_an_escalation_or_a_qa_review(
    source: ApiClient,
    moderator: User,
    other_moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    policy: Policy,
) -> None:
    platform_at(source, callback_receiver.url)
    policy.qa_sample_rate = 1.0
    policy.save()
    [case] = queued_cases()
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
    )
    qa = services.case_claim_next(moderator=other_moderator)
    assert qa is not None and qa.qa_of_id == case.pk
    escalation = services.case_decide(
        case=qa, moderator=other_moderator, decision=DecisionIn(action=Decision.Action.ESCALATE, note="?")
    )
    assert callbacks.callback_deliver(decision_id=escalation.pk) is None
    assert callback_receiver.received == [] and not CallbackDelivery.objects.exists()


# Hostile platforms: an answer that never ends, a receiver that trickles. Servers on the loopback, bounded in
# time (each gives up after HOSTILE_SERVER_SECONDS even if the client never hangs up).
HOSTILE_SERVER_SECONDS = 30.0
ONE_GB = 1 << 30


class HostileReceiver:
    """A raw TCP server on 127.0.0.1 that reads the request and then runs `answer(connection)`."""

    def __init__(self, answer: Callable[[socket.socket, float], None]) -> None:
        self.answer = answer
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks/decisions"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(65536)
                length = int(re.search(rb"content-length: *(\d+)", request, re.I).group(1))  # type: ignore[union-attr]
                while len(request.split(b"\r\n\r\n", 1)[1]) < length:
                    request += connection.recv(65536)
                with contextlib.suppress(OSError):
                    self.answer(connection, time.monotonic() + HOSTILE_SERVER_SECONDS)

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent += len(data)

    def __enter__(self) -> HostileReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=HOSTILE_SERVER_SECONDS + 5)
        self.listener.close()


@pytest.fixture
def endless_receiver() -> Iterator[HostileReceiver]:
    """Answers 200 with a 1 GB body, sent 64 KB at a time (never held in memory) until the client hangs up."""
    chunk = b"x" * 65536

    def answer(connection: socket.socket, until: float) -> None:
        receiver.send(connection, f"HTTP/1.1 200 OK\r\nContent-Length: {ONE_GB}\r\n\r\n".encode())
        while receiver.sent < ONE_GB and time.monotonic() < until:
            receiver.send(connection, chunk)

    with HostileReceiver(answer) as receiver:
        yield receiver


def trickle(headers: bytes, body: bytes, every: float) -> Callable[[socket.socket, float], None]:
    def answer(connection: socket.socket, until: float) -> None:
        connection.sendall(headers)
        for byte in body:
            if time.monotonic() > until:
                return
            time.sleep(every)
            connection.sendall(bytes([byte]))

    return answer


def test_it_reads_only_the_first_bytes_of_an_endless_answer(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    endless_receiver: HostileReceiver,
    settings: Any,
) -> None:
    settings.CALLBACK_RESPONSE_MAX_BYTES = 2048
    platform_at(source, endless_receiver.url)
    decision = decided(moderator, queued_cases)

    tracemalloc.start()
    started = time.monotonic()
    try:
        delivery = callbacks.callback_deliver(decision_id=decision.pk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started

    # The platform said 2xx: delivered, though most of its answer was never read.
    assert delivery is not None and delivery.succeeded and delivery.status_code == 200
    event = AuditEvent.objects.get(action="callback.delivered", object_id=str(delivery.pk))
    assert event.payload["response"] == "x" * 2048  # what is kept is cut at the cap
    assert peak < 4 * 1024 * 1024, f"peak Python allocation {peak} bytes"
    assert endless_receiver.sent < 64 * 1024 * 1024  # the client hung up; most of the gigabyte was never sent
    assert elapsed < 5


def test_a_trickling_platform_ends_the_attempt_at_the_deadline_and_it_is_retried(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, settings: Any
) -> None:
    # One byte every 0.3 s: each read is well within the 10 s per-read timeout, the whole never ends.
    settings.CALLBACK_TOTAL_TIMEOUT_SECONDS = 2
    status_line = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with HostileReceiver(trickle(b"", status_line, every=0.3)) as receiver:
        platform_at(source, receiver.url)
        decision = decided(moderator, queued_cases)
        started = time.monotonic()
        with pytest.raises(CallbackFailed, match="ReadTimeout: callback took longer than 2 s"):
            tasks.callback_deliver(decision_id=decision.pk)  # the task body: Celery retries on CallbackFailed
        elapsed = time.monotonic() - started

    assert 2 <= elapsed < 3.5
    failed = CallbackDelivery.objects.get(decision=decision)
    assert (failed.attempt, failed.status_code, failed.succeeded) == (1, None, False)
    assert failed.error == "ReadTimeout: callback took longer than 2 s"
    assert 2000 <= failed.duration_ms < 3500
    assert AuditEvent.objects.filter(action="callback.failed", object_id=str(failed.pk)).count() == 1


def test_a_body_trickled_after_the_headers_is_cut_at_the_deadline_too(
    source: ApiClient, moderator: User, queued_cases: CasesFactory, settings: Any
) -> None:
    settings.CALLBACK_TOTAL_TIMEOUT_SECONDS = 1.5
    headers = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    with HostileReceiver(trickle(headers, b"y" * 100, every=0.3)) as receiver:
        platform_at(source, receiver.url)
        decision = decided(moderator, queued_cases)
        with pytest.raises(CallbackFailed, match="ReadTimeout"):
            callbacks.callback_deliver(decision_id=decision.pk)
    failed = CallbackDelivery.objects.get(decision=decision)
    assert failed.status_code is None and not failed.succeeded and failed.duration_ms < 3000


def test_an_attempt_cut_by_the_soft_time_limit_is_recorded_audited_and_retried(
    source: ApiClient,
    moderator: User,
    queued_cases: CasesFactory,
    callback_receiver: CallbackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    platform_at(source, callback_receiver.url)
    decision = decided(moderator, queued_cases)

    def cut(*_: object, **__: object) -> tuple[int, bytes]:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(callbacks, "_post_capped", cut)
    with pytest.raises(CallbackFailed, match="time limit exceeded"):
        tasks.callback_deliver(decision_id=decision.pk)
    failed = CallbackDelivery.objects.get(decision=decision)
    assert (failed.succeeded, failed.error) == (False, "time limit exceeded")
    assert AuditEvent.objects.filter(action="callback.failed", object_id=str(failed.pk)).count() == 1
    task: Any = tasks.callback_deliver
    # The client's deadline comes first; Celery's limits are only a backstop.
    assert task.soft_time_limit > callbacks.settings.CALLBACK_TOTAL_TIMEOUT_SECONDS


def test_an_answer_with_nul_bytes_is_stored(
    source: ApiClient, moderator: User, queued_cases: CasesFactory
) -> None:
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nno\x00\xffx"
    with HostileReceiver(trickle(answer, b"", every=0)) as receiver:
        platform_at(source, receiver.url)
        decision = decided(moderator, queued_cases)
        with pytest.raises(CallbackFailed, match="HTTP 400"):
            callbacks.callback_deliver(decision_id=decision.pk)
    failed = CallbackDelivery.objects.get(decision=decision)
    event = AuditEvent.objects.get(action="callback.failed", object_id=str(failed.pk))
    assert event.payload["response"] == "no\ufffd\ufffdx"
