"""Triage: claim cases, ask the engine (many requests in flight), save verdicts, route.

The pump keeps up to SAFEGUARD_MAX_IN_FLIGHT engine requests open per worker process. Messages only
wake it up: it claims the cases it was given, then keeps claiming pending cases from Postgres
(SKIP LOCKED) while there is room, so the GPU stays full whatever size the ingested batches were.
Database work happens in batches on the task's thread; HTTP happens on one asyncio loop per process.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import aiohttp
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import services as audit
from inference_worker import autoclear, embeddings, engine_settings, funnel, verdicts
from inference_worker.breaker import CircuitBreaker
from inference_worker.engine import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    MUST_PROPAGATE,
    EngineError,
    EngineReply,
    EngineRequest,
    EngineUnavailable,
    ReplyLimits,
    Transport,
    engine_judge,
    engine_session,
    transport_build,
)
from moderation.models import Case, TriageResult
from moderation.routing import (
    REASON_ENGINE_UNAVAILABLE,
    REASON_NO_ENGINE,
    REASONER_CLEAR_UNPROVEN,
    AutoClear,
    Route,
    case_route,
    route_appeal,
    route_funnel_cleared,
    route_injection_guard,
    route_no_engine,
    route_not_triaged,
    triage_needs_escalation,
)
from policies.models import Policy, Verdict

logger = logging.getLogger(__name__)

# A pump stops claiming new work after this long, then drains (at most two engine timeouts), so a task
# stays under its 900 s soft limit. Long, because each drain leaves the engine idle for a moment (~4% of
# throughput at 60 s, measured with bench/triage.py).
PUMP_SECONDS = 300.0
# When Postgres has no pending cases, look again after this long (new messages may wait behind us).
REFILL_IDLE_SECONDS = 0.25
RETRY_MAX_DELAY_SECONDS = 300.0
CIRCUIT_OPEN = "circuit open: the engine has been failing"
# A case waits at most this long for a failing engine (its own attempt failed, or the breaker holds it back)
# before it goes to humans untriaged: with the engine timeout, the bound on how late a human sees it.
DEFAULT_GIVE_UP_AFTER_SECONDS = 120.0
# A case held back by the breaker is looked at again no sooner than this, whatever the breaker says.
HOLD_MIN_SECONDS = 0.5


@dataclass(frozen=True)
class EngineConfig:
    transport: str
    base_url: str
    api_key: str
    model: str
    effort: str
    escalation_model: str
    escalation_effort: str
    max_tokens: int
    timeout_seconds: float
    max_in_flight: int
    max_attempts: int
    retry_base_seconds: float
    # Score with the funnel tier before the engine (without an engine the funnel always runs).
    funnel: bool = False
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    max_reasoning_chars: int = DEFAULT_MAX_TEXT_CHARS
    give_up_after_seconds: float = DEFAULT_GIVE_UP_AFTER_SECONDS
    # Header carrying a hash of the policy text to a session-affinity router (empty: not sent).
    affinity_header: str = ""

    @classmethod
    def from_settings(cls) -> EngineConfig:
        """The deployment's engine: per field, its environment variable if set, else what an admin saved
        on /settings/engine (read at most every few seconds), else the default (engine_settings.py)."""
        chosen = engine_settings.engine_values_now()
        return cls(
            transport=chosen["transport"],
            base_url=chosen["base_url"],
            api_key=chosen["api_key"],
            model=chosen["model"],
            effort=chosen["effort"],
            escalation_model=chosen["escalation_model"],
            escalation_effort=chosen["escalation_effort"],
            max_tokens=settings.SAFEGUARD_MAX_TOKENS,
            timeout_seconds=chosen["timeout_seconds"],
            max_in_flight=settings.SAFEGUARD_MAX_IN_FLIGHT,
            max_attempts=settings.SAFEGUARD_MAX_ATTEMPTS,
            retry_base_seconds=settings.SAFEGUARD_RETRY_BASE_SECONDS,
            funnel=settings.SAFEGUARD_FUNNEL_ENABLED and embeddings.model_available(),
            max_reply_bytes=settings.SAFEGUARD_MAX_REPLY_BYTES,
            max_reasoning_chars=settings.SAFEGUARD_MAX_REASONING_CHARS,
            give_up_after_seconds=chosen["give_up_after_seconds"],
            affinity_header=settings.SAFEGUARD_AFFINITY_HEADER,
        )

    @property
    def reply_limits(self) -> ReplyLimits:
        return ReplyLimits(max_bytes=self.max_reply_bytes, max_text_chars=self.max_reasoning_chars)

    def tiers(self, *, is_appeal: bool) -> list[tuple[str, str, str]]:
        """(tier, model, effort) in the order they are tried. Appeals start at escalation."""
        escalation = (TriageResult.Tier.ESCALATION.value, self.escalation_model, self.escalation_effort)
        if is_appeal:
            return [escalation]
        first = (TriageResult.Tier.SAFEGUARD.value, self.model, self.effort)
        if (self.escalation_model, self.escalation_effort) == (self.model, self.effort):
            return [first]
        return [first, escalation]


def engine_breaker(config: EngineConfig) -> CircuitBreaker:
    return CircuitBreaker(
        name=config.base_url,
        failure_threshold=settings.SAFEGUARD_BREAKER_FAILURES,
        cooldown_seconds=settings.SAFEGUARD_BREAKER_COOLDOWN_SECONDS,
    )


@dataclass(frozen=True)
class CaseWork:
    case_id: int
    is_appeal: bool
    attempts: int
    content: str
    policy: Policy
    policy_version_id: int
    policy_text: str
    rule_ids: list[str]
    funnel: funnel.FunnelScore | None = None
    # moderation.injection's signals on the item: such an item is never cleared without a human.
    injection_signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineCall:
    tier: str
    model: str
    effort: str
    reply: EngineReply | None
    verdict: verdicts.Verdict | None
    error: str = ""


@dataclass
class CaseOutcome:
    work: CaseWork
    calls: list[EngineCall] = field(default_factory=list)
    # Set when no verdict could be had: transient (retry later) or permanent (to a human now).
    unavailable: str = ""
    failed: str = ""
    # The engine had its chances (SAFEGUARD_GIVE_UP_AFTER_SECONDS): to humans now, no retry.
    give_up: bool = False

    @property
    def verdict(self) -> verdicts.Verdict | None:
        judged = [c.verdict for c in self.calls if c.verdict is not None]
        return judged[-1] if judged else None


# --- the asyncio side: one loop and one HTTP client per worker process ---------------------------


class EngineRunner:
    """An event loop in a daemon thread that owns the HTTP connection pool to the engine."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.transport: Transport = transport_build(
            config.transport, config.base_url, config.api_key, config.reply_limits, config.affinity_header
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-runner", daemon=True)
        self._thread.start()
        self.session: aiohttp.ClientSession = asyncio.run_coroutine_threadsafe(
            self._session_create(), self.loop
        ).result()
        # aiohttp complains about a session still open when the interpreter exits.
        atexit.register(self.close)

    async def _session_create(self) -> aiohttp.ClientSession:
        # aiohttp binds the session to the running loop, so it is made on the runner's loop.
        return engine_session(
            timeout_seconds=self.config.timeout_seconds, max_connections=self.config.max_in_flight + 8
        )

    def submit(self, work: CaseWork) -> concurrent.futures.Future[CaseOutcome]:
        return asyncio.run_coroutine_threadsafe(
            case_judge(work, self.config, self.transport, self.session), self.loop
        )

    def close(self) -> None:
        """Close the connections and stop the loop; a forked child just drops its parent's runner."""
        if self.pid != os.getpid() or not self.loop.is_running():
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


