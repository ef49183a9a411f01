from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from moderation.models import Case, ContentItem, Source

CASE_STATES_PENDING = {Case.State.PENDING_TRIAGE, Case.State.TRIAGING}
CASE_STATES_IN_REVIEW = {Case.State.QUEUED, Case.State.CLAIMED, Case.State.ESCALATED, Case.State.APPEALED}


def source_by_api_key(key: str) -> Source | None:
    key_id = Source.api_key_id_of(key)
    if key_id is None:
        return None
    source = Source.objects.filter(api_key_id=key_id, is_active=True).first()
    if source is None or not source.api_key_matches(key):
        return None
    return source


def items_of_source(source: Source) -> QuerySet[ContentItem]:
    return ContentItem.objects.filter(source=source)


def item_status(item: ContentItem) -> dict[str, Any]:
    cases = list(
        Case.objects.filter(item=item).select_related("policy_version__policy").order_by("created_at", "id")
    )
    states = {c.state for c in cases}
    if states & CASE_STATES_PENDING:
        status = "pending"
    elif states & CASE_STATES_IN_REVIEW:
        status = "in_review"
    else:
        status = "resolved"
    return {
        "external_id": item.external_id,
        "id": item.pk,
        "status": status,
        "received_at": item.received_at,
        "cases": [
            {
                "id": c.pk,
                "policy": c.policy_version.policy.slug,
                "policy_version": c.policy_version.number,
                "state": c.state,
                "is_appeal": c.is_appeal,
                "verdict": c.verdict or None,
                "confidence": c.confidence or None,
                "priority": c.priority,
                "route_reason": c.route_reason,
                "updated_at": c.updated_at,
            }
            for c in cases
        ],
        "outcomes": item_outcomes(cases),
    }


class NotAppealable(Exception):
    """No single case to appeal; `ambiguous` when the item was judged under several policies."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def case_appealable(item: ContentItem, *, policy_slug: str | None) -> Case:
    """The original (not appeal, not QA) case of the item under the named policy, or NotAppealable."""
    cases = list(
        Case.objects.filter(item=item, appeal_of__isnull=True, qa_of__isnull=True).select_related(
            "policy_version__policy"
        )
    )
    if policy_slug is not None:
        cases = [c for c in cases if c.policy_version.policy.slug == policy_slug]
        if not cases:
            raise NotAppealable(f"no case of this item under policy {policy_slug!r}")
    if len(cases) > 1:
        policies = ", ".join(sorted(c.policy_version.policy.slug for c in cases))
        raise NotAppealable(
            f"this item was judged under several policies ({policies}); name one in 'policy'", ambiguous=True
        )
    if not cases:
        raise NotAppealable("this item has no case to appeal")
    return cases[0]


def _settled(case: Case, decisions: dict[int, Any]) -> dict[str, Any]:
    """The label, rules, time and kind of a case's settlement (nothing while it is not settled)."""
    decision = decisions.get(case.pk)
    if decision is not None:
        return {
            "final_label": decision.final_label,
            "rule_ids": list(decision.rule_ids),
            "decided_at": decision.created_at,
            "decided_by": "moderator",
            "decision_id": decision.pk,
        }
    automatic: dict[str, tuple[str, str]] = {
        Case.State.AUTO_CLEARED: ("safe", "auto_clear"),
        Case.State.AUTO_ACTIONED: ("violates", "auto_action"),
    }
    if case.state in automatic:
        label, kind = automatic[case.state]
        return {"final_label": label, "rule_ids": [], "decided_at": case.updated_at, "decided_by": kind}
    return {"final_label": None, "rule_ids": [], "decided_at": None, "decided_by": None, "decision_id": None}


def item_outcomes(cases: list[Case]) -> list[dict[str, Any]]:
    """Per policy, the item's outcome as a platform needs it to recover a lost callback: the latest case
    judged under the policy (QA second reviews never change an outcome), its decision, and its appeal; a
    decided appeal's ruling is the final label."""
    from reviews.models import Decision

    decisions = {
        d.case_id: d for d in Decision.objects.filter(case__in=cases).exclude(action=Decision.Action.ESCALATE)
    }
    appeals = {c.appeal_of_id: c for c in cases if c.appeal_of_id is not None}
    latest: dict[str, Case] = {}
    for case in cases:  # oldest first: a later version's case replaces an earlier one
        if case.appeal_of_id is None and case.qa_of_id is None:
            latest[case.policy_version.policy.slug] = case
    outcomes = []
    for slug, case in latest.items():
        settled = _settled(case, decisions)
        state = (
            "decided"
            if settled["final_label"]
            else "pending"
            if case.state in CASE_STATES_PENDING
            else "in_review"
        )
        outcome: dict[str, Any] = {"policy": slug, "state": state, "case_id": case.pk, "appeal": None}
        outcome |= {"decision_id": None} | settled
        appeal = appeals.get(case.pk)
        if appeal is not None:
            ruling = _settled(appeal, decisions)
            outcome["appeal"] = {
                "case_id": appeal.pk,
                "state": "decided" if ruling["final_label"] else "open",
                "reason": appeal.appeal_reason,
                "opened_at": appeal.queued_at or appeal.created_at,
                "final_label": ruling["final_label"],
                "rule_ids": ruling["rule_ids"],
                "decided_at": ruling["decided_at"],
            }
            if ruling["final_label"]:
                outcome |= {k: ruling[k] for k in ("final_label", "rule_ids", "decided_at", "decided_by")}
                outcome["decision_id"] = ruling.get("decision_id")
        outcomes.append(outcome)
    return outcomes
