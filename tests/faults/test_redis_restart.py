"""Fault: Redis (the broker, rate-limit counters, replay guard, breaker) restarts while items arrive.

This machine's Redis keeps nothing on disk, so a restart loses every queued message. PostgreSQL is the
source of truth: ingestion keeps accepting (the enqueue after commit tolerates a missing broker), and the
triage sweep re-enqueues what the lost messages would have triggered.

Restarting Redis empties every Redis database on the machine, including other test runs': run this test
sparingly. Redis is started again whatever happens.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit.models import AuditEvent
from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case
from moderation.redis import redis_client
from moderation.signatures import signature_compute
from tests.faults.conftest import Platform
from tests.faults.invariants import assert_nothing_lost
from tests.faults.stack import (
    expected_label,
    item_texts,
    items_send,
    stack_running,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

REDIS_STOP = ["redis-cli", "-p", "6379", "shutdown", "nosave"]
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def redis_answers() -> bool:
    done = subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() == "PONG"


def redis_start() -> None:
    if not redis_answers():
        subprocess.run(REDIS_START, check=True, timeout=30)
    wait_for(redis_answers, timeout=30, what="Redis to answer PING")


@pytest.fixture
def redis_restartable() -> Iterator[None]:
    """Redis is running after the test, whatever happened in it."""
    try:
        yield
    finally:
        redis_start()


def redis_stop() -> None:
    subprocess.run(REDIS_STOP, capture_output=True, timeout=30, check=False)
    wait_for(lambda: not redis_answers(), timeout=30, what="Redis to stop")


def test_it_keeps_every_item_when_redis_restarts_while_items_arrive(
    platform: Platform, engine: EngineSimulator, tmp_path: Path, redis_restartable: None
) -> None:
    engine.latency = 0.2  # the batch sent before is still in triage when Redis goes
    before, during, after = (
        item_texts(phase, size) for phase, size in (("before", 250), ("during", 1000), ("after", 1000))
    )
    texts = {**before, **during, **after}
    source = platform.source
    cases = Case.objects.filter(item__source=source)
    with stack_running(tmp_path, engine.base_url) as stack:
        sent = items_send(stack.base_url, platform.api_key, before)
        wait_for(lambda: cases.filter(state=Case.State.TRIAGING).exists(), timeout=60, what="triage")
        # Messages queued or delivered but not yet acknowledged (acks_late): the restart loses them.
        client = redis_client()
        messages_lost = client.llen("celery") + client.hlen("unacked")
        redis_stop()
        try:
            # The running pump needs only Postgres (and the engine): it finishes its work.
            stack.wait_settled(source, "the first batch")
            # Ingestion keeps accepting: Postgres has the items; the enqueue fails and is tolerated.
            outage = items_send(stack.base_url, platform.api_key, during, retry_for=0)
            assert set(outage.statuses) == {201}, outage.errors[:3]
            # A signed request cannot be checked for replay without Redis: refused with a retryable 503.
            signed = signed_item_post(stack.base_url, platform)
            assert signed.status_code == 503
            assert "retry" in signed.json()["detail"]
            health = httpx.get(f"{stack.base_url}/healthz", timeout=10)
            assert health.status_code == 503
            assert health.json()["broker"].startswith("error")
        finally:
            redis_start()
        # Nothing carries the outage's items to a worker now but the sweep.
        stack.wait_settled(source, "the outage's items")
        swept = AuditEvent.objects.filter(action="case.triage_requeued", payload__worker_lost=False).count()
        sent.accepted |= outage.accepted | items_send(stack.base_url, platform.api_key, after).accepted
        stack.wait_settled(source)
        wait_for(
            lambda: httpx.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200,
            timeout=60,
            what="/healthz to recover",
        )
        # Once Redis is back, the replay guard works again.
        assert signed_item_post(stack.base_url, platform).status_code == 201

    assert sent.accepted == set(texts)
    report = assert_nothing_lost(
        source=source,
        external_ids={**texts, "signed-1": ""},
        expected_labels={**{k: expected_label(v) for k, v in texts.items()}, "signed-1": "safe"},
    )
    assert messages_lost > 0, "no message was in Redis when it stopped: the restart lost nothing"
    assert swept > 0, "the sweep should have re-enqueued the items accepted during the outage"
    print(
        f"redis restart: {messages_lost} messages lost, {len(outage.accepted)} items accepted during the "
        f"outage, {swept} of their cases re-enqueued by the sweep; {report.line()}"
    )


def signed_item_post(base_url: str, platform: Platform) -> httpx.Response:
    body = json.dumps({"external_id": "signed-1", "text": "a signed hello"}).encode()
    timestamp = str(int(time.time()))
    signature = signature_compute(secret=platform.source.hmac_secret, timestamp=timestamp, body=body)
    return httpx.post(
        f"{base_url}/api/v1/items",
        content=body,
        headers={
            "Authorization": f"Bearer {platform.api_key}",
            "Content-Type": "application/json",
            "X-Signature-Timestamp": timestamp,
            "X-Signature": signature,
        },
        timeout=30,
    )
