"""Compacting insert-only rollup tables (reviews.DecisionHour, inference_worker.EngineLatencyHour).

Writers only insert rows, so none waits on a counter; this merges the rows of each key into one.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection


def rollup_compact(table: str, keys: Sequence[str], counts: Sequence[str]) -> None:
    """One row per key: the rows this statement sees are replaced by their sums in one statement. A row
    inserted meanwhile is not seen, so it stays and still counts."""
    key_list = ", ".join(keys)
    positions = ", ".join(str(n + 1) for n in range(len(keys)))
    joined = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    sums = ", ".join(f"sum({c})" for c in counts)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH split AS (
                SELECT {key_list} FROM {table} GROUP BY {positions} HAVING count(*) > 1
            ), gone AS (
                DELETE FROM {table} t USING split s WHERE {joined} RETURNING t.*
            )
            INSERT INTO {table} ({key_list}, {", ".join(counts)})
            SELECT {key_list}, {sums} FROM gone GROUP BY {positions}
            """  # noqa: S608 - table and column names come from our models; no value from outside
        )
