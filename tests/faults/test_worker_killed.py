"""Fault: the Celery worker is killed with SIGKILL in the middle of a batch, then restarted."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from audit.models import AuditEvent
from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case
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

ITEMS = 3000


def test_it_triages_every_item_after_the_worker_is_killed_mid_batch(
    platform: Platform, engine: EngineSimulator, tmp_path: Path
) -> None:
    engine.latency = 0.3  # long enough that a kill finds requests in flight
    texts = item_texts("kill", ITEMS)
    source = platform.source
    cases = Case.objects.filter(item__source=source)
    with stack_running(tmp_path, engine.base_url) as stack, concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(items_send, stack.base_url, platform.api_key, texts)
        wait_for(
            lambda: (
                cases.filter(state=Case.State.TRIAGING).count() >= 20
                and cases.exclude(state__in=[Case.State.PENDING_TRIAGE, Case.State.TRIAGING]).count() >= 200
            ),
            timeout=120,
            what="triage to be under way",
        )
        stack.worker_kill()
        orphaned = cases.filter(state=Case.State.TRIAGING).count()
        sent = sending.result(timeout=120)
        assert sent.accepted == set(texts)
        assert orphaned > 0, "the kill found nothing in triage: it tested nothing"

        stack.worker_restart()
        stack.wait_settled(source)

    report = assert_nothing_lost(
        source=source, external_ids=texts, expected_labels={k: expected_label(v) for k, v in texts.items()}
    )
    revived = AuditEvent.objects.filter(action="case.triage_requeued", payload__worker_lost=True).count()
    assert revived > 0, "the sweep should have taken back the cases the dead worker held"
    print(
        f"worker SIGKILL: {orphaned} in triage at the kill, {revived} revived by the sweep; {report.line()}"
    )
