"""Fault: the engine flaps (5xx, 429, timeouts, hang-ups, truncated and malformed output), then recovers."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import pytest

from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case, TriageResult
from moderation.redis import redis_client
from tests.faults.conftest import Platform
from tests.faults.invariants import MODEL_UNDECIDED, assert_nothing_lost
from tests.faults.stack import (
    expected_label,
    item_texts,
    items_send,
    stack_running,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

ITEMS = 2500
BREAKER_FAILURES = 10
# Requests answered in each mode, in order; then the engine is healthy. Each failing stretch is several times
# BREAKER_FAILURES, so the breaker opens, and the healthy stretch after it closes it.
FLAPS = [
    ("ok", 150),
    ("http_500", 60),
    ("ok", 150),
    ("http_429", 60),
    ("ok", 150),
    ("timeout", 60),
    ("ok", 150),
    ("drop", 60),
    ("ok", 150),
    ("length", 120),
    ("malformed_json", 60),
    ("no_final", 60),
]


class BreakerWatch(threading.Thread):
    """Samples the shared circuit breaker in Redis: how often it was seen opening and closing again."""

    def __init__(self, engine_url: str) -> None:
        super().__init__(daemon=True)
        self.key = f"breaker:{engine_url}:open_until"
        self.opened = self.closed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        client = redis_client()
        is_open = False
        while not self.stopping.is_set():
            now_open = client.get(self.key) is not None
            if now_open and not is_open:
                self.opened += 1
            if is_open and not now_open:
                self.closed += 1
            is_open = now_open
            time.sleep(0.02)


def test_it_triages_or_hands_to_humans_every_item_while_the_engine_flaps(
    platform: Platform, engine: EngineSimulator, tmp_path: Path
) -> None:
    texts = item_texts("flap", ITEMS)
    source = platform.source
    engine.flap(FLAPS)
    watch = BreakerWatch(engine.base_url)
    with (
        # Cases keep retrying through the flaps rather than going to humans after the 1 s give-up the
        # stack uses elsewhere (tests/faults/test_hostile_engine.py covers giving up): the engine has to
        # see every flap, and a loaded machine would otherwise settle every case before the last one.
        stack_running(
            tmp_path,
            engine.base_url,
            SAFEGUARD_BREAKER_FAILURES=str(BREAKER_FAILURES),
            SAFEGUARD_GIVE_UP_AFTER_SECONDS="300",
        ) as stack,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        watch.start()
        try:
            sent = pool.submit(items_send, stack.base_url, platform.api_key, texts).result(timeout=120)
            wait_for(
                lambda: engine.flap_remaining == 0, timeout=120, what="the engine to go through its flaps"
            )
            stack.wait_settled(source)
        finally:
            watch.stopping.set()
            watch.join()
    assert sent.accepted == set(texts)

    report = assert_nothing_lost(
        source=source, external_ids=texts, expected_labels={k: expected_label(v) for k, v in texts.items()}
    )
    results = TriageResult.objects.filter(case__item__source=source)
    errors = {
        "5xx": results.filter(error__contains="HTTP 500").count(),
        "429": results.filter(error__contains="HTTP 429").count(),
        "timeout": results.filter(error__contains="timed out").count(),
        "dropped": results.filter(error__contains="unreachable").count(),
        "truncated": results.filter(finish_reason="length").count(),
        "malformed": results.filter(raw_final_text__startswith='{"violation": ', parse_path="regex").count(),
    }
    assert all(errors.values()), f"a flap never reached the worker: {errors}"
    assert watch.opened >= 1 and watch.closed >= 1, "the circuit breaker should have opened and closed"
    assert redis_client().get(watch.key) is None, "the breaker is still open after the engine recovered"
    cases = Case.objects.filter(item__source=source)
    for_humans = cases.filter(verdict="undetermined")
    assert for_humans.exclude(state=Case.State.QUEUED).count() == 0
    undecided = for_humans.filter(route_reason=MODEL_UNDECIDED).count()
    # Answers without a final verdict reach the parser as "undetermined"; whether a case then stays
    # undecided (to a human) or its escalation call lands after the engine recovered is a matter of timing.
    unparsed = results.filter(verdict="undetermined", error="").exclude(tier="funnel").count()
    assert unparsed > 0, "truncated and empty output should reach the verdict parser as undetermined"
    print(
        f"engine flapping: errors seen {errors}, breaker opened {watch.opened}x / closed {watch.closed}x, "
        f"{undecided} cases to humans as undecided; {report.line()}"
    )
