"""Decisions per version and hour (reviews/rollups.py): what the metrics page reads instead of the history."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from accounts.roles import Role
from audit.models import AuditEvent
from moderation.models import Case, Source
from policies.models import Policy
from reviews import rollups, services
from reviews.models import Decision, DecisionHour
from reviews.services import DecisionIn
from tests.conftest import CasesFactory
from tests.reviews.helpers import cases_create, user_create


def counted_from_history() -> dict[tuple[int, object], dict[str, int]]:
    """The rollup's meaning, counted in Python from every decision (independently of its SQL)."""
    expected: dict[tuple[int, object], dict[str, int]] = {}
    for d in Decision.objects.select_related("case"):
        hour = d.created_at.replace(minute=0, second=0, microsecond=0)
        row = expected.setdefault((d.case.policy_version_id, hour), dict.fromkeys(DecisionHour.COUNTS, 0))
        row["decisions"] += 1
        row["on_verdict"] += d.action in ("confirm", "overturn")
        row["overturns"] += d.action == "overturn"
        if d.action != "escalate" and d.case.qa_of_id is None:
            key = {
                ("violates", "violates"): "true_positives",
                ("violates", "safe"): "false_positives",
                ("safe", "violates"): "false_negatives",
                ("safe", "safe"): "true_negatives",
            }.get((d.model_verdict, d.final_label))
            if key:
                row[key] += 1
        row["qa_reviews"] += d.agrees_with_reviewed is not None
        row["qa_agreed"] += d.agrees_with_reviewed is True
    return expected


def stored() -> dict[tuple[int, object], dict[str, int]]:
    """The stored rows summed per version and hour (before compaction there is a row per decision)."""
    sums: dict[tuple[int, object], dict[str, int]] = {}
    for r in DecisionHour.objects.all():
        row = sums.setdefault((r.policy_version_id, r.hour), dict.fromkeys(DecisionHour.COUNTS, 0))
        for c in DecisionHour.COUNTS:
            row[c] += getattr(r, c)
    return sums


def decide(case: Case, moderator: User, action: str, label: str = "") -> Decision:
    Case.objects.filter(pk=case.pk).update(
        state=Case.State.CLAIMED,
        lease_owner=moderator,
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )
    case.refresh_from_db()
    violates = label == "violates" or (action == "confirm" and case.verdict == "violates")
    decision = DecisionIn(
        action=Decision.Action(action),
        final_label=label,
        rule_ids=["SP1"] if violates else [],
        note="for a senior" if action == "escalate" else "",
    )
    return services.case_decide(case=case, moderator=moderator, decision=decision)


def test_it_counts_every_decision_the_service_makes(
    policy: Policy, queued_cases: CasesFactory, moderator: User, senior_moderator: User
) -> None:
    policy.qa_sample_rate = 1.0  # every first decision gets a QA review, which counts as QA only
    policy.save()
    flagged = queued_cases(3, verdict="violates")
    cleared = queued_cases(3, verdict="safe")
    unsure = queued_cases(1, verdict="undetermined")
    decide(flagged[0], moderator, "confirm")
    decide(flagged[1], moderator, "overturn", "safe")
    decide(flagged[2], moderator, "escalate")
    decide(cleared[0], moderator, "confirm")
    decide(cleared[1], moderator, "overturn", "violates")
    decide(unsure[0], moderator, "decided", "safe")
    for qa_case in Case.objects.filter(qa_of__isnull=False)[:2]:
        decide(qa_case, senior_moderator, "confirm")
    assert Decision.objects.count() == 8
    assert DecisionHour.objects.count() == 8  # a row per decision until compacted
    assert stored() == counted_from_history()
    rollups.decision_hours_compact()
    assert stored() == counted_from_history()
    [row] = DecisionHour.objects.all()
    assert (row.decisions, row.on_verdict, row.overturns) == (8, 6, 2)
    assert (row.true_positives, row.false_positives, row.false_negatives, row.true_negatives) == (1, 1, 1, 1)
    assert row.qa_reviews == 2


