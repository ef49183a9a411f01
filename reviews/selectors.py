"""Reads for the review screens, always scoped to what the user may see."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.roles import Role, user_roles
from audit.models import AuditEvent
from moderation.models import Case, ContentItem, TriageResult
from moderation.selectors import CASE_STATES_IN_REVIEW, CASE_STATES_PENDING
from policies.models import Policy, PolicyVersion, Verdict
from policies.rules import policy_rule_ids_parse, policy_rule_names
from reviews.models import CallbackDelivery, Decision

REVIEWER_ROLES = {Role.MODERATOR, Role.SENIOR_MODERATOR, Role.ADMIN}
SENIOR_ROLES = {Role.SENIOR_MODERATOR, Role.ADMIN}
WAITING_STATES = (Case.State.QUEUED, Case.State.ESCALATED, Case.State.APPEALED)
QUEUE_PAGE_SIZE = 50


def user_is_reviewer(user: User | AnonymousUser) -> bool:
    return bool(user_roles(user) & REVIEWER_ROLES)


def user_is_senior(user: User | AnonymousUser) -> bool:
    return bool(user_roles(user) & SENIOR_ROLES)


def user_is_admin(user: User | AnonymousUser) -> bool:
    return Role.ADMIN in user_roles(user)


def policies_reviewable_by(user: User) -> QuerySet[Policy]:
    """Admins review every queue; moderators the policies granted to them; everyone else none."""
    if user_is_admin(user):
        return Policy.objects.all()
    if not user_is_reviewer(user):
        return Policy.objects.none()
    return Policy.objects.filter(queue_grants__user=user)


def cases_reviewable_by(user: User) -> QuerySet[Case]:
    if user_is_admin(user):
        return Case.objects.all()
    if not user_is_reviewer(user):
        return Case.objects.none()
    # The grants loaded with the request's user (reviews/backends.py): a list, so the case queries join no
    # grant table (less for PostgreSQL to plan on every claim and decision); a subquery for any other user.
    granted: list[int] | None = getattr(user, "granted_policy_ids", None)
    if granted is None:
        return Case.objects.filter(policy_version__policy__in=policies_reviewable_by(user))
    return Case.objects.filter(policy_version__policy_id__in=granted)


def cases_viewable_by(user: User) -> QuerySet[Case]:
    """The cases whose page the user may open: those of their queues, except that a QA second review is
    blind. While they hold one, every other case of its item (the one it double-checks, and any whose
    history would show that decision) is hidden from them until they have decided."""
    held_reviews = Case.objects.filter(
        state=Case.State.CLAIMED, lease_owner=user, lease_expires_at__gt=timezone.now(), qa_of__isnull=False
    )
    return cases_reviewable_by(user).filter(
        ~Q(item_id__in=held_reviews.values("item_id")) | Q(pk__in=held_reviews.values("pk"))
    )


def case_viewable(user: User, case_id: int, *related: str) -> Case | None:
    """The case if the user may open its page (cases_viewable_by); one query when they hold it, as they do
    on every decision: a held case is always viewable (a QA review is claimed on its own, and a moderator
    holds one claim at a time, so no review they hold can hide it)."""
    case = cases_reviewable_by(user).select_related(*related).filter(pk=case_id).first()
    if case is None or case.is_held_by(user.pk):
        return case
    return case if cases_viewable_by(user).filter(pk=case_id).exists() else None


def case_states_claimable_by(user: User) -> list[str]:
    """Escalations and appeals wait for senior moderators."""
    if user_is_senior(user):
        return list(WAITING_STATES)
    return [Case.State.QUEUED]


def cases_claimed_by(user: User) -> QuerySet[Case]:
    return cases_reviewable_by(user).filter(
        state=Case.State.CLAIMED, lease_owner=user, lease_expires_at__gt=timezone.now()
    )


@dataclass(frozen=True)
class QueueFilters:
    policy: int | None = None
    verdict: str = ""
    confidence: str = ""
    older_than_minutes: int | None = None
    escalated: bool = False
    appeals: bool = False
    injection: bool = False


@dataclass(frozen=True)
class QueueRow:
    """One item in the queue: the case that ranks it (its highest in claim order), and a chip per open
    policy of the item in the viewer's queues (verdict, confidence)."""

    case: Case
    chips: list[Case]


@dataclass(frozen=True)
class QueuePage:
    cases: list[Case]
    next_cursor: str
    rows: list[QueueRow] = field(default_factory=list)


