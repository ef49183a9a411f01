"""Hostile engines: replies that are huge, slow, or make native code raise; an engine that keeps failing.

Each test fails on the code before issue #14: a tokenizer panic (a BaseException) killed the pump and
stranded its cases, replies were read whole, the chain of thought was stored whole, attempts were used
while the breaker held cases back, and a pump could end with claimable cases left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import tracemalloc
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from django.utils import timezone

from inference_worker import engine, runner, services
from inference_worker.claims import CaseWork
from inference_worker.engine import EngineError, EngineReply, EngineUnavailable, text_token_ids
from inference_worker.prompts import harmony_encoding
from inference_worker.runner import EngineConfig
from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case, TriageResult
from moderation.routing import REASON_ENGINE_UNAVAILABLE
from policies.models import Policy
from tests.inference_worker.test_engine import (
    TRANSPORTS,
    canned,
    engine_request,
    judge,
    run_with_response,
    verdict_of,
)
from tests.inference_worker.test_triage import cases_for, triage

CUT = re.compile(r"\u2026 \[cut: (\d+) more characters\]$")


class FakePanic(BaseException):
    """Stands for pyo3's PanicException: a BaseException, so `except Exception` misses it."""


@pytest.fixture
def config(engine_config: EngineConfig) -> EngineConfig:
    return engine_config


@pytest.fixture
def quiet_policy(policy: Policy) -> Policy:
    policy.qa_sample_rate = 0
    policy.save()
    return policy


# --- the engine layer: bounded replies ----------------------------------------------------------------


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("mode", ["oversized", "oversized_json"])
def test_it_refuses_an_oversized_reply_reading_only_up_to_the_cap(
    kind: str, mode: str, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.mode = mode
    engine_simulator.oversized_bytes = 20_000_000
    limits = engine.ReplyLimits(max_bytes=1_000_000)

    async def call() -> EngineReply:
        async with engine.engine_session(timeout_seconds=10, max_connections=1) as session:
            transport = engine.transport_build(kind, engine_simulator.base_url, "", limits)
            return await transport.complete(session, engine_request("zorblax"))

    with pytest.raises(EngineError, match="engine reply over 1000000 bytes") as raised:
        asyncio.run(call())

    assert not isinstance(raised.value, EngineUnavailable)  # retrying would get the same reply


def test_it_stops_reading_a_reply_without_a_length_at_the_cap_with_bounded_memory() -> None:
    sent = []
    chunk = b"x" * 65536

    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})  # chunked, no length
        await response.prepare(request)
        try:
            for _ in range(800):  # 50 MB
                await response.write(chunk)
                sent.append(len(chunk))
        except ConnectionError:
            pass
        return response

    tracemalloc.start()
    try:
        with pytest.raises(EngineError, match="engine reply over 2097152 bytes"):
            run_with_response("chat", respond)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12_000_000  # a few times the 2 MiB cap, never the 50 MB offered
    assert sum(sent) < 10_000_000  # and the server was cut off long before it got there


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_it_cuts_the_chain_of_thought_with_a_marker_and_still_reads_the_verdict(
    kind: str, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.mode = "panic"  # a 200,000-letter run in the reasoning (as text on /v1/completions)

    reply = judge(kind, engine_simulator.base_url, "zorblax")

    cut = CUT.search(reply.reasoning)
    assert cut is not None
    assert reply.reasoning.startswith("We need to check the content")
    assert len(reply.reasoning) - len(cut[0]) == 100_000
    assert 100_000 < 100_000 + int(cut[1]) < 200_200  # the whole reasoning was a bit over 200,000
    assert verdict_of(reply).label == "violates"


@pytest.mark.slow  # a timing ratio of 200,000-character texts
def test_reencoding_a_long_run_is_linear_and_matches_the_tokenizer_on_ordinary_text() -> None:
    def seconds(chars: int) -> float:
        text = f"<|channel|>analysis<|message|>{'a' * chars}<|end|>"
        started = time.perf_counter()
        text_token_ids(text)
        return time.perf_counter() - started

    seconds(1000)  # warm up
    small, large = min(seconds(20_000) for _ in range(3)), min(seconds(200_000) for _ in range(3))
    assert large / small < 30  # 10x the text: linear is ~10x; the one-piece encode was ~100x
    ordinary = (
        "<|channel|>analysis<|message|>Spam, <|foo|> not a token.<|end|>"
        '<|start|>assistant<|channel|>final<|message|>{"violation": 1}'
    )
    assert text_token_ids(ordinary) == harmony_encoding().encode(ordinary, allowed_special="all")


def test_a_tokenizer_panic_while_decoding_a_reply_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def panic(text: str) -> list[int]:
        raise FakePanic("StackOverflow")

    monkeypatch.setattr(engine, "content_token_ids", panic)
    choice = {"index": 0, "text": "a" * 1000, "finish_reason": "stop"}

    with pytest.raises(EngineError, match=r"could not be decoded \(FakePanic: StackOverflow\)"):
        run_with_response(
            "completions", canned(lambda: web.json_response({"model": "m", "choices": [choice]}))
        )


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_a_trickling_engine_times_out_as_a_whole(kind: str, engine_simulator: EngineSimulator) -> None:
    engine_simulator.mode = "trickle"
    engine_simulator.trickle_interval = 0.05  # 20 bytes a second: alive, but never done in time

    # The timeout bounds the whole call, not each read (the body would take a minute).
    with pytest.raises(EngineUnavailable, match="timed out"):
        judge(kind, engine_simulator.base_url, "hello", timeout=1.0)


def test_cancelling_a_judgement_still_cancels_it(
    engine_simulator: EngineSimulator, config: EngineConfig
) -> None:
    engine_simulator.mode = "hang"
    work = CaseWork(
        case_id=1,
        is_appeal=False,
        attempts=1,
        content="hello",
        policy=Policy(slug="p"),
        policy_version_id=1,
        policy_text="# P",
        rule_ids=[],
    )

    async def call() -> None:
        async with engine.engine_session(timeout_seconds=30, max_connections=1) as session:
            transport = engine.transport_build("completions", engine_simulator.base_url, "")
            task = asyncio.create_task(services.case_judge(work, config, transport, session))
            await asyncio.sleep(0.2)
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())