_runner_lock = threading.Lock()
_runner: EngineRunner | None = None


def engine_runner(config: EngineConfig) -> EngineRunner:
    """One runner per process; rebuilt after a fork or a settings change (tests)."""
    global _runner
    with _runner_lock:
        if _runner is None or _runner.pid != os.getpid() or _runner.config != config:
            if _runner is not None:
                _runner.close()  # else its thread and connections outlive it
            _runner = EngineRunner(config)
        return _runner


async def case_judge(
    work: CaseWork, config: EngineConfig, transport: Transport, session: aiohttp.ClientSession
) -> CaseOutcome:
    outcome = CaseOutcome(work=work)
    for tier, model, effort in config.tiers(is_appeal=work.is_appeal):
        request = EngineRequest(
            policy_text=work.policy_text,
            content=work.content,
            effort=effort,
            model=model,
            max_tokens=config.max_tokens,
        )
        try:
            reply = await engine_judge(transport, session, request)
            verdict = verdicts.verdict_parse(reply.final_text, policy_rule_ids=work.rule_ids)
        except EngineUnavailable as exc:
            outcome.calls.append(EngineCall(tier, model, effort, None, None, str(exc)))
            if outcome.verdict is None:
                outcome.unavailable = str(exc)
            return outcome
        except BaseException as exc:
            # EngineError, and anything else a reply made our code (or native code under it: a tokenizer
            # panic is a BaseException) raise: this case's failed attempt, never the pump's death.
            # Cancellation and interpreter exit still go through.
            if isinstance(exc, MUST_PROPAGATE):
                raise
            if not isinstance(exc, EngineError):
                logger.exception("engine reply for case %s could not be handled", work.case_id)
            error = str(exc) if isinstance(exc, EngineError) else _unexpected(exc)
            outcome.calls.append(EngineCall(tier, model, effort, None, None, error))
            if outcome.verdict is None:
                outcome.failed = error
            return outcome
        outcome.calls.append(EngineCall(tier, model, effort, reply, verdict))
        if not triage_needs_escalation(
            work.policy, verdict=verdict.label, confidence=verdict.confidence or ""
        ):
            return outcome
    return outcome