def queue_order() -> tuple[str, ...]:
    """Claim and display order (both indexes on Case follow one of them): highest priority first; within a
    priority the riskiest (Case.risk, p(violation)) first unless SAFEGUARD_QUEUE_ORDER=oldest; then oldest."""
    if settings.SAFEGUARD_QUEUE_ORDER == "oldest":
        return ("-priority", "queued_at", "id")
    return ("-priority", "-risk", "queued_at", "id")


def queue_page(
    user: User, filters: QueueFilters, *, cursor: str = "", size: int = QUEUE_PAGE_SIZE
) -> QueuePage:
    """Waiting cases in claim order (queue_order), keyset-paginated on the same columns."""
    cases = cases_reviewable_by(user).filter(state__in=WAITING_STATES)
    if filters.policy:
        cases = cases.filter(policy_version__policy_id=filters.policy)
    if filters.verdict:
        cases = cases.filter(verdict=filters.verdict)
    if filters.confidence:
        cases = cases.filter(confidence=filters.confidence)
    if filters.older_than_minutes:
        cases = cases.filter(queued_at__lt=timezone.now() - timedelta(minutes=filters.older_than_minutes))
    if filters.escalated:
        cases = cases.filter(state=Case.State.ESCALATED)
    if filters.appeals:
        cases = cases.filter(appeal_of__isnull=False)
    if filters.injection:
        cases = cases.filter(item__injection_signals__len__gt=0)
    order = queue_order()
    by_risk = "-risk" in order
    # Item-centric: an item is listed once, at its highest-ranking waiting case (same filters); its other
    # open policies are chips on that row.
    waiting = cases
    ranks_higher = Q(priority__gt=OuterRef("priority")) | Q(
        priority=OuterRef("priority"), queued_at__lt=OuterRef("queued_at")
    )
    ranks_higher |= Q(priority=OuterRef("priority"), queued_at=OuterRef("queued_at"), pk__lt=OuterRef("pk"))
    if by_risk:
        ranks_higher = (
            Q(priority__gt=OuterRef("priority"))
            | Q(priority=OuterRef("priority"), risk__gt=OuterRef("risk"))
            | Q(priority=OuterRef("priority"), risk=OuterRef("risk"), queued_at__lt=OuterRef("queued_at"))
            | Q(
                priority=OuterRef("priority"),
                risk=OuterRef("risk"),
                queued_at=OuterRef("queued_at"),
                pk__lt=OuterRef("pk"),
            )
        )
    cases = cases.filter(~Exists(waiting.filter(ranks_higher, item_id=OuterRef("item_id"))))
    position = cursor_decode(cursor)
    if position is not None:
        priority, risk, queued_at, pk = position
        if by_risk and risk is not None:
            cases = cases.filter(
                Q(priority__lt=priority)
                | Q(priority=priority, risk__lt=risk)
                | Q(priority=priority, risk=risk, queued_at__gt=queued_at)
                | Q(priority=priority, risk=risk, queued_at=queued_at, pk__gt=pk)
            )
        else:
            cases = cases.filter(
                Q(priority__lt=priority)
                | Q(priority=priority, queued_at__gt=queued_at)
                | Q(priority=priority, queued_at=queued_at, pk__gt=pk)
            )
    rows = list(cases.select_related("item", "policy_version__policy").order_by(*order)[: size + 1])
    next_cursor = cursor_encode(rows[size - 1], with_risk=by_risk) if len(rows) > size else ""
    rows = rows[:size]
    chips: dict[int, list[Case]] = {}
    for chip in (
        waiting.filter(item_id__in=[r.item_id for r in rows])
        .select_related("policy_version__policy")
        .order_by("policy_version__policy__name", "pk")
    ):
        chips.setdefault(chip.item_id, []).append(chip)
    return QueuePage(
        cases=rows,
        next_cursor=next_cursor,
        rows=[QueueRow(case=r, chips=chips.get(r.item_id, [r])) for r in rows],
    )


def item_cases_claimed_by(user: User, case: Case) -> list[Case]:
    """The cases of this case's item the user holds under one claim (item-centric review), by policy name;
    just the case itself for a QA second review or an appeal, which are claimed on their own."""
    if case.qa_of_id is not None or case.appeal_of_id is not None:
        return [case]
    held = list(
        cases_claimed_by(user)
        .filter(item_id=case.item_id, qa_of__isnull=True, appeal_of__isnull=True)
        .select_related("item__source", "policy_version__policy", "lease_owner")
        .order_by("policy_version__policy__name", "pk")
    )
    return held if any(c.pk == case.pk for c in held) else [case]


