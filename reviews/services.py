"""Writes of the review workflow: claims and leases, decisions, escalations, appeals, QA, callbacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, cast

from django.contrib.auth.models import User
from django.core.exceptions import EmptyResultSet
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from audit import services as audit
from config import publish
from moderation.models import Case, Source
from moderation.routing import qa_sampled
from policies import golden
from policies.models import GoldenExample, Verdict
from reviews import rollups, selectors, tasks
from reviews.models import Decision

LEASE_MINUTES = 10
PRIORITY_QA_REVIEW = 20
# pg_advisory_xact_lock(class, user id): one claim at a time per moderator.
CLAIM_LOCK_CLASS = 0x5245  # "RE"


class DecisionRefused(Exception):
    """The case is not this moderator's to decide (lease lost, already decided, wrong role)."""


class LeaseLost(DecisionRefused):
    """The moderator's hold on the case expired (or it was decided meanwhile): offer the next case."""


def _waiting_state(case: Case) -> Case.State:
    if case.appeal_of_id is not None:
        return Case.State.APPEALED
    if case.needs_senior:
        return Case.State.ESCALATED
    return Case.State.QUEUED


@dataclass(frozen=True)
class ClaimScope:
    """Where "next" claims from: the queue the moderator chose (None: all theirs), less what they skipped."""

    policy_id: int | None = None
    skip_ids: Sequence[int] = ()


def case_claim_next(
    *, moderator: User, policy_id: int | None = None, skip_ids: Sequence[int] = ()
) -> Case | None:
    """Lease the next case this moderator may review: one statement decides who owns it (SKIP LOCKED).

    A case the moderator still holds comes first, so a reload never hands out a second one; a moderator's
    own claims are serialised, so neither does a double click.
    """
    with transaction.atomic():
        _claims_serialise(moderator)
        held = selectors.cases_claimed_by(moderator).order_by("lease_expires_at").first()
        if held is not None:
            return held
        case, events = _case_claim(moderator, ClaimScope(policy_id, skip_ids))
        audit.record_all(events)
    return case


