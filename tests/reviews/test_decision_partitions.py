"""Decisions are partitioned by month: the migration moves them, and each month keeps one final per case."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from config import partitions
from moderation.models import Case
from reviews.models import Decision
from tests.conftest import CasesFactory

BEFORE_PARTITIONS = ("reviews", "0009_decision_hour")


def migrate(targets: list[tuple[str, str]] | None = None) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


def decision_insert(case: Case, moderator: User, at: datetime, action: str = "confirm") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO reviews_decision (action, final_label, rule_ids, note, seconds_spent, "
            "model_verdict, created_at, case_id, moderator_id) "
            "VALUES (%s, 'violates', '{}', '', 0, '', %s, %s, %s)",
            [action, at, case.pk, moderator.pk],
        )


def partition_of(case: Case) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM reviews_decision WHERE case_id = %s ORDER BY id", [case.pk]
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_it_moves_existing_decisions_into_month_partitions(
    queued_cases: CasesFactory, moderator: User
) -> None:
    old, recent = queued_cases(2)
    march = datetime(2025, 3, 5, tzinfo=UTC)
    migrate([BEFORE_PARTITIONS])
    try:
        decision_insert(old, moderator, march)
        decision_insert(recent, moderator, timezone.now())
    finally:
        migrate()
    assert partition_of(old) == ["reviews_decision_p2025_03"]
    assert partition_of(recent) == [
        partitions.partition_name("reviews_decision", partitions.month_start(timezone.now()))
    ]
    assert Decision.objects.count() == 2
    # The month's unique index still refuses a second final decision; an escalation is not one.
    with pytest.raises(IntegrityError), transaction.atomic():
        decision_insert(old, moderator, datetime(2025, 3, 20, tzinfo=UTC))
    decision_insert(old, moderator, datetime(2025, 3, 21, tzinfo=UTC), action="escalate")
    # The identity goes on after the highest id moved: the escalation is the newest row.
    newest = Decision.objects.order_by("id").last()
    assert newest is not None
    assert (newest.case_id, newest.action) == (old.pk, Decision.Action.ESCALATE)
