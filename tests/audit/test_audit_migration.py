"""The hash-chain migration backfills a valid chain for the events that existed before it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit import services as audit

BEFORE_CHAIN = ("reviews", "0003_golden_curation_and_evaluation_runs")


def migrate(targets: list[tuple[str, str]] | None = None) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_migration_chains_existing_events_and_keeps_the_log_append_only() -> None:
    migrate([BEFORE_CHAIN])
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO reviews_auditevent "
                "(created_at, actor_kind, actor_id, actor_label, action, object_type, object_id, payload) "
                "SELECT now() - g * interval '1 second', 'system', '', 'system', 'case.triaged', "
                "'moderation.case', g::text, jsonb_build_object('n', g, 'note', E'a \"b\"\\n') "
                "FROM generate_series(1, 120) g"
            )
    finally:
        migrate()
    report = audit.chain_verify()
    assert report.broken is None
    assert report.verified == 120
    with connection.cursor() as cursor:
        # Oldest first: the event made 120 seconds ago is the chain's first.
        cursor.execute("SELECT object_id FROM reviews_auditevent WHERE seq = 1")
        assert cursor.fetchone() == ("120",)
        cursor.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'reviews_auditevent_append_only'")
        assert cursor.fetchone() == ("O",)  # enabled again