def test_it_finds_reports_and_repairs_drift(
    policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    policy.qa_sample_rate = 0
    policy.save()
    for case in queued_cases(4, verdict="safe"):
        decide(case, moderator, "confirm")
    assert rollups.decision_hours_reconcile(since=None) == 0
    rollups.decision_hours_compact()
    [row] = DecisionHour.objects.all()
    DecisionHour.objects.filter(pk=row.pk).update(decisions=99)  # drifted
    DecisionHour.objects.create(
        policy_version=row.policy_version, hour=row.hour - timedelta(hours=5)
    )  # stray
    assert rollups.decision_hours_reconcile(since=None) == 2
    assert stored() == counted_from_history()
    assert DecisionHour.objects.count() == 1
    event = AuditEvent.objects.get(action="metrics.rollups_repaired")
    assert event.payload["rows"] == 2
    assert rollups.decision_hours_reconcile(since=None) == 0


def test_a_recount_of_recent_hours_leaves_older_ones_alone(
    policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    policy.qa_sample_rate = 0
    policy.save()
    decide(queued_cases(1, verdict="safe")[0], moderator, "confirm")
    old = DecisionHour.objects.create(
        policy_version=policy.versions.get(),
        hour=timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=30),
        decisions=7,
    )
    assert rollups.decision_hours_reconcile(since=timezone.now() - timedelta(hours=48)) == 0
    old.refresh_from_db()
    assert old.decisions == 7


MODERATORS = 6
CASES = 36


@pytest.mark.django_db(transaction=True)
def test_concurrent_decisions_leave_the_rollups_equal_to_a_full_count(policy: Policy) -> None:
    policy.qa_sample_rate = 0.3  # some QA cases too
    policy.save()
    source = Source.objects.create(name="S", slug="s", api_key_id="k", api_key_hash="h")
    cases_create(policy, source, CASES, verdict="violates")
    moderators = [user_create(f"m{n}", Role.MODERATOR, grants=[policy]) for n in range(MODERATORS)]
    start = threading.Barrier(MODERATORS)
    errors: list[BaseException] = []

    def work(n: int, moderator: User) -> None:
        try:
            start.wait()
            turn = 0
            while (case := services.case_claim_next(moderator=moderator)) is not None:
                turn += 1
                action = (Decision.Action.CONFIRM, Decision.Action.OVERTURN, Decision.Action.ESCALATE)[
                    (n + turn) % 3
                ]
                label = "safe" if action == "overturn" else ""
                services.case_decide(
                    case=case,
                    moderator=moderator,
                    decision=DecisionIn(action=action, final_label=label, rule_ids=["SP1"], note="see"),
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(n, m)) for n, m in enumerate(moderators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert Decision.objects.count() >= CASES
    assert stored() == counted_from_history()
    assert rollups.decision_hours_reconcile(since=None) == 0
    rollups.decision_hours_compact()
    assert stored() == counted_from_history()
    assert DecisionHour.objects.count() == len(counted_from_history())  # one row per version and hour


def test_old_hours_are_kept_per_day_then_per_month_with_the_same_totals(
    policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    now = timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    a_day = (now - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
    a_month = (now - timedelta(days=200)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    times = [
        now,
        a_day + timedelta(hours=5),
        a_day + timedelta(hours=9),
        a_month + timedelta(days=2, hours=1),
        a_month + timedelta(days=20, hours=13),
    ]
    ids = []
    with connection.cursor() as cursor:
        # Decisions made in the past (append-only: inserted as they were, never updated).
        for case, at in zip(queued_cases(len(times), verdict="safe"), times, strict=True):
            cursor.execute(
                "INSERT INTO reviews_decision (case_id, moderator_id, action, final_label, rule_ids, note,"
                " seconds_spent, model_verdict, created_at)"
                " VALUES (%s, %s, 'confirm', 'safe', '{}', '', 0, 'safe', %s) RETURNING id",
                [case.pk, moderator.pk, at],
            )
            ids.append(cursor.fetchone()[0])
    rollups.decision_hours_add(ids)
    assert DecisionHour.objects.count() == 5

    rollups.decision_hours_compact()

    assert sorted(DecisionHour.objects.values_list("hour", "decisions", "true_negatives")) == [
        (a_month, 2, 2),
        (a_day, 2, 2),
        (this_hour, 1, 1),
    ]
    assert rollups.decision_hours_reconcile(since=None) == 0
    rollups.decision_hours_compact()
    assert DecisionHour.objects.count() == 3


def test_a_recount_agrees_with_the_compacted_rows_across_the_day_and_month_boundaries(
    policy: Policy, queued_cases: CasesFactory, moderator: User
) -> None:
    now = timezone.now()
    # A decision every 5 hours over the last 104 days, and every hour for the days around both boundaries
    # (7 and 90 days back): rows on both sides of each, whatever the time of day the test runs at.
    hours_ago = sorted({*range(0, 24 * 104, 5), *range(24 * 5, 24 * 10), *range(24 * 88, 24 * 93)})
    cases = queued_cases(len(hours_ago), verdict="safe")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO reviews_decision (case_id, moderator_id, action, final_label, rule_ids, note,"
            " seconds_spent, model_verdict, created_at)"
            " SELECT c, %s, 'confirm', 'safe', '{}', '', 0, 'safe', %s - h * interval '1 hour'"
            " FROM unnest(%s::bigint[], %s::int[]) AS u(c, h) RETURNING id",
            [moderator.pk, now, [c.pk for c in cases], hours_ago],
        )
        ids = [row[0] for row in cursor.fetchall()]
    rollups.decision_hours_add(ids)
    # Compacted a day earlier, then again now: the recount finds what the rows say either way.
    rollups.decision_hours_compact(now=now - timedelta(days=1, hours=7))
    assert rollups.decision_hours_reconcile(since=None) == 0
    rollups.decision_hours_compact()
    assert rollups.decision_hours_reconcile(since=None) == 0
    assert DecisionHour.objects.aggregate(n=Sum("decisions"))["n"] == len(hours_ago)
    assert DecisionHour.objects.count() < 7 * 24 + 90 + 4