def _unexpected(exc: BaseException) -> str:
    return f"engine reply could not be handled ({type(exc).__name__}: {str(exc)[:200]})"


# --- the database side -----------------------------------------------------------------------------

# The attempt is counted here, when a case is claimed to be sent: a case the breaker holds back is not
# claimed (see _cases_hold), so waiting for a failing engine uses no attempt. A case that has used all its
# attempts (its worker died on the last one), or has waited give_up_after for an engine that is failing
# (its own last attempt failed, or the breaker is not closed), is claimed without a new attempt and goes to
# humans (`give_up`).
CLAIM_SQL = """
    UPDATE moderation_case AS c SET state = 'triaging', updated_at = now(),
        triage_attempts = c.triage_attempts + CASE WHEN due.give_up THEN 0 ELSE 1 END
    FROM (
        SELECT id, ({give_up}) AS give_up FROM moderation_case
        WHERE state = 'pending_triage' AND {where}
          AND (triage_not_before IS NULL OR triage_not_before <= now())
        ORDER BY id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE c.id = due.id
    RETURNING c.id, due.give_up
"""
GIVE_UP_SQL = """
    triage_attempts >= %(max_attempts)s
    OR (created_at < clock_timestamp() - %(give_up_after)s * interval '1 second'
        AND (triage_attempts > 0 OR %(engine_failing)s))
"""


@dataclass(frozen=True)
class Claimed:
    to_send: list[CaseWork]
    # Claimed without an attempt, to be routed to humans: the engine had its chances (see CLAIM_SQL).
    to_give_up: list[CaseWork]


def cases_claim_for_triage(*, case_ids: list[int] | None, limit: int) -> list[CaseWork]:
    """Move pending cases to triaging in one statement: what it returns belongs to this caller alone."""
    return _cases_claim(case_ids=case_ids, limit=limit, config=None).to_send


def _cases_claim(
    *,
    case_ids: list[int] | None,
    limit: int,
    config: EngineConfig | None,
    engine_failing: bool = False,
    give_up_only: bool = False,
) -> Claimed:
    """Claim due pending cases (these ids, else any); with a config, those the engine had its chances with
    are claimed to be given up (``give_up_only``: only those)."""
    if limit <= 0:
        return Claimed([], [])
    params: dict[str, Any] = {"limit": limit, "ids": case_ids}
    give_up = "FALSE"
    if config is not None:
        give_up = GIVE_UP_SQL
        params.update(
            max_attempts=config.max_attempts,
            give_up_after=config.give_up_after_seconds,
            engine_failing=engine_failing,
        )
    where = "TRUE" if case_ids is None else "id = ANY(%(ids)s)"
    if give_up_only:
        where = f"{where} AND ({give_up})"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL.format(where=where, give_up=give_up), params)
        claimed = {row[0]: bool(row[1]) for row in cursor.fetchall()}
    if not claimed:
        return Claimed([], [])
    works = _works_load(list(claimed))
    return Claimed(
        to_send=[w for w in works if not claimed[w.case_id]],
        to_give_up=[w for w in works if claimed[w.case_id]],
    )