# --- triage: a reply never kills the pump; attempts and the breaker -------------------------------------


PANICS = {
    # Where the BaseException comes from: the tokenizer under the transport, our code after the reply,
    # or the judging coroutine itself.
    "tokenizer": ("inference_worker.engine.content_token_ids", "could not be decoded (FakePanic"),
    "verdict parse": ("inference_worker.verdicts.verdict_parse", "could not be handled (FakePanic"),
    "judging coroutine": ("inference_worker.services.case_judge", "could not be handled (FakePanic"),
}


@pytest.mark.parametrize("where", PANICS)
def test_a_reply_that_makes_native_code_panic_is_that_cases_failed_attempt(
    quiet_policy: Policy,
    config: EngineConfig,
    engine_simulator: EngineSimulator,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    target, error = PANICS[where]
    module_name, name = target.rsplit(".", 1)
    module = __import__(module_name, fromlist=[name])
    original = getattr(module, name)

    async def raising() -> None:
        raise FakePanic("StackOverflow")

    def sometimes_panic(*args: Any, **kwargs: Any) -> Any:
        subject = args[0] if args else ""
        text = subject.content if isinstance(subject, CaseWork) else str(subject)
        if "[[sim:panic]]" in text or "a" * 5000 in text or text == "POISON":
            if asyncio.iscoroutinefunction(original):
                return raising()
            raise FakePanic("StackOverflow")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, sometimes_panic)
    # A reply as text with a 200,000-letter run (re-encoded), whose final text is "POISON".
    engine_simulator.scripted["poison"] = ("thinking", "POISON")
    panicking, fine, violating = triage(
        cases_for(quiet_policy, "poison [[sim:panic]] [[answer:poison]]", "a cat", "zorblax"), config
    )

    # The poisoned case reaches a human with its one attempt recorded; the others in flight are judged.
    assert (panicking.state, panicking.triage_attempts) == (Case.State.QUEUED, 1)
    assert panicking.route_reason.startswith("not triaged: engine error")
    assert error in TriageResult.objects.get(case=panicking).error
    assert (fine.verdict, fine.triage_attempts) == ("safe", 1)  # cleared, or QA'd: the lead's routing
    assert (violating.state, violating.verdict) == (Case.State.QUEUED, "violates")


