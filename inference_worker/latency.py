"""Engine latency per policy version and hour in 10% buckets (EngineLatencyHour): added in the transaction
that saves a triage batch, compacted every minute. The metrics page's p50 / p95 come from these counts: within
5% of the exact percentile (a bucket's geometric middle), at a cost that does not grow with the calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Sum

from config.rollups import rollup_compact
from inference_worker.models import EngineLatencyHour
from moderation.models import Case, TriageResult

BUCKET_RATIO = 1.1
_TABLE = EngineLatencyHour._meta.db_table
# What the latency figures count: answered engine calls (errors and funnel scores aside).
_ANSWERED = "r.latency_ms IS NOT NULL AND r.error = '' AND r.tier <> 'funnel'"
# Rows for the answered calls WHERE selects (one per version, hour and bucket); the add and the recount.
_COUNTED = f"""
INSERT INTO {_TABLE} (policy_version_id, hour, bucket, calls)
SELECT c.policy_version_id, date_trunc('hour', r.created_at), floor(ln(r.latency_ms + 1) / ln(%s))::smallint,
       count(*)
FROM {TriageResult._meta.db_table} r JOIN {Case._meta.db_table} c ON c.id = r.case_id
WHERE {{where}} AND {_ANSWERED}
GROUP BY 1, 2, 3
"""  # noqa: S608 - the table names are ours, every value is a parameter


def bucket_of(latency_ms: float) -> int:
    return math.floor(math.log(latency_ms + 1) / math.log(BUCKET_RATIO))


def bucket_middle_ms(bucket: int) -> float:
    """The geometric middle of the bucket's range, as a latency."""
    return BUCKET_RATIO ** (bucket + 0.5) - 1


def engine_latency_add(result_ids: Sequence[int]) -> None:
    """Count these triage results in (the answered engine calls among them), in the caller's transaction."""
    if not result_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(_COUNTED.format(where="r.id = ANY(%s)"), [BUCKET_RATIO, list(result_ids)])


def engine_latency_recount() -> None:
    """Count every answered engine call afresh: after calls went in behind triage's back (a restore, a bulk
    load, the pages benchmark). Run it while triage is stopped."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_TABLE}")  # noqa: S608 - the table name is ours
        cursor.execute(_COUNTED.format(where="true"), [BUCKET_RATIO])


def engine_latency_compact() -> None:
    rollup_compact(_TABLE, ("policy_version_id", "hour", "bucket"), ("calls",))


def latency_percentiles(version_ids: Iterable[int], since: datetime) -> dict[str, float | None]:
    """p50 and p95 of the answered engine calls of these versions since `since` (from its hour on)."""
    per_bucket = dict(
        EngineLatencyHour.objects.filter(
            policy_version_id__in=list(version_ids),
            hour__gte=since.replace(minute=0, second=0, microsecond=0),
        )
        .values_list("bucket")
        .annotate(n=Sum("calls"))
        .values_list("bucket", "n")
    )
    calls = sum(per_bucket.values())
    figures: dict[str, float | None] = {"p50_ms": None, "p95_ms": None, "calls": calls}
    for name, share in (("p50_ms", 0.5), ("p95_ms", 0.95)):
        seen = 0
        for bucket in sorted(per_bucket):
            seen += per_bucket[bucket]
            if calls and seen >= share * calls:
                figures[name] = round(bucket_middle_ms(bucket), 1)
                break
    return figures