def _works_load(case_ids: list[int]) -> list[CaseWork]:
    cases = (
        Case.objects.filter(pk__in=case_ids)
        .select_related("item", "policy_version__policy")
        .only(
            "id",
            "appeal_of_id",
            "triage_attempts",
            "item__text",
            "item__injection_signals",
            "policy_version__text",
            "policy_version__rule_ids",
            "policy_version__policy",
        )
    )
    return [
        CaseWork(
            case_id=c.pk,
            is_appeal=c.is_appeal,
            attempts=c.triage_attempts,
            content=c.item.text,
            policy=c.policy_version.policy,
            policy_version_id=c.policy_version_id,
            policy_text=c.policy_version.text,
            rule_ids=list(c.policy_version.rule_ids),
            injection_signals=tuple(c.item.injection_signals),
        )
        for c in cases
    ]


# Held back by the breaker: the case waits (no attempt used) until a request may start again, but not past
# the moment it has waited give_up_after (then the next claim gives it to humans).
HOLD_SQL = """
    UPDATE moderation_case AS c SET updated_at = now(), route_reason = %(reason)s,
        triage_not_before = LEAST(
            now() + %(delay)s * interval '1 second',
            GREATEST(
                c.created_at + %(give_up_after)s * interval '1 second',
                now() + %(min_delay)s * interval '1 second'
            )
        )
    WHERE c.id IN (
        SELECT id FROM moderation_case
        WHERE id = ANY(%(ids)s) AND state = 'pending_triage'
          AND (triage_not_before IS NULL OR triage_not_before <= now())
        FOR UPDATE SKIP LOCKED
    )
    RETURNING c.id, c.triage_not_before
"""


RISK_UNKNOWN = 0.5
# The model's verdict and confidence as a p(violation), for ordering the queue only (never for routing):
# a verdict outranks the funnel's score, being the later and stronger judgement; confidence moves it
# towards 1 (violates) or 0 (safe). Undetermined or no verdict: the funnel's p(violation), else unknown.
VERDICT_RISK = {
    ("violates", "high"): 0.95,
    ("violates", "medium"): 0.85,
    ("violates", "low"): 0.7,
    ("violates", ""): 0.8,
    ("safe", "low"): 0.3,
    ("safe", "medium"): 0.15,
    ("safe", "high"): 0.05,
    ("safe", ""): 0.2,
}


def case_risk(verdict: str, confidence: str, funnel_p_violation: float | None) -> float:
    """The p(violation) a queued case is ordered by (highest first within a priority)."""
    mapped = VERDICT_RISK.get((verdict, confidence or ""))
    if mapped is not None:
        return mapped
    if funnel_p_violation is not None:
        return min(1.0, max(0.0, float(funnel_p_violation)))
    return RISK_UNKNOWN


@dataclass(frozen=True)
class CaseUpdate:
    case_id: int
    state: str
    priority: int
    reason: str
    verdict: str
    confidence: str
    not_before: datetime | None
    cleared_by: str = ""
    # p(violation) for the queue order (Case.risk): see case_risk.
    risk: float = RISK_UNKNOWN


UPDATE_SQL = """
    UPDATE moderation_case AS c SET
        state = v.state, priority = v.priority, route_reason = v.reason, verdict = v.verdict,
        confidence = v.confidence, triage_not_before = v.not_before, cleared_by = v.cleared_by,
        risk = v.risk,
        updated_at = now(), queued_at = CASE WHEN v.state = 'queued' THEN now() ELSE c.queued_at END
    FROM unnest(
        %s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
        %s::text[], %s::float8[]
    ) AS v(id, state, priority, reason, verdict, confidence, not_before, cleared_by, risk)
    WHERE c.id = v.id AND c.state = %s
    RETURNING c.id
"""


def _cases_update(updates: list[CaseUpdate], *, from_state: str) -> set[int]:
    """Apply per-case updates in one statement, only to cases still in from_state (idempotence)."""
    if not updates:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            UPDATE_SQL,
            [
                [u.case_id for u in updates],
                [u.state for u in updates],
                [u.priority for u in updates],
                [u.reason for u in updates],
                [u.verdict for u in updates],
                [u.confidence for u in updates],
                [u.not_before for u in updates],
                [u.cleared_by for u in updates],
                [u.risk for u in updates],
                from_state,
            ],
        )
        return {row[0] for row in cursor.fetchall()}


