"""The audit log is partitioned by month: the migration moves the rows, new events land in their month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit import chain
from audit import services as audit
from config import partitions
from policies.models import Policy

BEFORE_PARTITIONS = ("audit", "0001_initial")


def migrate(targets: list[tuple[str, str]] | None = None) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


def chain_insert(times: list[datetime]) -> None:
    """Events chained from the genesis at the given times, written straight to the table."""
    prev, rows = chain.GENESIS_HASH, []
    for seq, at in enumerate(times, start=1):
        fields: dict[str, Any] = {
            "seq": seq,
            "created_at": at,
            "actor_kind": "system",
            "actor_id": "",
            "actor_label": "system",
            "action": "test.old",
            "object_type": "test",
            "object_id": str(seq),
            "payload": {"n": seq},
            "prev_hash": prev,
        }
        prev = chain.event_hash(**fields)
        rows.append([*fields.values(), prev])
    params: list[Any] = [[*r[:8], Jsonb(r[8]), *r[9:]] for r in rows]
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO reviews_auditevent (seq, created_at, actor_kind, actor_id, actor_label, action, "
            "object_type, object_id, payload, prev_hash, hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            params,
        )


def partition_of(seq: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM reviews_auditevent WHERE seq = %s", [seq])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_it_moves_existing_events_into_month_partitions_and_the_chain_still_verifies() -> None:
    start = datetime(2025, 11, 20, tzinfo=UTC)
    times = [start + timedelta(days=7 * n) for n in range(12)]  # Nov 2025 to Feb 2026
    migrate([BEFORE_PARTITIONS])
    try:
        chain_insert(times)
    finally:
        migrate()
    report = audit.chain_verify()
    assert report.broken is None
    assert report.verified == 12
    for seq, at in enumerate(times, start=1):
        assert partition_of(seq) == partitions.partition_name(
            "reviews_auditevent", partitions.month_start(at)
        )
    with connection.cursor() as cursor:
        # Every partition refuses UPDATE and DELETE, and the next event gets the next id.
        cursor.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_trigger t ON t.tgrelid = i.inhrelid "
            "WHERE i.inhparent = 'reviews_auditevent'::regclass "
            "AND t.tgname = 'reviews_auditevent_append_only'"
        )
        with_trigger = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'reviews_auditevent'::regclass")
        assert with_trigger == cursor.fetchone()[0] > 4
    event = audit.record_about("test.after", actor=None, object_type="test", object_id="x")
    assert event.seq == 13
    assert audit.chain_verify().broken is None


def test_it_writes_new_events_to_this_months_partition(policy: Policy) -> None:
    event = audit.record("test.event", actor=None, obj=policy)
    assert partition_of(event.seq) == partitions.partition_name(
        "reviews_auditevent", partitions.month_start(event.created_at)
    )


def test_it_keeps_an_event_whose_month_has_no_partition_in_the_default_one(db: None) -> None:
    chain_insert([datetime(2001, 1, 1, tzinfo=UTC)])
    assert partition_of(1) == "reviews_auditevent_default"
    # The chain goes on from it.
    assert audit.record_about("test.next", actor=None, object_type="test", object_id="x").seq == 2
    assert audit.chain_verify().broken is None


def test_it_never_dates_an_event_before_the_head(db: None) -> None:
    # A host whose clock is behind another's must not put the chain's next link in an earlier month.
    ahead = timezone.now() + timedelta(minutes=5)
    chain_insert([ahead])
    event = audit.record_about("test.next", actor=None, object_type="test", object_id="x")
    assert event.created_at == ahead
    assert audit.chain_verify().broken is None


def test_it_reads_the_chain_head_from_each_months_index(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT seq, hash, created_at FROM reviews_auditevent ORDER BY seq DESC LIMIT 1"
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Merge Append" in plan
    assert "Seq Scan" not in plan
    assert "seq_uniq" in plan
