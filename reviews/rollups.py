"""Decisions per policy version and hour (DecisionHour): added to in every decision's transaction, recounted
for recent hours by a periodic reconciliation that repairs and reports any drift.

Both paths count with the one query below, so what is added and what a recount finds cannot disagree on
what a decision counts for (the metrics page's chart, overturn rates, model agreement, QA agreement).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from audit import services as audit
from config.rollups import rollup_compact
from moderation.models import Case
from reviews.models import Decision, DecisionHour

logger = logging.getLogger(__name__)

COUNTS = DecisionHour.COUNTS
# One row per version and hour of the decisions WHERE selects; columns in COUNTS order.
_COUNTED = f"""
SELECT c.policy_version_id, date_trunc('hour', d.created_at) AS hour,
       count(*),
       count(*) FILTER (WHERE d.action IN ('confirm', 'overturn')),
       count(*) FILTER (WHERE d.action = 'overturn'),
       count(*) FILTER (WHERE {{first}} AND d.model_verdict = 'violates' AND d.final_label = 'violates'),
       count(*) FILTER (WHERE {{first}} AND d.model_verdict = 'violates' AND d.final_label = 'safe'),
       count(*) FILTER (WHERE {{first}} AND d.model_verdict = 'safe' AND d.final_label = 'violates'),
       count(*) FILTER (WHERE {{first}} AND d.model_verdict = 'safe' AND d.final_label = 'safe'),
       count(*) FILTER (WHERE d.agrees_with_reviewed IS NOT NULL),
       count(*) FILTER (WHERE d.agrees_with_reviewed)
FROM {Decision._meta.db_table} d JOIN {Case._meta.db_table} c ON c.id = d.case_id
WHERE {{where}}
GROUP BY 1, 2
ORDER BY 1, 2
""".replace(  # noqa: S608 - the table names are ours, every value is a parameter
    "{first}", "d.action <> 'escalate' AND c.qa_of_id IS NULL"
)
_TABLE = DecisionHour._meta.db_table
_COLUMNS = ", ".join(COUNTS)


def decision_hours_add(decision_ids: Sequence[int]) -> None:
    """Count these decisions in, in the caller's transaction: rows inserted, none updated, so a decision
    never waits on another's counter (nor on a lock taken in another order)."""
    if not decision_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_TABLE} (policy_version_id, hour, {_COLUMNS}) "
            + _COUNTED.format(where="d.id = ANY(%s)"),
            [list(decision_ids)],
        )


# Rows older than HOURLY_DAYS are merged into their day, older than DAILY_DAYS into their month: the metrics
# page sums a few hundred rows per version (a week of hours, three months of days, a row a month) whatever
# the history's length. The chart reads the last 24 hours and the reconciliation the last 48, both hourly.
HOURLY_DAYS = 7
DAILY_DAYS = 90


def _horizons(now: datetime) -> tuple[datetime, datetime]:
    """Where hours stop and days start, and where days stop and months start (UTC). Aligned to a day and a
    month, so no day or month row straddles one and a row's start says which it is."""
    hourly_from = (now - timedelta(days=HOURLY_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    daily_from = (now - timedelta(days=DAILY_DAYS)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return hourly_from, daily_from


def bucket_of(hour: datetime, *, now: datetime) -> datetime:
    """The start of the row a decision hour is kept in (as the compaction's SQL computes it)."""
    hourly_from, daily_from = _horizons(now)
    if hour >= hourly_from:
        return hour
    if hour >= daily_from:
        return hour.replace(hour=0)
    return hour.replace(day=1, hour=0)


# bucket_of in SQL, for rows older than HOURLY_DAYS (the session's time zone is UTC).
_BUCKET = (
    "CASE WHEN hour >= %(daily_from)s THEN date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
    "ELSE date_trunc('month', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END"
)


def decision_hours_compact(*, now: datetime | None = None) -> None:
    """Old hours into their day or month, then one row per version and bucket."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH gone AS (
                DELETE FROM {_TABLE} WHERE hour < %(hourly_from)s AND hour <> {_BUCKET} RETURNING *
            )
            INSERT INTO {_TABLE} (policy_version_id, hour, {_COLUMNS})
            SELECT policy_version_id, {_BUCKET}, {", ".join(f"sum({c})" for c in COUNTS)}
            FROM gone GROUP BY 1, 2
            """,  # noqa: S608 - the table and column names are ours, every value is a parameter
            dict(zip(("hourly_from", "daily_from"), _horizons(now), strict=True)),
        )
    rollup_compact(_TABLE, ("policy_version_id", "hour"), COUNTS)


def decision_hours_reconcile(*, since: datetime | None) -> int:
    """Recount the hours from `since` (every hour when None) from the decisions; repair the rows that differ
    and audit what was repaired. Returns how many rows drifted.

    One snapshot (REPEATABLE READ) for the recount and the stored rows: a decision committed meanwhile is in
    neither, and its own row, which the repair does not see, stays and counts it."""
    now = timezone.now()
    where, params = (
        ("d.created_at >= date_trunc('hour', %s::timestamptz)", [since]) if since else ("true", [])
    )
    snapshot = not connection.in_atomic_block  # inside a caller's transaction, its isolation holds
    with transaction.atomic():
        with connection.cursor() as cursor:
            if snapshot:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(_COUNTED.format(where=where), params)
            expected = _in_buckets([((row[0], row[1]), row[2:]) for row in cursor.fetchall()], now=now)
        stored_rows = DecisionHour.objects.all()
        if since is not None:
            stored_rows = stored_rows.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0))
        sums: Any = stored_rows.values("policy_version_id", "hour").annotate(**{c: Sum(c) for c in COUNTS})
        rows = [((r["policy_version_id"], r["hour"]), [r[c] for c in COUNTS]) for r in sums.order_by()]
        stored = _in_buckets(rows, now=now)
        drifted = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
        if not drifted:
            return 0
        # Every stored row of a bucket (an old one may not be merged into its day or month yet).
        hours_of: dict[tuple[int, datetime], list[datetime]] = {}
        for (version_id, hour), _ in rows:
            hours_of.setdefault((version_id, bucket_of(hour, now=now)), []).append(hour)
        for version_id, bucket in drifted:
            hours = hours_of.get((version_id, bucket), [])
            DecisionHour.objects.filter(policy_version_id=version_id, hour__in=hours).delete()
            counts = expected.get((version_id, bucket))
            if counts is not None:
                DecisionHour.objects.create(
                    policy_version_id=version_id, hour=bucket, **dict(zip(COUNTS, counts, strict=True))
                )
        logger.warning("decision rollups: %d rows drifted and were recounted", len(drifted))
        audit.record_about(
            "metrics.rollups_repaired",
            actor=None,
            object_type=DecisionHour._meta.label_lower,
            object_id="",
            payload={
                "rows": len(drifted),
                "since": since.isoformat() if since else None,
                "first": [[v, h.isoformat()] for v, h in drifted[:20]],
            },
        )
    return len(drifted)


def _in_buckets(
    rows: Iterable[tuple[tuple[int, datetime], Sequence[int]]], *, now: datetime
) -> dict[tuple[int, datetime], tuple[int, ...]]:
    """Counts per (version, hour) summed per (version, bucket_of(hour)), as the compaction keeps them."""
    summed: dict[tuple[int, datetime], list[int]] = {}
    for (version_id, hour), counts in rows:
        into = summed.setdefault((version_id, bucket_of(hour, now=now)), [0] * len(COUNTS))
        for n, count in enumerate(counts):
            into[n] += count
    return {key: tuple(counts) for key, counts in summed.items()}