@dataclass(frozen=True)
class PolicyPanel:
    """One policy of an item under review: its case, the model's latest verdict and reasoning."""

    case: Case
    latest: TriageResult | None
    results: list[TriageResult]
    rule_names: dict[str, str]
    hallucinated: list[str]


def policy_panels(cases: list[Case]) -> list[PolicyPanel]:
    """Per case: the engine results (oldest first), the latest judged one, and the policy's rule names."""
    results: dict[int, list[TriageResult]] = {c.pk: [] for c in cases}
    for result in TriageResult.objects.filter(case_id__in=list(results)).order_by("created_at", "id"):
        results[result.case_id].append(result)
    panels = []
    for case in cases:
        mine = results[case.pk]
        judged = [r for r in mine if not r.error]
        latest = judged[-1] if judged else (mine[-1] if mine else None)
        panels.append(
            PolicyPanel(
                case=case,
                latest=latest,
                results=mine,
                rule_names=rule_names_of(case.policy_version),
                hallucinated=list(latest.hallucinated_rule_ids) if latest else [],
            )
        )
    return panels


def cursor_encode(case: Case, *, with_risk: bool = True) -> str:
    """``priority_[risk_]queuedat_id``; risk as repr(float), exact, so the keyset never skips a row."""
    assert case.queued_at is not None
    risk = f"{float(case.risk)!r}_" if with_risk else ""
    return f"{case.priority}_{risk}{case.queued_at.timestamp():.6f}_{case.pk}"


CURSOR_PATTERN = re.compile(r"^(-?\d+)_(?:(\d+(?:\.\d+)?(?:e-?\d+)?)_)?(\d+\.\d+)_(\d+)$")
# Case.priority is a smallint and ids are bigints: a cursor outside these never came from cursor_encode.
PRIORITY_RANGE = range(-(2**15), 2**15)
CASE_ID_RANGE = range(1, 2**63)


class CursorOutOfRange(ValueError):
    """A well-formed cursor whose numbers no case can have (the view answers 400)."""


def cursor_decode(cursor: str) -> tuple[int, float | None, datetime, int] | None:
    """None for no or a malformed cursor (the first page); CursorOutOfRange for impossible numbers. The risk
    is None in an oldest-first cursor."""
    match = CURSOR_PATTERN.match(cursor)
    if match is None:
        return None
    raw_priority, raw_risk, raw_stamp, raw_pk = match.groups()
    try:
        # int() refuses runs of over 4,300 digits (ValueError); fromtimestamp years past 9999 (Overflow/OS).
        priority, pk = int(raw_priority), int(raw_pk)
        stamp = datetime.fromtimestamp(float(raw_stamp), tz=UTC)
        risk = float(raw_risk) if raw_risk is not None else None
    except (OverflowError, OSError, ValueError) as exc:
        raise CursorOutOfRange("the queue cursor is out of range") from exc
    if priority not in PRIORITY_RANGE or pk not in CASE_ID_RANGE or (risk is not None and not 0 <= risk <= 1):
        raise CursorOutOfRange("the queue cursor is out of range")
    return priority, risk, stamp, pk


@dataclass(frozen=True)
class WhyEmpty:
    """Why "next" found nothing while cases still wait: what the moderator may not (or chose not to) take."""

    skipped: int
    awaiting_qa_by_others: int
    for_seniors: int

    def __str__(self) -> str:
        parts = []
        if self.skipped:
            parts.append(f"{self.skipped} you skipped (offered again from now on)")
        if self.awaiting_qa_by_others:
            parts.append(f"{self.awaiting_qa_by_others} awaiting QA by someone else (your own decisions)")
        if self.for_seniors:
            parts.append(f"{self.for_seniors} escalated or appealed, for senior moderators")
        return "; ".join(parts)


def why_empty(user: User, *, policy_id: int | None, skipped_ids: list[int]) -> WhyEmpty:
    """What still waits in the user's queues (under the policy filter) that "next" would not hand them."""
    waiting = cases_reviewable_by(user).filter(state__in=WAITING_STATES)
    if policy_id is not None:
        waiting = waiting.filter(policy_version__policy_id=policy_id)
    claimable = case_states_claimable_by(user)
    counts = waiting.aggregate(
        skipped=Count("id", filter=Q(pk__in=skipped_ids, state__in=claimable)),
        own_qa=Count(
            "id",
            filter=Q(state__in=claimable, qa_of__decisions__moderator=user) & ~Q(pk__in=skipped_ids),
        ),
        seniors=Count("id", filter=~Q(state__in=claimable)),
    )
    return WhyEmpty(counts["skipped"], counts["own_qa"], counts["seniors"])


