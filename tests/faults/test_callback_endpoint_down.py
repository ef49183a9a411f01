"""Fault: the platform's callback endpoint is down for an hour's worth of retries, then up.

Time is compressed: the backoff cap (CALLBACK_RETRY_BACKOFF_MAX_SECONDS) is 1 s instead of 30 minutes,
but the endpoint refuses each decision as many times as production would try in its first hour.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case
from moderation.signatures import signature_compute
from reviews.models import CallbackDelivery, Decision
from reviews.tasks import CALLBACK_MAX_RETRIES
from tests.faults.conftest import PlatformFactory
from tests.faults.invariants import assert_nothing_lost
from tests.faults.stack import SETTLE_TIMEOUT_SECONDS, item_texts, items_send, stack_running, wait_for
from tests.reviews.helpers import user_create

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

ITEMS = 2000
DECISIONS = 100
HOUR_SECONDS = 3600
PRODUCTION_BACKOFF_CAP_SECONDS = 1800  # CALLBACK_RETRY_BACKOFF_MAX_SECONDS' default
MODERATOR_PASSWORD = "not-used-in-tests"  # tests.reviews.helpers.user_create's


def attempts_in_the_first_hour(cap: int) -> int:
    """Deliveries production makes in an hour: Celery waits randrange(min(cap, 2**k) + 1) s before retry k."""
    attempts, elapsed = 1, 0.0
    for retry in range(CALLBACK_MAX_RETRIES):
        elapsed += min(cap, 2**retry) / 2  # the mean of full jitter
        if elapsed > HOUR_SECONDS:
            break
        attempts += 1
    return attempts


DOWN_FOR_ATTEMPTS = attempts_in_the_first_hour(PRODUCTION_BACKOFF_CAP_SECONDS)


class FlakyPlatform:
    """A callback endpoint that refuses (503) each decision's first DOWN_FOR_ATTEMPTS deliveries.

    Like a careful platform it applies a decision once, keyed by the payload's decision_id.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[int] = Counter()
        self.applied: Counter[int] = Counter()
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                decision_id = int(json.loads(body)["decision_id"])
                with platform.lock:
                    platform.attempts[decision_id] += 1
                    up = platform.attempts[decision_id] > DOWN_FOR_ATTEMPTS
                    if up:
                        platform.applied[decision_id] += 1
                        platform.bodies.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200 if up else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/decisions"


@pytest.fixture
def flaky_platform() -> Iterator[FlakyPlatform]:
    receiver = FlakyPlatform()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


CASE_URL = re.compile(r"/cases/(\d+)/$")


def moderate(base_url: str, username: str, decisions: int) -> list[int]:
    """A moderator in a browser: log in, take the next case, confirm, next... Returns every status seen."""
    statuses = []
    with httpx.Client(base_url=base_url, timeout=30) as browser:
        browser.get("/login/")
        token = browser.cookies["csrftoken"]
        login = browser.post(
            "/login/",
            data={"username": username, "password": MODERATOR_PASSWORD, "csrfmiddlewaretoken": token},
        )
        assert login.status_code == 302, login.text[:500]
        headers = {"X-CSRFToken": browser.cookies["csrftoken"]}
        response = browser.post("/queue/next", headers=headers)
        for _ in range(decisions):
            statuses.append(response.status_code)
            case = CASE_URL.search(response.headers.get("location", ""))
            assert case is not None, f"no case to decide: {response.status_code} {response.headers}"
            response = browser.post(f"/cases/{case[1]}/decide", data={"action": "confirm"}, headers=headers)
        statuses.append(response.status_code)
    return statuses


def test_it_delivers_every_decision_once_after_the_callback_endpoint_comes_back(
    platform_create: PlatformFactory,
    flaky_platform: FlakyPlatform,
    engine: EngineSimulator,
    static_root: Path,
    tmp_path: Path,
) -> None:
    platform = platform_create(callback_url=flaky_platform.url)
    source = platform.source
    moderator = user_create("mona", Role.MODERATOR, grants=list(source.policies.all()))
    texts = item_texts("hook", ITEMS)
    with stack_running(tmp_path, engine.base_url, STATIC_ROOT=str(static_root)) as stack:
        sent = items_send(stack.base_url, platform.api_key, texts)
        stack.wait_settled(source)

        statuses = moderate(stack.base_url, moderator.username, DECISIONS)
        decided = Decision.objects.filter(case__item__source=source)
        wait_for(
            lambda: CallbackDelivery.objects.filter(succeeded=True).count() >= DECISIONS,
            timeout=SETTLE_TIMEOUT_SECONDS,
            what="every decision delivered",
        )
    assert sent.accepted == set(texts)
    # Never held up by the platform: every decision was taken and answered with the next case.
    assert statuses == [302] * (DECISIONS + 1)
    assert decided.count() == DECISIONS
    assert Case.objects.filter(item__source=source, state=Case.State.DECIDED).count() == DECISIONS

    report = assert_nothing_lost(source=source, external_ids=texts)
    decision_ids = set(decided.values_list("id", flat=True))
    # The hour of refusals, then one delivery each; every attempt logged, as a row and in the audit log.
    assert set(flaky_platform.attempts) == decision_ids
    assert min(flaky_platform.attempts.values()) == DOWN_FOR_ATTEMPTS + 1
    assert set(flaky_platform.applied.values()) == {1}, "the platform applied a decision twice"
    logged = Counter(
        CallbackDelivery.objects.filter(decision__in=decision_ids).values_list("decision", flat=True)
    )
    assert logged == flaky_platform.attempts
    # One attempt after another (each retry scheduled by the one before), numbered 1, 2, 3 ...
    numbers: dict[int, list[int]] = {}
    for decision_id, attempt in CallbackDelivery.objects.order_by("attempt").values_list(
        "decision", "attempt"
    ):
        numbers.setdefault(decision_id, []).append(attempt)
    assert all(n == list(range(1, len(n) + 1)) for n in numbers.values())
    failed = CallbackDelivery.objects.filter(decision__in=decision_ids, succeeded=False)
    assert set(failed.values_list("status_code", flat=True)) == {503}
    assert AuditEvent.objects.filter(action="callback.failed").count() == failed.count()
    assert AuditEvent.objects.filter(action="callback.delivered").count() == DECISIONS
    # The platform can dedupe and check each one: a stable decision id, and a valid signature.
    for headers, body in flaky_platform.bodies:
        assert json.loads(body)["decision_id"] in decision_ids
        expected = signature_compute(
            secret=source.hmac_secret, timestamp=headers["x-signature-timestamp"], body=body
        )
        assert headers["x-signature"] == expected
    print(
        f"callback endpoint down: {DECISIONS} decisions, each refused {DOWN_FOR_ATTEMPTS} times "
        f"({failed.count()} failed attempts logged), then delivered once; {report.line()}"
    )
