"""What triage makes of an engine's (or the funnel's) answers: TriageResult rows, the route each case
takes (moderation.routing), the case updates and their audit events, one transaction per batch."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.db import connection, transaction
from django.utils import timezone

from audit import services as audit
from config import publish
from inference_worker import autoclear, embeddings, funnel, latency, verdicts
from inference_worker.claims import CaseWork
from inference_worker.engine import EngineReply
from inference_worker.runner import EngineConfig, retry_delay_seconds
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
)
from policies.models import Verdict


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


UPDATE_SQL = f"""
    UPDATE {Case._meta.db_table} AS c SET
        state = v.state, priority = v.priority, route_reason = v.reason, verdict = v.verdict,
        confidence = v.confidence, triage_not_before = v.not_before, cleared_by = v.cleared_by,
        risk = v.risk,
        updated_at = now(), queued_at = CASE WHEN v.state = %s THEN now() ELSE c.queued_at END
    FROM unnest(
        %s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
        %s::text[], %s::float8[]
    ) AS v(id, state, priority, reason, verdict, confidence, not_before, cleared_by, risk)
    WHERE c.id = v.id AND c.state = %s
    RETURNING c.id
"""  # noqa: S608 - the table name is ours, every value is a parameter


def _cases_update(updates: list[CaseUpdate], *, from_state: str) -> set[int]:
    """Apply per-case updates in one statement, only to cases still in from_state (idempotence)."""
    if not updates:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            UPDATE_SQL,
            [
                Case.State.QUEUED,
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


def _retry_update(outcome: CaseOutcome, config: EngineConfig, now: datetime) -> CaseUpdate | None:
    """Back to pending for another attempt later, when the engine was unavailable and attempts remain."""
    work = outcome.work
    if (
        outcome.verdict is not None
        or not outcome.unavailable
        or outcome.give_up
        or work.attempts >= config.max_attempts
    ):
        return None
    not_before = now + timedelta(seconds=retry_delay_seconds(work.attempts, config.retry_base_seconds))
    reason = f"engine unavailable (attempt {work.attempts} of {config.max_attempts}): {outcome.unavailable}"
    return CaseUpdate(work.case_id, Case.State.PENDING_TRIAGE, 0, reason[:200], "", "", not_before)


def _outcome_route(outcome: CaseOutcome, reasoner: AutoClear) -> Route:
    """Where a case with no attempt left to make goes: by its verdict, by the funnel, or to humans."""
    work = outcome.work
    verdict = outcome.verdict
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
    return route


def _outcome_update(
    outcome: CaseOutcome, config: EngineConfig, now: datetime, reasoner: AutoClear = REASONER_CLEAR_UNPROVEN
) -> CaseUpdate:
    retry = _retry_update(outcome, config, now)
    if retry is not None:
        return retry
    work = outcome.work
    verdict = outcome.verdict
    route = _outcome_route(outcome, reasoner)
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
        saved = TriageResult.objects.bulk_create(
            [
                _funnel_triage_result(o.work.case_id, o.work.funnel)
                for o in outcomes
                if o.work.funnel is not None
            ]
            + [_triage_result(o.work.case_id, call, engine) for o in outcomes for call in o.calls]
        )
        latency.engine_latency_add([r.pk for r in saved if r.latency_ms is not None])
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
            transaction.on_commit(partial(publish.triage_enqueue, case_ids=case_ids, countdown=countdown))


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
