"""History tables are partitioned by month: the coming months are created ahead, once."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection
from django.utils import timezone

from config import partitions
from reviews import history, tasks


def exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        return cursor.fetchone()[0] is not None


def test_it_creates_the_coming_months_once(db: None) -> None:
    first = partitions.month_add(partitions.month_start(timezone.now()), 60)
    later = datetime(first.year, first.month, 15, tzinfo=UTC)
    created = history.partitions_ensure(now=later)
    expected = [
        partitions.partition_name(spec.table, partitions.month_add(first, n))
        for spec in partitions.HISTORY_TABLES
        for n in range(partitions.MONTHS_AHEAD + 1)
    ]
    assert created == expected
    assert all(exists(name) for name in expected)
    assert history.partitions_ensure(now=later) == []
    tasks.history_partitions_ensure()  # the beat task: this month's are there since the migration
    assert history.partitions_ensure() == []