# Cases open to people (waiting or held): what the counts and the backlog read, through case_open_idx.
OPEN_STATES = (*WAITING_STATES, Case.State.CLAIMED)


def open_counts_by_policy(policies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`policies` (dicts with "id") with their open cases by state, `waiting`, and the oldest waiting case's
    queued_at as `oldest`. Reads only open cases (an index-only range of case_open_idx per version), so it
    costs what is open, never the decided history."""
    counts: dict[tuple[int, str], tuple[int, Any]] = {
        (row["policy_version__policy_id"], row["state"]): (row["n"], row["oldest"])
        for row in Case.objects.filter(
            state__in=OPEN_STATES, policy_version__policy_id__in=[p["id"] for p in policies]
        )
        .values("policy_version__policy_id", "state")
        .annotate(n=Count("*"), oldest=Min("queued_at"))
        .order_by()
    }
    rows = []
    for policy in policies:
        row: dict[str, Any] = {**policy}
        row.update({str(state): counts.get((policy["id"], state), (0, None))[0] for state in OPEN_STATES})
        row["waiting"] = sum(row[state] for state in WAITING_STATES)
        waited = [
            counts[policy["id"], state][1] for state in WAITING_STATES if (policy["id"], state) in counts
        ]
        row["oldest"] = min(waited, default=None)
        rows.append(row)
    return rows


def queue_counts(user: User) -> list[dict[str, Any]]:
    """Per reviewable policy: waiting, escalated, appealed and claimed counts."""
    policies = list(policies_reviewable_by(user).order_by("name").values("id", "name", "slug"))
    return open_counts_by_policy(policies)


def case_has_model_verdict(case: Case) -> bool:
    """Whether there is a model verdict to confirm or overturn (not undetermined, not untriaged)."""
    return case.verdict in (Verdict.VIOLATES, Verdict.SAFE)


def model_cited_rule_ids(case: Case) -> list[str]:
    """The rules the latest engine verdict cited that the policy defines (the funnel cites none)."""
    latest = (
        TriageResult.objects.filter(case_id=case.qa_of_id or case.pk, error="")
        .exclude(tier=TriageResult.Tier.FUNNEL)
        .order_by("-created_at", "-id")
        .values_list("rule_ids", flat=True)
        .first()
    )
    defined = set(case.policy_version.rule_ids)
    return [r for r in (latest or []) if r in defined]


_RULE_NAMES: dict[int, dict[str, str]] = {}


def rule_names_of(version: PolicyVersion) -> dict[str, str]:
    """Rule id -> short name, from the version's Definitions/Criteria/Rules sections. A published text never
    changes, so its names are kept per version; a draft's are parsed afresh."""
    if version.is_draft or version.pk is None:
        return policy_rule_names(version.text)
    names = _RULE_NAMES.get(version.pk)
    if names is None:
        if len(_RULE_NAMES) > 1000:
            _RULE_NAMES.clear()
        names = _RULE_NAMES[version.pk] = policy_rule_names(version.text)
    return names


@dataclass(frozen=True)
class PolicyLine:
    text: str
    rule_id: str
    cited: bool


def policy_lines(text: str, rule_ids: list[str], cited: list[str]) -> list[PolicyLine]:
    """The policy split in lines, each rule definition marked, and the cited ones highlighted."""
    cited_set = {c.upper() for c in cited}
    lines = []
    for line in text.splitlines():
        defined = policy_rule_ids_parse(line)
        rule_id = defined[0] if defined and defined[0] in rule_ids else ""
        lines.append(
            PolicyLine(text=line, rule_id=rule_id, cited=bool(rule_id) and rule_id.upper() in cited_set)
        )
    return lines


@dataclass(frozen=True)
class WhyHere:
    """What a senior moderator needs first on an appealed or escalated case."""

    appeal_reason: str
    appealed_decision: Decision | None
    appealed_state: str
    escalation: Decision | None


def why_here(case: Case) -> WhyHere | None:
    """The appeal reason, the decision under appeal (who, when, label, rules, note) and the escalation note
    with who escalated; None for a case that is neither an appeal nor escalated."""
    escalation = (
        Decision.objects.filter(case=case, action=Decision.Action.ESCALATE)
        .select_related("moderator")
        .order_by("-created_at", "-id")
        .first()
        if case.needs_senior
        else None
    )
    if case.appeal_of_id is None:
        return WhyHere("", None, "", escalation) if escalation is not None else None
    reason = case.appeal_reason
    if not reason:
        # Appeals opened before the reason was stored on the case: it is in their audit event.
        event = (
            AuditEvent.objects.filter(
                action="case.appealed", object_type=Case._meta.label_lower, object_id=str(case.pk)
            )
            .values_list("payload", flat=True)
            .first()
        )
        reason = str((event or {}).get("reason") or "")
    appealed = (
        Decision.objects.filter(case_id=case.appeal_of_id)
        .exclude(action=Decision.Action.ESCALATE)
        .select_related("moderator")
        .first()
    )
    appealed_state = Case.objects.filter(pk=case.appeal_of_id).values_list("state", flat=True).first() or ""
    return WhyHere(reason, appealed, Case.State(appealed_state).label if appealed_state else "", escalation)


def case_detail(case: Case, viewer: User) -> dict[str, Any]:
    """Everything the case view shows: the verdict and its reasoning, the policy, the item's history (the
    cases of it the viewer may open: their queues only, and none while the case is their blind review)."""
    # A QA review shows the engine results of the case it double-checks.
    results = list(TriageResult.objects.filter(case_id=case.qa_of_id or case.pk).order_by("created_at", "id"))
    judged = [r for r in results if not r.error]
    latest = judged[-1] if judged else (results[-1] if results else None)
    version = case.policy_version
    history = (
        cases_viewable_by(viewer)
        .filter(item_id=case.item_id)
        .exclude(pk=case.pk)
        .select_related("policy_version__policy")
        .prefetch_related("decisions__moderator")
        .order_by("created_at")
    )
    # A QA second review is blind: the decision it checks stays hidden until this one is made.
    blind = case.qa_of_id is not None and case.state != Case.State.DECIDED
    if blind:
        history = history.exclude(qa_reviews=case)
    reviewed = (
        Decision.objects.filter(case_id=case.qa_of_id)
        .exclude(action="escalate")
        .select_related("moderator")
        .first()
        if case.qa_of_id and not blind
        else None
    )
    return {
        "case": case,
        "item": case.item,
        "source": case.item.source,
        "latest": latest,
        "results": results,
        "policy_lines": policy_lines(
            version.text, list(version.rule_ids), list(latest.rule_ids) if latest else []
        ),
        "hallucinated": list(latest.hallucinated_rule_ids) if latest else [],
        "history": list(history),
        "decisions": list(case.decisions.select_related("moderator").order_by("created_at")),
        "qa_blind": blind,
        "reviewed_decision": reviewed,
        "rule_names": rule_names_of(version),
        "why_here": why_here(case),
    }


@dataclass(frozen=True)
class CallbackRow:
    """One decision told to a platform: what it was about, and every attempt (oldest first)."""

    decision: Decision
    attempts: list[CallbackDelivery]

    @property
    def kind(self) -> str:
        return "appeal" if self.decision.case.appeal_of_id is not None else "decision"

    @property
    def latest(self) -> CallbackDelivery:
        return self.attempts[-1]


def callbacks_recent(*, limit: int = 100) -> list[CallbackRow]:
    """The decisions most recently sent (or tried), newest first, each with its whole attempt history."""
    recent = CallbackDelivery.objects.order_by("-created_at", "-id").values_list("decision_id", flat=True)[
        : limit * 10
    ]
    decision_ids = list(dict.fromkeys(recent))[:limit]
    decisions = Decision.objects.filter(pk__in=decision_ids).select_related(
        "case__item__source", "case__policy_version__policy", "moderator"
    )
    attempts: dict[int, list[CallbackDelivery]] = {pk: [] for pk in decision_ids}
    for delivery in CallbackDelivery.objects.filter(decision_id__in=decision_ids).order_by("attempt", "id"):
        attempts[delivery.decision_id].append(delivery)
    by_id = {d.pk: d for d in decisions}
    return [CallbackRow(by_id[pk], attempts[pk]) for pk in decision_ids if pk in by_id and attempts[pk]]


def callback_deliveries_recent(*, limit: int = 200) -> QuerySet[CallbackDelivery]:
    return CallbackDelivery.objects.select_related("decision__case__item__source").order_by("-created_at")[
        :limit
    ]


# The status API's view of an item: its cases and, per policy, the human outcome (issue 16, item 7).


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