def _claims_serialise(moderator: User) -> None:
    """One claim at a time per moderator, to the end of the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [CLAIM_LOCK_CLASS, moderator.pk])


def _case_claim(moderator: User, scope: ClaimScope) -> tuple[Case | None, list[audit.EventIn]]:
    """Lease the first waiting case in the moderator's queue order, with its item's other open cases, in the
    caller's transaction (after _claims_serialise); the audit events are the caller's to record.

    One statement: the first case (FOR UPDATE SKIP LOCKED, so two moderators never get the same one), its
    siblings and the lease, written together: the claim is one round trip to PostgreSQL, not three.
    """
    candidates = selectors.cases_reviewable_by(moderator).filter(
        state__in=selectors.case_states_claimable_by(moderator)
    )
    if scope.policy_id is not None:
        candidates = candidates.filter(policy_version__policy_id=scope.policy_id)
    if scope.skip_ids:
        candidates = candidates.exclude(pk__in=scope.skip_ids)
    # Nobody double-checks their own decision. Asked only of QA reviews: decisions are partitioned by month,
    # so the question probes every month's index, and for any other case the answer is known.
    own = Decision.objects.filter(case_id=OuterRef("qa_of_id"), moderator=moderator)
    candidates = candidates.filter(Q(qa_of__isnull=True) | ~Exists(own))
    now = timezone.now()
    expires = now + timedelta(minutes=LEASE_MINUTES)
    try:
        sql, params = _claim_sql(candidates)
    except EmptyResultSet:  # no queue granted: nothing to claim
        return None, []
    params = [*params, Case.State.CLAIMED, moderator.pk, expires, now]
    # The first case first (RETURNING has no order); is_first comes with each row as an extra attribute.
    claimed = sorted(Case.objects.raw(sql, params), key=lambda c: (not cast(Any, c).is_first, c.pk))
    if not claimed:
        return None, []
    for each in claimed:
        each.lease_owner = moderator
    payload = {"lease_expires_at": str(expires)}
    return claimed[0], [audit.EventIn("case.claimed", moderator, c, payload) for c in claimed]


def _claim_sql(candidates: QuerySet[Case]) -> tuple[str, list[Any]]:
    """The claim's one statement; its last four parameters (state, owner, expiry, now) are the caller's."""
    first_sql, first_params = _sql_of(
        candidates.order_by(*selectors.queue_order())
        .values("id", "item_id", "qa_of_id", "appeal_of_id")
        .select_for_update(skip_locked=True, of=("self",))[:1]
    )
    # Item-centric review: the item's other open cases in this moderator's queues (under the same filter)
    # come with it, under the same lease, so the text is read once. A case another moderator holds is
    # skipped (SKIP LOCKED); QA second reviews (blind) and appeals are claimed on their own.
    siblings_sql, siblings_params = _sql_of(
        candidates.filter(
            item_id=RawSQL("(SELECT item_id FROM first_case)", ()),
            qa_of__isnull=True,
            appeal_of__isnull=True,
        )
        .exclude(pk=RawSQL("(SELECT id FROM first_case)", ()))
        .values("id")
        .select_for_update(skip_locked=True, of=("self",))
    )
    table = Case._meta.db_table
    sql = f"""
        WITH first_case AS ({first_sql}), siblings AS ({siblings_sql})
        UPDATE {table} SET state = %s, lease_owner_id = %s, lease_expires_at = %s, updated_at = %s
        WHERE id IN (
            SELECT id FROM first_case
            UNION ALL
            SELECT id FROM siblings
            WHERE EXISTS (SELECT FROM first_case WHERE qa_of_id IS NULL AND appeal_of_id IS NULL)
        )
        RETURNING {table}.*, {table}.id = (SELECT id FROM first_case) AS is_first
    """  # noqa: S608 - the table name and the querysets' SQL are ours, every value is a parameter
    return sql, [*first_params, *siblings_params]


def _sql_of(queryset: QuerySet[Any]) -> tuple[str, tuple[Any, ...]]:
    return queryset.query.get_compiler(using=queryset.db).as_sql()


def case_lease_renew(*, case: Case, moderator: User) -> bool:
    """Extend a lease that still runs: one that ran out is lost, whether or not the sweep freed it yet.
    Every case of the item the moderator holds (one claim, one lease) is renewed with it."""
    now = timezone.now()
    held = Case.objects.filter(state=Case.State.CLAIMED, lease_owner=moderator, lease_expires_at__gt=now)
    if not held.filter(pk=case.pk).exists():
        return False
    held.filter(item_id=case.item_id).update(
        lease_expires_at=now + timedelta(minutes=LEASE_MINUTES), updated_at=now
    )
    return True


@transaction.atomic
def case_release(*, case: Case, moderator: User, reason: str = "skip") -> bool:
    """Give a claimed case back to the queue it came from."""
    released = Case.objects.filter(pk=case.pk, state=Case.State.CLAIMED, lease_owner=moderator).update(
        state=_waiting_state(case), lease_owner=None, lease_expires_at=None, updated_at=timezone.now()
    )
    if released:
        audit.record("case.released", actor=moderator, obj=case, payload={"reason": reason})
    return released == 1


def leases_expire() -> int:
    """Free every case whose lease ran out (a closed tab, a lost connection): back to its queue."""
    now = timezone.now()
    freed = 0
    with transaction.atomic():
        expired = list(
            Case.objects.filter(state=Case.State.CLAIMED, lease_expires_at__lt=now).select_for_update(
                skip_locked=True
            )
        )
        for state in (Case.State.QUEUED, Case.State.ESCALATED, Case.State.APPEALED):
            ids = [c.pk for c in expired if _waiting_state(c) == state]
            freed += Case.objects.filter(
                pk__in=ids, state=Case.State.CLAIMED, lease_expires_at__lt=now
            ).update(state=state, lease_owner=None, lease_expires_at=None, updated_at=now)
        audit.record_many(
            "case.lease_expired",
            actor=None,
            objects=[(c, {"lease_owner": c.lease_owner_id}) for c in expired],
        )
    return freed


@dataclass(frozen=True)
class DecisionIn:
    action: Decision.Action
    final_label: str = ""
    rule_ids: Sequence[str] = ()
    note: str = ""
    seconds_spent: int = 0


@dataclass(frozen=True)
class Recorded:
    """What one submit recorded, and the case the moderator goes on to (None: nothing left to claim, or
    no claim asked for)."""

    decisions: list[Decision]
    next_case: Case | None


def case_decide(*, case: Case, moderator: User, decision: DecisionIn) -> Decision:
    """Record a moderator's call on one case; the case is settled, escalated or double-checked, never twice
    decided. (item_decide with one case and no next claim.)"""
    return item_decide(moderator=moderator, decisions=[(case, decision)]).decisions[0]


def item_decide(
    *,
    moderator: User,
    decisions: Sequence[tuple[Case, DecisionIn]],
    claim_next: ClaimScope | None = None,
) -> Recorded:
    """One submit for the cases of an item the moderator holds: each decision still its own immutable
    Decision with its audit event and callback, all recorded or none; then, when asked, the next case is
    claimed in the same transaction, so the round trip from one item to the next is one commit and one
    append to the audit chain (its lock is taken last, held only until the commit)."""
    with transaction.atomic():
        if claim_next is not None:
            _claims_serialise(moderator)  # first, as in case_claim_next: the same lock order
        held = _cases_held_lock(moderator)
        if not {c.pk for c, _ in decisions} <= held.keys():
            raise LeaseLost("this case is no longer yours to decide (lease expired or already decided)")
        locked = []
        for case, d in decisions:
            row = held[case.pk]
            # The row as locked, with the item and policy the caller's request already loaded (a case never
            # changes them); loaded here when it did not.
            if Case.item.is_cached(case):
                row.item = case.item
            if Case.policy_version.is_cached(case):
                row.policy_version = case.policy_version
            locked.append((row, d))
        events: list[audit.EventIn] = []
        made = _cases_decide(moderator=moderator, decisions=locked, events=events)
        rollups.decision_hours_add([m.pk for m in made])
        next_case = None
        if claim_next is not None:
            # A case still held (a single decision on an item with other policies) comes first, as a reload
            # of "next" would find it.
            decided = {c.pk for c, _ in decisions}
            still_held = [c for pk, c in held.items() if pk not in decided]
            if still_held:
                next_case = still_held[0]
            else:
                next_case, claimed = _case_claim(moderator, claim_next)
                events.extend(claimed)
        # Last: the audit chain's lock is held from here to the commit, and every moderator waits on it.
        audit.record_all(events)
    return Recorded(made, next_case)


def _cases_held_lock(moderator: User) -> dict[int, Case]:
    """Every case the moderator holds, locked (in one order, so two submits cannot deadlock); a lease that
    ran out is lost even before the sweep frees it."""
    held = Case.objects.filter(
        state=Case.State.CLAIMED, lease_owner=moderator, lease_expires_at__gt=timezone.now()
    )
    return {c.pk: c for c in held.select_for_update().order_by("pk")}


def _cases_decide(
    *, moderator: User, decisions: Sequence[tuple[Case, DecisionIn]], events: list[audit.EventIn]
) -> list[Decision]:
    """The decisions on locked cases the moderator holds, in the caller's transaction: a statement per kind
    of write, whatever the number of policies (the Decisions, the cases' new states, the golden candidates);
    the audit events are added to `events`, in the decisions' order, for the caller to record."""
    rows = [_decision_build(case=case, moderator=moderator, decision=d) for case, d in decisions]
    try:
        # No savepoint: the held lease already makes these the cases' only decisions; the unique index is the
        # backstop, and its error rolls back the whole submit.
        made = Decision.objects.bulk_create(rows)
    except IntegrityError as exc:
        raise DecisionRefused("this case already has a decision") from exc
    cases = [case for case, _ in decisions]
    now = timezone.now()
    escalated = [c for c, m in zip(cases, made, strict=True) if m.action == Decision.Action.ESCALATE]
    for case in escalated:
        case.needs_senior = True
    for state in {_waiting_state(c) for c in escalated}:
        Case.objects.filter(pk__in=[c.pk for c in escalated if _waiting_state(c) == state]).update(
            # An appeal handed on stays an appeal (and where the lease sweep would put it back).
            state=state,
            needs_senior=True,
            priority=F("priority") + 5,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    settled = [(c, m) for c, m in zip(cases, made, strict=True) if m.action != Decision.Action.ESCALATE]
    if settled:
        Case.objects.filter(pk__in=[c.pk for c, _ in settled]).update(
            state=Case.State.DECIDED, lease_owner=None, lease_expires_at=None, updated_at=now
        )
        # A QA review only measures agreement: the platform and the golden set already have the outcome.
        GoldenExample.objects.bulk_create(
            [_golden_candidate_from_decision(c, m) for c, m in settled if c.qa_of_id is None]
        )
    for case, m in zip(cases, made, strict=True):
        if m.action == Decision.Action.ESCALATE:
            events.append(
                audit.EventIn("case.escalated", moderator, case, {"decision_id": m.pk, "note": m.note})
            )
        else:
            _case_settled(case=case, made=m, moderator=moderator, events=events)
    return made


def _decision_build(*, case: Case, moderator: User, decision: DecisionIn) -> Decision:
    """The immutable Decision row to insert, or DecisionRefused; with the QA agreement when the case
    double-checks another."""
    if (
        decision.action == Decision.Action.ESCALATE
        and case.needs_senior
        and not selectors.user_is_senior(moderator)
    ):
        raise DecisionRefused("this case is already escalated")
    action, final_label = _action_and_label(case, decision)
    rule_ids = _rule_ids(case, decision, action, final_label)
    reviewed = (
        Decision.objects.filter(case_id=case.qa_of_id).exclude(action=Decision.Action.ESCALATE).first()
        if case.qa_of_id is not None
        else None
    )
    return Decision(
        case=case,
        moderator=moderator,
        action=action,
        final_label=final_label,
        rule_ids=rule_ids,
        note=decision.note,
        seconds_spent=decision.seconds_spent,
        model_verdict=case.verdict,
        agrees_with_reviewed=_agreement(case, reviewed, final_label),
    )


def _case_settled(*, case: Case, made: Decision, moderator: User, events: list[audit.EventIn]) -> None:
    """The case is decided: its audit event; monitors, QA sampling and the platform's callback follow."""
    events.append(
        audit.EventIn(
            "case.decided",
            moderator,
            case,
            {
                "decision_id": made.pk,
                "action": made.action,
                "final_label": made.final_label,
                "rule_ids": made.rule_ids,
                "model_verdict": made.model_verdict,
                "agrees_with_reviewed": made.agrees_with_reviewed,
            },
        )
    )
    # A QA sample of an auto-clear: the tier's live miss rate may now say it must stop clearing.
    if case.cleared_by:
        transaction.on_commit(
            partial(
                tasks.autoclear_monitor_enqueue,
                policy_version_id=case.policy_version_id,
                tier=case.cleared_by,
            )
        )
    if case.qa_of_id is None:
        qa_case = _qa_review_maybe_open(case)
        if qa_case is not None:
            payload = {"reviews_case": case.pk, "decision_id": made.pk}
            events.append(audit.EventIn("case.qa_opened", None, qa_case, payload))
        if case.item.source.callback_url:
            transaction.on_commit(partial(tasks.callback_enqueue, decision_id=made.pk))


def _action_and_label(case: Case, decision: DecisionIn) -> tuple[str, str]:
    """The action recorded and the label settled on ("" for an escalation), or DecisionRefused.

    A decision means what it says: a label given where the model gave none is recorded as ``decided``
    (never ``overturn``), so overturn rates count only cases that had a verdict. The form says the same to
    the moderator; this holds for every other caller.
    """
    if decision.action == Decision.Action.CONFIRM:
        if not selectors.case_has_model_verdict(case):
            raise DecisionRefused("there is no model verdict to confirm; decide with the right label")
        return Decision.Action.CONFIRM, case.verdict
    if decision.action in (Decision.Action.OVERTURN, Decision.Action.DECIDED):
        if decision.final_label not in Decision.Label.values:
            raise DecisionRefused("a decision needs the correct label: violates or safe")
        if not selectors.case_has_model_verdict(case):
            return Decision.Action.DECIDED, decision.final_label
        if decision.final_label == case.verdict:
            raise DecisionRefused("that is the model's verdict: confirm it instead")
        return Decision.Action.OVERTURN, decision.final_label
    if decision.action == Decision.Action.ESCALATE:
        if not decision.note.strip():
            raise DecisionRefused("say why you escalate, for the senior moderator")
        return Decision.Action.ESCALATE, ""
    raise DecisionRefused(f"unknown action {decision.action!r}")


def _rule_ids(case: Case, decision: DecisionIn, action: str, final_label: str) -> list[str]:
    """The rules a decision records. Confirming without ticking any agrees with the model's cited rules;
    a "violates" (chosen or confirmed) names at least one rule when the policy requires it."""
    rule_ids = list(dict.fromkeys(decision.rule_ids))
    if action == Decision.Action.CONFIRM and not rule_ids and final_label == Verdict.VIOLATES:
        rule_ids = selectors.model_cited_rule_ids(case)
    # Confirming a "violates" the model backed with no rule it could cite asks for one too.
    if (
        action in (Decision.Action.CONFIRM, Decision.Action.OVERTURN, Decision.Action.DECIDED)
        and final_label == Verdict.VIOLATES
        and not rule_ids
        and case.policy_version.policy.rules_required
    ):
        raise DecisionRefused(
            "this policy requires at least one rule for a violation: tick the rules that apply"
        )
    return rule_ids


def _golden_candidate_from_decision(case: Case, decision: Decision) -> GoldenExample:
    text = case.item.text
    return GoldenExample(
        policy=case.policy_version.policy,
        text=text,
        text_hash=golden.text_hash(text),
        expected_label=decision.final_label,
        rule_ids=list(decision.rule_ids),
        origin=GoldenExample.Origin.DECISION,
        decision=decision,
    )


def _is_auto_clear_sample(case: Case) -> bool:
    """A case the model would have auto-cleared, sent to a human instead as a QA sample (see routing)."""
    return case.qa_of_id is None and case.appeal_of_id is None and case.route_reason.startswith("QA sample")


def _agreement(case: Case, reviewed: Decision | None, final_label: str) -> bool | None:
    """For a QA review: does it agree with what it double-checks (a moderator's decision, or the model's
    auto-clear)? None for any other decision, and for an escalation: whoever settles it records it."""
    if not final_label:
        return None
    if reviewed is not None:
        return reviewed.final_label == final_label
    if _is_auto_clear_sample(case):
        return case.verdict == final_label
    return None


def _qa_review_maybe_open(case: Case) -> Case | None:
    """A sampled share of decisions is reviewed again by someone else; agreement is recorded then."""
    policy = case.policy_version.policy
    # Appeals were already judged twice (model at high effort, a senior moderator): no QA on top.
    if case.appeal_of_id is not None or _is_auto_clear_sample(case):
        return None
    # A different hash seed from the auto-clear sample, so the two samples are independent.
    if not qa_sampled(case.pk * 31 + 7, policy.qa_sample_rate):
        return None
    qa_case = Case.objects.create(
        item_id=case.item_id,
        policy_version_id=case.policy_version_id,
        qa_of=case,
        state=Case.State.QUEUED,
        priority=PRIORITY_QA_REVIEW,
        verdict=case.verdict,
        confidence=case.confidence,
        route_reason="QA: second review of a decision",
        queued_at=timezone.now(),
    )
    return qa_case


class AppealRefused(Exception):
    pass


def appeal_open(*, case: Case, reason: str, actor: object) -> tuple[Case, bool]:
    """Open (once) an appeal of a settled case: re-triaged at escalation effort, for senior moderators.

    Returns the appeal case and whether this call created it.
    """
    with transaction.atomic():
        # Locking the appealed case serialises two requests for the same appeal: the second finds the first's.
        locked = Case.objects.select_for_update().filter(pk=case.pk).only("state").first()
        if locked is None or locked.state not in (
            Case.State.DECIDED,
            Case.State.AUTO_ACTIONED,
            Case.State.AUTO_CLEARED,
        ):
            raise AppealRefused("only a decided case can be appealed; this one is still under review")
        existing = Case.objects.filter(appeal_of=case).first()
        if existing is not None:
            return existing, False
        # Waiting since the platform asked: triage keeps queued_at for cases it routes to APPEALED.
        appeal = Case.objects.create(
            item_id=case.item_id,
            policy_version_id=case.policy_version_id,
            appeal_of=case,
            appeal_reason=reason,
            queued_at=timezone.now(),
        )
        audit.record(
            "case.appealed",
            actor=actor if isinstance(actor, Source | User) else None,
            obj=appeal,
            payload={"appeal_of": case.pk, "reason": reason},
        )
        transaction.on_commit(partial(publish.triage_enqueue, case_ids=[appeal.pk]))
    return appeal, True
