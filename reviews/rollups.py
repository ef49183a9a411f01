"""Decisions per policy version and hour (DecisionHour): added to in every decision's transaction, recounted
for recent hours by a periodic reconciliation that repairs and reports any drift.

Both paths count with the one query below, so what is added and what a recount finds cannot disagree on
what a decision counts for (the metrics page's chart, overturn rates, model agreement, QA agreement).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Sum

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


def decision_hours_compact() -> None:
    rollup_compact(_TABLE, ("policy_version_id", "hour"), COUNTS)


def decision_hours_reconcile(*, since: datetime | None) -> int:
    """Recount the hours from `since` (every hour when None) from the decisions; repair the rows that differ
    and audit what was repaired. Returns how many rows drifted.

    One snapshot (REPEATABLE READ) for the recount and the stored rows: a decision committed meanwhile is in
    neither, and its own row, which the repair does not see, stays and counts it."""
    where, params = (
        ("d.created_at >= date_trunc('hour', %s::timestamptz)", [since]) if since else ("true", [])
    )
    snapshot = not connection.in_atomic_block  # inside a caller's transaction, its isolation holds
    with transaction.atomic():
        with connection.cursor() as cursor:
            if snapshot:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute(_COUNTED.format(where=where), params)
            expected = {(row[0], row[1]): tuple(row[2:]) for row in cursor.fetchall()}
        stored_rows = DecisionHour.objects.all()
        if since is not None:
            stored_rows = stored_rows.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0))
        sums: Any = stored_rows.values("policy_version_id", "hour").annotate(**{c: Sum(c) for c in COUNTS})
        stored = {(r["policy_version_id"], r["hour"]): tuple(r[c] for c in COUNTS) for r in sums.order_by()}
        drifted = sorted(k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k))
        if not drifted:
            return 0
        for version_id, hour in drifted:
            DecisionHour.objects.filter(policy_version_id=version_id, hour=hour).delete()
            counts = expected.get((version_id, hour))
            if counts is not None:
                DecisionHour.objects.create(
                    policy_version_id=version_id, hour=hour, **dict(zip(COUNTS, counts, strict=True))
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