def test_an_oversized_reply_is_a_failed_attempt_and_goes_to_a_human(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.oversized_bytes = 5_000_000
    [case] = triage(cases_for(quiet_policy, "zorblax [[sim:oversized]]"), config)

    assert (case.state, case.triage_attempts, case.verdict) == (Case.State.QUEUED, 1, "undetermined")
    assert "engine reply over 2097152 bytes" in case.route_reason


def test_the_stored_chain_of_thought_is_cut_with_a_marker(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.panic_run_chars = 300_000
    config = dataclasses.replace(config, max_reasoning_chars=1000)
    [case] = triage(cases_for(quiet_policy, "zorblax [[sim:panic]]"), config)

    result = TriageResult.objects.get(case=case)
    cut = CUT.search(result.chain_of_thought)
    assert cut is not None and int(cut[1]) > 299_000
    assert len(result.chain_of_thought) - len(cut[0]) == 1000
    assert (case.state, case.verdict) == (Case.State.QUEUED, "violates")


def test_no_attempt_is_used_while_the_breaker_holds_cases_back(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator, settings: Any
) -> None:
    settings.SAFEGUARD_BREAKER_FAILURES = 1
    settings.SAFEGUARD_BREAKER_COOLDOWN_SECONDS = 30
    breaker = runner.engine_breaker(config)
    breaker.record(successes=0, failures=1)
    cases = cases_for(quiet_policy, "a", "b", "c")

    for _ in range(3):  # three wake-ups while it is open
        Case.objects.filter(pk__in=[c.pk for c in cases]).update(triage_not_before=None)
        held = triage(cases, config)

    assert engine_simulator.stats.requests_total == 0
    assert [c.triage_attempts for c in held] == [0, 0, 0]
    assert all(c.state == Case.State.PENDING_TRIAGE and "circuit open" in c.route_reason for c in held)
    # Not tried again before the breaker half-opens.
    half_open = timezone.now() + timedelta(seconds=breaker.seconds_until_retry())
    assert all(
        c.triage_not_before is not None and c.triage_not_before >= half_open - timedelta(seconds=1)
        for c in held
    )


def test_a_case_held_back_longer_than_give_up_after_goes_to_humans_without_an_attempt(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator, settings: Any
) -> None:
    settings.SAFEGUARD_BREAKER_FAILURES = 1
    runner.engine_breaker(config).record(successes=0, failures=1)
    old, young = cases_for(quiet_policy, "old", "young")
    Case.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    old, young = triage([old, young], config)

    assert (old.state, old.route_reason, old.triage_attempts) == (
        Case.State.QUEUED,
        REASON_ENGINE_UNAVAILABLE,
        0,
    )
    assert young.state == Case.State.PENDING_TRIAGE
    assert engine_simulator.stats.requests_total == 0


def test_a_failing_engine_hands_cases_to_humans_after_give_up_after_not_after_every_attempt(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.mode = "hang"
    config = dataclasses.replace(config, timeout_seconds=0.3, give_up_after_seconds=0.5, max_attempts=6)
    cases = cases_for(quiet_policy, *[f"item {n}" for n in range(5)])
    first = triage(cases, config)
    assert all(c.state == Case.State.PENDING_TRIAGE and c.triage_attempts == 1 for c in first)
    time.sleep(0.5)

    Case.objects.filter(pk__in=[c.pk for c in cases]).update(triage_not_before=None)  # the backoff passed
    after = triage(cases, config)

    # One attempt each, recorded; then humans, without five more timeouts each.
    assert all(
        (c.state, c.route_reason, c.triage_attempts) == (Case.State.QUEUED, REASON_ENGINE_UNAVAILABLE, 1)
        for c in after
    )
    assert engine_simulator.stats.requests_total == 5
    assert TriageResult.objects.exclude(error="").count() == 5


def test_a_case_whose_worker_died_on_its_last_attempt_goes_to_humans(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator
) -> None:
    [case] = cases_for(quiet_policy, "kills the worker")
    Case.objects.filter(pk=case.pk).update(triage_attempts=config.max_attempts)  # revived by the sweep

    [case] = triage([case], config)

    assert (case.state, case.route_reason) == (Case.State.QUEUED, REASON_ENGINE_UNAVAILABLE)
    assert case.triage_attempts == config.max_attempts
    assert engine_simulator.stats.requests_total == 0


@pytest.mark.django_db(transaction=True)  # now() moves: cases fall due while the pump runs
def test_the_pump_keeps_claiming_while_claimable_cases_remain(
    quiet_policy: Policy, config: EngineConfig, engine_simulator: EngineSimulator
) -> None:
    engine_simulator.latency = 0.15
    named, *later = cases_for(quiet_policy, "first", "b", "c", "d")
    runner.engine_runner(config)  # started before the clock below
    # Due a moment after the pump's first refill looked, and before its one request is answered.
    Case.objects.filter(pk__in=[c.pk for c in later]).update(
        triage_not_before=timezone.now() + timedelta(seconds=0.08)
    )

    services.cases_triage(case_ids=[named.pk], config=config)

    assert Case.objects.filter(state=Case.State.PENDING_TRIAGE).count() == 0
    assert engine_simulator.stats.requests_total == 4


def test_a_pump_that_meets_an_open_breaker_wakes_its_named_cases_when_it_half_opens(
    quiet_policy: Policy,
    config: EngineConfig,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
    redis_test_db: Any,
) -> None:
    settings.SAFEGUARD_BREAKER_FAILURES = 1
    runner.engine_breaker(config).record(successes=0, failures=1)
    cases = cases_for(quiet_policy, "a", "b")

    with django_capture_on_commit_callbacks(execute=True):
        services.cases_triage(case_ids=[c.pk for c in cases], config=config)

    assert redis_test_db.llen("celery") == 1  # one wake-up for both, with a countdown to the half-open
    assert Case.objects.filter(state=Case.State.PENDING_TRIAGE, triage_not_before__isnull=False).count() == 2