# Model output is untrusted text: PostgreSQL refuses NUL and unpaired surrogates, so they become U+FFFD
# (visible to the moderator) instead of failing the save of a whole batch.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str, limit: int | None = None) -> str:
    return _UNSTORABLE_CHARACTER.sub("\ufffd", text[:limit] if limit else text)


def _triage_result(case_id: int, call: EngineCall, engine: str) -> TriageResult:
    reply, verdict = call.reply, call.verdict
    return TriageResult(
        case_id=case_id,
        tier=call.tier,
        engine=engine,
        model=_storable(reply.model, 200) if reply else call.model,
        reasoning_effort=call.effort,
        verdict=verdict.label if verdict else Verdict.UNDETERMINED,
        policy_category=_storable(verdict.policy_category or "", 200) if verdict else "",
        rule_ids=list(verdict.rule_ids) if verdict else [],
        # Invented ids are whatever the model wrote: cut to the column's width (and a sane count).
        hallucinated_rule_ids=[_storable(r, 64) for r in verdict.hallucinated_rule_ids[:50]]
        if verdict
        else [],
        confidence=(verdict.confidence or "") if verdict else "",
        rationale=_storable(verdict.rationale) if verdict else "",
        chain_of_thought=_storable(reply.reasoning) if reply else "",
        raw_final_text=_storable(reply.final_text or "") if reply else "",
        parse_path=verdict.parse_path if verdict else "",
        prompt_tokens=reply.prompt_tokens if reply else None,
        cached_prompt_tokens=reply.cached_prompt_tokens if reply else None,
        completion_tokens=reply.completion_tokens if reply else None,
        latency_ms=reply.latency_ms if reply else None,
        finish_reason=(reply.finish_reason or "") if reply else "",
        error=call.error[:500],
    )


def _funnel_triage_result(case_id: int, score: funnel.FunnelScore) -> TriageResult:
    return TriageResult(
        case_id=case_id,
        tier=TriageResult.Tier.FUNNEL,
        engine=funnel.ENGINE_NAME,
        model=embeddings.model_name(),
        verdict=Verdict.SAFE if score.cleared else Verdict.UNDETERMINED,
        rationale=score.explanation,
        latency_ms=score.latency_ms,
        funnel=score.as_json(),
    )


def retry_delay_seconds(attempts: int, base: float) -> float:
    """Exponential backoff with full jitter on the upper half, capped."""
    delay = min(RETRY_MAX_DELAY_SECONDS, base * 2 ** max(0, attempts - 1))
    return delay / 2 + random.random() * delay / 2


def _outcome_update(
    outcome: CaseOutcome, config: EngineConfig, now: datetime, reasoner: AutoClear = REASONER_CLEAR_UNPROVEN
) -> CaseUpdate:
    work = outcome.work
    verdict = outcome.verdict
    if (
        verdict is None
        and outcome.unavailable
        and not outcome.give_up
        and work.attempts < config.max_attempts
    ):
        not_before = now + timedelta(seconds=retry_delay_seconds(work.attempts, config.retry_base_seconds))
        reason = (
            f"engine unavailable (attempt {work.attempts} of {config.max_attempts}): {outcome.unavailable}"
        )
        return CaseUpdate(work.case_id, Case.State.PENDING_TRIAGE, 0, reason[:200], "", "", not_before)
    route: Route
    if verdict is not None:
        route = case_route(
            work.policy,
            case_id=work.case_id,
            verdict=verdict.label,
            confidence=verdict.confidence or "",
            hallucinated_rule_ids=list(verdict.hallucinated_rule_ids),
            reasoner=reasoner,
        )
    elif not outcome.unavailable and not outcome.failed:
        # No engine call was made: the funnel cleared the item, or there is no engine to ask (then the
        # funnel's score, if any, orders the human queue).
        if work.funnel is not None and work.funnel.cleared:
            route = route_funnel_cleared(work.policy, case_id=work.case_id)
        else:
            route = route_no_engine(work.funnel.p_violation if work.funnel is not None else None)
    else:
        failure = (
            REASON_ENGINE_UNAVAILABLE
            if outcome.unavailable
            else f"not triaged: engine error: {outcome.failed}"
        )
        route = route_not_triaged(failure[:200])
    if work.injection_signals:
        route = route_injection_guard(route, work.injection_signals)
    if work.is_appeal:
        route = route_appeal(route)
    label: str = verdict.label if verdict is not None else Verdict.UNDETERMINED
    if verdict is None and work.funnel is not None and work.funnel.cleared:
        label = Verdict.SAFE
    confidence = (verdict.confidence or "") if verdict is not None else ""
    risk = case_risk(
        verdict.label if verdict is not None else "",
        confidence,
        work.funnel.p_violation if work.funnel is not None else None,
    )
    return CaseUpdate(
        work.case_id,
        route.state,
        route.priority,
        route.reason,
        label,
        confidence,
        None,
        route.cleared_by,
        risk,
    )


