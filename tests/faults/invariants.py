"""What must hold after any fault: nothing lost, nothing decided twice, nothing in an impossible state.

Every fault test ends with one call to `assert_nothing_lost`, so a new invariant added here is checked
against every fault.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import Count, Q

from audit.services import chain_verify
from moderation.models import Case, ContentItem, Source, TriageResult
from moderation.routing import REASON_ENGINE_UNAVAILABLE, REASON_NO_ENGINE
from policies.models import PolicyVersion, Verdict
from reviews.models import CallbackDelivery, Decision

# Where a case may rest once the triage sweep has had its chance: nothing stays in pending / triaging.
SETTLED_STATES = frozenset(
    {
        Case.State.QUEUED,
        Case.State.CLAIMED,
        Case.State.DECIDED,
        Case.State.AUTO_CLEARED,
        Case.State.AUTO_ACTIONED,
        Case.State.ESCALATED,
        Case.State.APPEALED,
    }
)
WAITING_FOR_HUMANS = frozenset({Case.State.QUEUED, Case.State.ESCALATED, Case.State.APPEALED})
MODEL_UNDECIDED = "model could not decide"


def _told_why_undetermined(route_reason: str) -> bool:
    """A case without a verdict reaches humans saying why: no engine, engine down or failing, or unsure."""
    return route_reason in (MODEL_UNDECIDED, REASON_NO_ENGINE) or route_reason.startswith("not triaged")


@dataclass(frozen=True)
class NothingLostReport:
    items: int
    cases: int
    states: dict[str, int]
    engine_calls: int
    decisions: int
    callbacks_delivered: int
    audit_events_verified: int

    def line(self) -> str:
        return (
            f"{self.items} items, {self.cases} cases {self.states}, {self.engine_calls} engine calls, "
            f"{self.decisions} decisions, {self.callbacks_delivered} callbacks delivered, "
            f"{self.audit_events_verified} audit events in an intact chain; nothing lost"
        )


def triage_settled(source: Source) -> bool:
    """No case of this source is waiting for triage (the tests poll this before asserting)."""
    return not Case.objects.filter(
        item__source=source, state__in=[Case.State.PENDING_TRIAGE, Case.State.TRIAGING]
    ).exists()


def assert_nothing_lost(
    *,
    source: Source,
    external_ids: Mapping[str, str],
    engine_tiers: int = 2,
    expected_labels: Mapping[str, str] | None = None,
) -> NothingLostReport:
    """The end state after a fault, for every item the platform sent (external_id -> text).

    - every item is stored, with exactly one case per active policy version of its source;
    - every case is settled (triaged, waiting for humans, or decided): none pending or stuck in triage;
    - no impossible combination: a lease only on a claimed case, a verdict on every triaged case,
      the case's verdict is that of its last engine answer, "engine unavailable" only without a verdict,
      a case without a verdict only with humans, labelled with why;
    - no more engine results than attempts allow (a retried attempt may add at most `engine_tiers` each);
    - a decided case has exactly one final decision, any other case none;
    - every final decision of a source with a callback URL has exactly one successful delivery;
    - with `expected_labels` (external_id -> label), every verdict the engine gave is the right one.
    """
    items = dict(
        ContentItem.objects.filter(source=source, external_id__in=list(external_ids)).values_list(
            "external_id", "id"
        )
    )
    missing = sorted(set(external_ids) - set(items))
    assert not missing, f"{len(missing)} items lost, e.g. {missing[:5]}"

    active_versions = set(
        PolicyVersion.objects.filter(policy__sources=source, status=PolicyVersion.Status.ACTIVE).values_list(
            "id", flat=True
        )
    )
    assert active_versions, "the source has no active policy version: nothing would be checked"
    cases = list(
        Case.objects.filter(item_id__in=items.values(), appeal_of__isnull=True, qa_of__isnull=True)
        .annotate(
            final_decisions=Count(
                "decisions", filter=~Q(decisions__action=Decision.Action.ESCALATE), distinct=True
            ),
            # Engine calls only: the funnel tier scores each attempt on CPU and calls nothing.
            results=Count(
                "triage_results", filter=~Q(triage_results__tier=TriageResult.Tier.FUNNEL), distinct=True
            ),
        )
        .values(
            "id",
            "item_id",
            "policy_version_id",
            "state",
            "verdict",
            "route_reason",
            "triage_attempts",
            "lease_owner_id",
            "queued_at",
            "final_decisions",
            "results",
        )
    )
    versions_by_item: dict[int, list[int]] = defaultdict(list)
    for case in cases:
        versions_by_item[case["item_id"]].append(case["policy_version_id"])
    wrong_cases = {
        item_id: versions
        for item_id in items.values()
        if sorted(versions := versions_by_item.get(item_id, [])) != sorted(active_versions)
    }
    assert not wrong_cases, (
        f"{len(wrong_cases)} items without one case per active policy version {sorted(active_versions)}"
        f", e.g. {list(wrong_cases.items())[:5]}"
    )

    unsettled = [c for c in cases if c["state"] not in SETTLED_STATES]
    assert not unsettled, f"{len(unsettled)} cases not settled, e.g. {unsettled[:3]}"

    impossible = [
        c
        for c in cases
        if (c["lease_owner_id"] is not None) != (c["state"] == Case.State.CLAIMED)
        or not c["verdict"]
        or (c["state"] in WAITING_FOR_HUMANS and c["queued_at"] is None)
        or (c["state"] == Case.State.AUTO_CLEARED and c["verdict"] != Verdict.SAFE)
        or (c["state"] == Case.State.AUTO_ACTIONED and c["verdict"] != Verdict.VIOLATES)
        or (c["route_reason"] == REASON_ENGINE_UNAVAILABLE and c["verdict"] != Verdict.UNDETERMINED)
        or (
            c["verdict"] == Verdict.UNDETERMINED
            and (
                c["state"] not in WAITING_FOR_HUMANS | {Case.State.CLAIMED, Case.State.DECIDED}
                or not _told_why_undetermined(c["route_reason"])
            )
        )
        or c["results"] > c["triage_attempts"] * engine_tiers
    ]
    assert not impossible, f"{len(impossible)} cases in an impossible state, e.g. {impossible[:3]}"

    # The case's verdict is its last engine answer (errors carry no answer).
    case_ids = [c["id"] for c in cases]
    last_answer: dict[int, str] = {}
    for case_id, verdict in (
        TriageResult.objects.filter(case_id__in=case_ids, error="")
        .order_by("id")
        .values_list("case_id", "verdict")
    ):
        last_answer[case_id] = verdict
    disagreeing = [c for c in cases if c["id"] in last_answer and last_answer[c["id"]] != c["verdict"]]
    assert not disagreeing, f"{len(disagreeing)} cases whose verdict is not their last engine answer"
    unanswered_but_judged = [
        c for c in cases if c["id"] not in last_answer and c["verdict"] != Verdict.UNDETERMINED
    ]
    assert not unanswered_but_judged, (
        f"{len(unanswered_but_judged)} cases with a verdict and no engine answer"
    )
    if expected_labels is not None:
        external_by_item = {item_id: ext for ext, item_id in items.items()}
        wrong = [
            c
            for c in cases
            if c["verdict"] in (Verdict.SAFE, Verdict.VIOLATES)
            and c["verdict"] != expected_labels[external_by_item[c["item_id"]]]
        ]
        assert not wrong, f"{len(wrong)} cases with the wrong verdict, e.g. {wrong[:3]}"

    decided_wrongly = [
        c for c in cases if c["final_decisions"] != (1 if c["state"] == Case.State.DECIDED else 0)
    ]
    assert not decided_wrongly, (
        f"{len(decided_wrongly)} cases decided twice or not as their state says, e.g. {decided_wrongly[:3]}"
    )

    decisions = list(
        Decision.objects.filter(case_id__in=case_ids)
        .exclude(action=Decision.Action.ESCALATE)
        .values_list("id", flat=True)
    )
    delivered = Counter(
        CallbackDelivery.objects.filter(decision_id__in=decisions, succeeded=True).values_list(
            "decision_id", flat=True
        )
    )
    if source.callback_url:
        not_once = {d: delivered[d] for d in decisions if delivered[d] != 1}
        assert not not_once, (
            f"{len(not_once)} decisions not delivered exactly once: {list(not_once.items())[:5]}"
        )

    # Every write on the way was audited through the hash chain: it must still verify end to end.
    chain = chain_verify()  # what `manage.py verify_audit_log` runs
    assert chain.broken is None, f"audit log chain broken: {chain.broken}"
    assert chain.verified > len(items), f"only {chain.verified} audit events for {len(items)} items"

    return NothingLostReport(
        items=len(items),
        cases=len(cases),
        states=dict(Counter(c["state"] for c in cases)),
        engine_calls=TriageResult.objects.filter(case_id__in=case_ids)
        .exclude(tier=TriageResult.Tier.FUNNEL)
        .count(),
        decisions=len(decisions),
        callbacks_delivered=sum(delivered.values()),
        audit_events_verified=chain.verified,
    )
