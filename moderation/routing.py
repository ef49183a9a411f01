"""Where a judged case goes: auto-clear, auto-action, or the human queue at some priority."""

from __future__ import annotations

from dataclasses import dataclass

from moderation.models import Case, TriageResult
from policies.models import Confidence, Policy, Verdict

CONFIDENCE_RANK = {"": 0, Confidence.LOW: 1, Confidence.MEDIUM: 2, Confidence.HIGH: 3}

REASON_NO_ENGINE = "no reasoning engine configured"
REASON_ENGINE_UNAVAILABLE = "not triaged: engine unavailable"

PRIORITY_VIOLATION = {Confidence.HIGH: 80, Confidence.MEDIUM: 70, Confidence.LOW: 60, "": 60}
PRIORITY_UNDETERMINED = 75
PRIORITY_NOT_TRIAGED = 65
PRIORITY_NO_ENGINE = 50
PRIORITY_UNSURE_SAFE = 40
PRIORITY_QA_SAMPLE = 10


@dataclass(frozen=True)
class Route:
    state: Case.State
    priority: int
    reason: str
    # The tier that cleared it (or would have, for a QA sample): see Case.cleared_by.
    cleared_by: str = ""


@dataclass(frozen=True)
class AutoClear:
    """Whether a tier may clear for one policy version right now (inference_worker/autoclear.py)."""

    allowed: bool
    # Why not, for the route reason a moderator reads.
    reason: str = ""
    # The reasoner only: the lowest self-reported confidence whose "safe" is proven.
    min_confidence: str = ""


REASONER_CLEAR_UNPROVEN = AutoClear(False, "reasoner auto-clear not proven")


def qa_sampled(case_id: int, rate: float) -> bool:
    """A deterministic sample (Knuth's multiplicative hash), so a re-run routes the same way."""
    return (case_id * 2654435761 % 2**32) / 2**32 < rate


def triage_needs_escalation(policy: Policy, *, verdict: str, confidence: str) -> bool:
    if verdict == Verdict.UNDETERMINED:
        return True
    return CONFIDENCE_RANK[confidence] < CONFIDENCE_RANK[policy.escalate_below_confidence]


def case_route(
    policy: Policy,
    *,
    case_id: int,
    verdict: str,
    confidence: str,
    hallucinated_rule_ids: list[str],
    reasoner: AutoClear = REASONER_CLEAR_UNPROVEN,
) -> Route:
    if verdict == Verdict.VIOLATES:
        if policy.auto_action_violations and confidence == Confidence.HIGH and not hallucinated_rule_ids:
            return Route(Case.State.AUTO_ACTIONED, 0, "auto-actioned: high-confidence violation")
        return Route(
            Case.State.QUEUED,
            PRIORITY_VIOLATION[confidence],
            f"model: violates ({confidence or 'no'} confidence)",
        )
    if verdict == Verdict.SAFE:
        if hallucinated_rule_ids:
            return Route(
                Case.State.QUEUED, PRIORITY_UNSURE_SAFE, "model: safe, but cited rules the policy lacks"
            )
        if CONFIDENCE_RANK[confidence] >= CONFIDENCE_RANK[policy.auto_clear_min_confidence]:
            if not reasoner.allowed or CONFIDENCE_RANK[confidence] < CONFIDENCE_RANK[reasoner.min_confidence]:
                why = reasoner.reason or f"{confidence} confidence is not proven"
                return Route(
                    Case.State.QUEUED,
                    PRIORITY_UNSURE_SAFE,
                    f"model: safe ({confidence} confidence); {why}"[:200],
                )
            tier = TriageResult.Tier.SAFEGUARD
            if qa_sampled(case_id, policy.qa_sample_rate):
                return Route(
                    Case.State.QUEUED, PRIORITY_QA_SAMPLE, "QA sample of a reasoner auto-clear", tier
                )
            return Route(Case.State.AUTO_CLEARED, 0, f"auto-cleared: safe ({confidence} confidence)", tier)
        return Route(
            Case.State.QUEUED, PRIORITY_UNSURE_SAFE, f"model: safe ({confidence or 'no'} confidence)"
        )
    return Route(Case.State.QUEUED, PRIORITY_UNDETERMINED, "model could not decide")


def route_funnel_cleared(policy: Policy, *, case_id: int) -> Route:
    """Below the funnel's proven threshold: cleared without the reasoner, QA-sampled like any auto-clear."""
    tier = TriageResult.Tier.FUNNEL
    if qa_sampled(case_id, policy.qa_sample_rate):
        return Route(Case.State.QUEUED, PRIORITY_QA_SAMPLE, "QA sample of a funnel auto-clear", tier)
    return Route(Case.State.AUTO_CLEARED, 0, "auto-cleared: funnel (below its proven threshold)", tier)


# Bands of PRIORITY_NO_ENGINE..+9: with no reasoner, the funnel's score orders the human queue.
FUNNEL_PRIORITY_SPAN = 9


def route_no_engine(p_violation: float | None) -> Route:
    if p_violation is None:
        return route_not_triaged(REASON_NO_ENGINE)
    priority = PRIORITY_NO_ENGINE + min(FUNNEL_PRIORITY_SPAN, int(p_violation * (FUNNEL_PRIORITY_SPAN + 1)))
    return Route(Case.State.QUEUED, priority, f"{REASON_NO_ENGINE}; funnel p(violation) {p_violation:.2f}")


PRIORITY_INJECTION = 70


def injection_reason(signals: tuple[str, ...] | list[str]) -> str:
    return f"likely prompt-injection attempt ({', '.join(signals)}): not auto-cleared"[:200]


def route_injection_guard(route: Route, signals: tuple[str, ...]) -> Route:
    """An item that tries to steer the model is never cleared unseen, by any tier, engine or no engine: it
    queues at least at the injection priority, saying why. More urgent outcomes (a violation, an undecided
    verdict) keep their place; auto-actions stand."""
    if route.state == Case.State.AUTO_CLEARED or (
        route.state == Case.State.QUEUED and route.priority < PRIORITY_INJECTION
    ):
        return Route(Case.State.QUEUED, PRIORITY_INJECTION, injection_reason(signals))
    return route


PRIORITY_APPEAL = 90


def route_appeal(route: Route) -> Route:
    """Appeals always go to a senior moderator, whatever the model said, ahead of ordinary work."""
    return Route(Case.State.APPEALED, PRIORITY_APPEAL, f"appeal; {route.reason}"[:200])


def route_not_triaged(reason: str) -> Route:
    priority = PRIORITY_NO_ENGINE if reason == REASON_NO_ENGINE else PRIORITY_NOT_TRIAGED
    return Route(Case.State.QUEUED, priority, reason)