def triage_outcomes_save(outcomes: list[CaseOutcome], config: EngineConfig) -> None:
    """Everything one batch of engine answers changes, in one transaction and a constant number of queries."""
    from inference_worker import tasks

    now = timezone.now()
    engine = config.transport
    judged = {o.work.policy_version_id: o.work.policy for o in outcomes if o.verdict is not None}
    reasoner = autoclear.reasoner_clearances(judged, model=config.model) if judged else {}
    updates = {
        o.work.case_id: _outcome_update(
            o, config, now, reasoner.get(o.work.policy_version_id, REASONER_CLEAR_UNPROVEN)
        )
        for o in outcomes
    }
    with transaction.atomic():
        TriageResult.objects.bulk_create(
            [
                _funnel_triage_result(o.work.case_id, o.work.funnel)
                for o in outcomes
                if o.work.funnel is not None
            ]
            + [_triage_result(o.work.case_id, call, engine) for o in outcomes for call in o.calls]
        )
        applied = _cases_update(list(updates.values()), from_state=Case.State.TRIAGING)
        audit.record_many(
            "case.triaged",
            actor=None,
            objects=[
                (
                    Case(pk=case_id),
                    {
                        "state": updates[case_id].state,
                        "verdict": updates[case_id].verdict,
                        "confidence": updates[case_id].confidence,
                        "reason": updates[case_id].reason,
                        "engine_calls": len(outcome.calls),
                        "funnel_p_violation": outcome.work.funnel.p_violation
                        if outcome.work.funnel is not None
                        else None,
                    },
                )
                for outcome in outcomes
                if (case_id := outcome.work.case_id) in applied
            ],
        )
        retries: dict[int, list[int]] = defaultdict(list)
        for case_id in applied:
            not_before = updates[case_id].not_before
            if not_before is not None:
                retries[math.ceil((not_before - now).total_seconds())].append(case_id)
        for countdown, case_ids in retries.items():
            transaction.on_commit(partial(tasks.triage_enqueue, case_ids=case_ids, countdown=countdown))


def cases_route_without_engine(*, case_ids: list[int] | None) -> int:
    """No engine and no funnel model: pending cases go straight to humans, saying why (an item flagged as a
    likely injection at the injection priority, with that reason)."""
    pending = Case.objects.filter(state=Case.State.PENDING_TRIAGE)
    if case_ids is not None:
        pending = pending.filter(pk__in=case_ids)
    with transaction.atomic():
        rows = list(
            pending.select_for_update(of=("self",), skip_locked=True).values_list(
                "pk", "appeal_of_id", "item__injection_signals"
            )
        )
        updates = []
        for pk, appeal_of_id, signals in rows:
            route = route_not_triaged(REASON_NO_ENGINE)
            if signals:
                route = route_injection_guard(route, tuple(signals))
            if appeal_of_id is not None:
                route = route_appeal(route)
            updates.append(
                CaseUpdate(pk, route.state, route.priority, route.reason, Verdict.UNDETERMINED, "", None)
            )
        routed = _cases_update(updates, from_state=Case.State.PENDING_TRIAGE)
        by_id = {u.case_id: u for u in updates}
        audit.record_many(
            "case.triaged",
            actor=None,
            objects=[
                (Case(pk=pk), {"state": by_id[pk].state, "reason": by_id[pk].reason, "engine_calls": 0})
                for pk in sorted(routed)
            ],
        )
    return len(routed)


@dataclass
class PumpStats:
    claimed: int = 0
    saved: int = 0
    max_in_flight: int = 0


def cases_triage_without_engine(*, case_ids: list[int], config: EngineConfig) -> PumpStats:
    """No safeguard endpoint: the funnel clears what it can; the rest goes to humans, saying why."""
    if not embeddings.model_available():
        routed = cases_route_without_engine(case_ids=case_ids)
        return PumpStats(claimed=routed, saved=routed)
    works = cases_claim_for_triage(case_ids=case_ids, limit=len(case_ids))
    if works:
        triage_outcomes_save([CaseOutcome(work=w) for w in funnel.works_funnel(works)], config)
    return PumpStats(claimed=len(works), saved=len(works))


def cases_triage(*, case_ids: list[int], config: EngineConfig | None = None) -> PumpStats:
    """Triage the given cases, and any other pending ones while there is room (see module docstring).

    With the funnel on, each claimed batch is scored in one batched encode on the funnel thread; what it
    clears is saved with the engine results, the rest is sent to the engine.

    The pump claims as many cases as the circuit breaker lets start (an attempt is counted per case
    claimed to be sent), and keeps claiming until a claim finds nothing claimable. The cases this message
    named that it could not claim (the breaker held them back, or the pump's time was up) are settled
    before it returns: held until the breaker lets requests through, given to humans, or re-enqueued.
    """
    config = config or EngineConfig.from_settings()
    if not config.base_url:
        return cases_triage_without_engine(case_ids=case_ids, config=config)
    runner = engine_runner(config)
    breaker = engine_breaker(config)
    stats = PumpStats()
    in_flight: dict[concurrent.futures.Future[CaseOutcome], CaseWork] = {}
    scoring: dict[concurrent.futures.Future[list[CaseWork]], list[CaseWork]] = {}
    deadline = time.monotonic() + PUMP_SECONDS
    next_refill = 0.0
    named = list(case_ids)  # claimed before any other pending case
    unsaved: list[CaseOutcome] = []

    while True:
        idle = not in_flight and not scoring
        room = config.max_in_flight - len(in_flight) - sum(len(w) for w in scoring.values())
        now = time.monotonic()
        found = False
        # With nothing in flight, claim at once: the pump ends only when a claim finds nothing.
        if room > 0 and now < deadline and (idle or now >= next_refill):
            allowance = breaker.allowance()
            limit = int(min(room, allowance))
            claimed = _cases_claim(
                case_ids=named or None, limit=limit, config=config, engine_failing=allowance != math.inf
            )
            count = len(claimed.to_send) + len(claimed.to_give_up)
            found = count > 0
            if named and limit > 0:
                taken = {w.case_id for w in (*claimed.to_send, *claimed.to_give_up)}
                named = [] if count < limit else [pk for pk in named if pk not in taken]
            elif count < limit:
                next_refill = now + REFILL_IDLE_SECONDS
            if claimed.to_give_up:
                triage_outcomes_save([_given_up(w, config) for w in claimed.to_give_up], config)
                stats.saved += len(claimed.to_give_up)
            to_send = claimed.to_send
            appeals = [w for w in to_send if w.is_appeal]  # appeals skip the funnel: a human sees them
            to_score = [w for w in to_send if not w.is_appeal] if config.funnel else []
            if to_score:
                fitted = funnel.funnel_prepare(to_score)
                scoring[funnel.funnel_executor().submit(funnel.works_score, to_score, fitted)] = to_score
            for work in appeals if config.funnel else to_send:
                in_flight[runner.submit(work)] = work
            stats.claimed += count
            stats.max_in_flight = max(stats.max_in_flight, len(in_flight))
        if unsaved:
            # Saved after the refill above, not before: the engine is already working on the
            # replacements while Postgres writes these (the save is most of the pump's time).
            triage_outcomes_save(unsaved, config)
            stats.saved += len(unsaved)
            unsaved = []
        if not in_flight and not scoring and not found:
            break
        waiting: list[concurrent.futures.Future[Any]] = [*in_flight, *scoring]
        if not waiting:
            continue
        done, _ = concurrent.futures.wait(waiting, timeout=REFILL_IDLE_SECONDS, return_when="FIRST_COMPLETED")
        if not done:
            continue
        judged = [future for future in in_flight if future in done]
        unsaved = [_judged_outcome(future, in_flight.pop(future), config) for future in judged]
        for scored in [future for future in scoring if future in done]:
            unsaved.extend(_scored_route(scored, scoring.pop(scored), runner, in_flight))
            stats.max_in_flight = max(stats.max_in_flight, len(in_flight))
        # Recorded before the refill, so an engine that just failed gets no new requests.
        engine_outcomes = [o for o in unsaved if o.calls or o.unavailable]
        successes = sum(1 for o in engine_outcomes if o.verdict is not None)
        breaker.record(successes=successes, failures=sum(1 for o in engine_outcomes if o.unavailable))
    stats.saved += _cases_hold(named, breaker, config)
    return stats


def _judged_outcome(
    future: concurrent.futures.Future[CaseOutcome], work: CaseWork, config: EngineConfig
) -> CaseOutcome:
    """The engine's outcome for ``work``; whatever the call raised is that case's failed attempt."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        # The runner's loop was stopped under the call (a settings change): no answer, try again later.
        return CaseOutcome(work=work, unavailable="engine call cancelled")
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        logger.exception("engine call for case %s failed", work.case_id)
        tier, model, effort = config.tiers(is_appeal=work.is_appeal)[0]
        error = _unexpected(exc)
        return CaseOutcome(
            work=work, calls=[EngineCall(tier, model, effort, None, None, error)], failed=error
        )


def _given_up(work: CaseWork, config: EngineConfig) -> CaseOutcome:
    """A case the engine had its chances with: to humans as "engine unavailable", no new attempt used.

    The attempts stored on the case stay what was really sent.
    """
    waited = f"{config.give_up_after_seconds:g} s"
    return CaseOutcome(
        work=work,
        unavailable=f"gave up: the engine has been failing and the case waited over {waited}",
        give_up=True,
    )


def _cases_hold(case_ids: list[int], breaker: CircuitBreaker, config: EngineConfig) -> int:
    """Settle named cases the pump did not claim; returns how many went to humans.

    While the breaker holds requests back, each waits (no attempt used) until a request may start again,
    and one that has already waited give_up_after goes to humans. With the breaker closed (the pump's
    time ran out) they are simply re-enqueued.
    """
    from inference_worker import tasks

    if not case_ids:
        return 0
    delay = breaker.seconds_until_retry()
    if delay <= 0:
        tasks.triage_enqueue(case_ids=case_ids)
        return 0
    given_up = _cases_claim(
        case_ids=case_ids, limit=len(case_ids), config=config, engine_failing=True, give_up_only=True
    ).to_give_up
    if given_up:
        triage_outcomes_save([_given_up(w, config) for w in given_up], config)
    now = timezone.now()
    reason = f"waiting for the engine ({CIRCUIT_OPEN}); no attempt used"
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                HOLD_SQL,
                {
                    "ids": case_ids,
                    "reason": reason,
                    "delay": max(delay, HOLD_MIN_SECONDS),
                    "give_up_after": config.give_up_after_seconds,
                    "min_delay": HOLD_MIN_SECONDS,
                },
            )
            held = dict(cursor.fetchall())
        audit.record_many(
            "case.triaged",
            actor=None,
            objects=[
                (Case(pk=pk), {"state": Case.State.PENDING_TRIAGE, "reason": reason, "engine_calls": 0})
                for pk in sorted(held)
            ],
        )
        wake_ups: dict[int, list[int]] = defaultdict(list)
        for pk, not_before in held.items():
            wake_ups[max(0, math.ceil((not_before - now).total_seconds()))].append(pk)
        for countdown, pks in wake_ups.items():
            transaction.on_commit(partial(tasks.triage_enqueue, case_ids=sorted(pks), countdown=countdown))
    return len(given_up)


def _scored_route(
    future: concurrent.futures.Future[list[CaseWork]],
    works: list[CaseWork],
    runner: EngineRunner,
    in_flight: dict[concurrent.futures.Future[CaseOutcome], CaseWork],
) -> list[CaseOutcome]:
    """Cleared works become outcomes to save; the rest go to the engine (all of them if scoring failed)."""
    try:
        scored = future.result()
    except Exception:
        logger.exception("funnel scoring failed; %d cases go to the engine unscored", len(works))
        scored = works
    cleared = []
    for work in scored:
        if work.funnel is not None and work.funnel.cleared:
            cleared.append(CaseOutcome(work=work))
        else:
            in_flight[runner.submit(work)] = work
    return cleared


def cases_triage_sweep(*, stuck_after_seconds: int | None = None) -> list[int]:
    """Re-enqueue what a lost message or a dead worker left behind. Returns the case ids re-enqueued."""
    from inference_worker import tasks

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
                transaction.on_commit(partial(tasks.triage_enqueue, case_ids=case_ids[start : start + 500]))
    return case_ids
