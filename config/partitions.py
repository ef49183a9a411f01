"""Monthly range partitions of the history tables (PostgreSQL declarative partitioning).

The mechanics only, by table name, so migrations, the maintenance task and the retention service share one
way to name, create, list and detach a month. Months are UTC calendar months of `created_at`; each table
also has a DEFAULT partition so that no row is ever refused, whatever the clock says or however long the
maintenance task has not run. What may be archived, and the audit trail of it, is reviews/history.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.db.backends.utils import CursorWrapper

# Months created ahead of the current one: the task runs daily, so a quiet month or two of a stopped beat
# still finds its partition waiting.
MONTHS_AHEAD = 3


@dataclass(frozen=True)
class HistoryTable:
    table: str
    # Unique indexes every partition carries, as "name suffix: definition". A partitioned table's own unique
    # indexes must include the partition key, so these hold per month; what makes them global is in
    # docs/architecture.md (database invariants).
    partition_unique: tuple[tuple[str, str], ...] = ()


AUDIT_EVENTS = HistoryTable("reviews_auditevent", (("seq_uniq", "(seq)"),))
DECISIONS = HistoryTable(
    "reviews_decision", (("one_final_per_case", "(case_id) WHERE NOT action::text = 'escalate'"),)
)
HISTORY_TABLES = (AUDIT_EVENTS, DECISIONS)


@dataclass(frozen=True)
class Partition:
    name: str
    # The month it holds; None for the DEFAULT partition.
    month: date | None


def month_start(value: datetime | date) -> date:
    if isinstance(value, datetime):
        value = value.astimezone(UTC).date()
    return value.replace(day=1)


def month_add(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """[start, end) of a month in UTC: the partition's bounds."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end_month = month_add(month, 1)
    return start, datetime(end_month.year, end_month.month, 1, tzinfo=UTC)


def partition_name(table: str, month: date) -> str:
    return f"{table}_p{month:%Y_%m}"


def default_name(table: str) -> str:
    return f"{table}_default"


def _unique_indexes(cursor: CursorWrapper, spec: HistoryTable, name: str) -> None:
    for suffix, definition in spec.partition_unique:
        cursor.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {name}_{suffix} ON {name} {definition}")


def default_create(cursor: CursorWrapper, spec: HistoryTable) -> None:
    name = default_name(spec.table)
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {spec.table} DEFAULT")
    _unique_indexes(cursor, spec, name)


def partition_create(cursor: CursorWrapper, spec: HistoryTable, month: date) -> bool:
    """The month's partition, if it is missing (False if it exists, attached or archived)."""
    name = partition_name(spec.table, month)
    cursor.execute("SELECT to_regclass(%s)", [name])
    if cursor.fetchone()[0] is not None:
        return False
    start, end = month_bounds(month)
    # PostgreSQL refuses the partition if the DEFAULT one holds rows of that month (they would have to
    # move first); the error names the partition, and those rows stay readable where they are.
    cursor.execute(
        f"CREATE TABLE {name} PARTITION OF {spec.table} FOR VALUES FROM (%s) TO (%s)",
        [start, end],
    )
    _unique_indexes(cursor, spec, name)
    return True


def partitions_ensure(cursor: CursorWrapper, spec: HistoryTable, *, now: datetime) -> list[str]:
    """This month's partition and MONTHS_AHEAD more, and the DEFAULT one; the names it created."""
    default_create(cursor, spec)
    current = month_start(now)
    return [
        partition_name(spec.table, month)
        for month in (month_add(current, n) for n in range(MONTHS_AHEAD + 1))
        if partition_create(cursor, spec, month)
    ]


def partitions_attached(cursor: CursorWrapper, table: str) -> list[Partition]:
    """The partitions attached to the table, oldest month first, the DEFAULT one last."""
    cursor.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = %s::regclass
        """,
        [table],
    )
    found: list[Partition] = []
    for name, is_default in cursor.fetchall():
        month = None if is_default else _month_of(table, name)
        found.append(Partition(name, month))
    return sorted(found, key=lambda p: (p.month is None, p.month or date.min))


def _month_of(table: str, name: str) -> date | None:
    suffix = name.removeprefix(f"{table}_p")
    try:
        return datetime.strptime(suffix, "%Y_%m").replace(tzinfo=UTC).date()
    except ValueError:
        return None  # a partition an operator attached under another name: not ours to archive


def partition_detach(cursor: CursorWrapper, table: str, name: str, *, lock_timeout_ms: int) -> None:
    """Detach a month; the table stays in the database under its name, still refusing UPDATE and DELETE.

    A plain DETACH takes an ACCESS EXCLUSIVE lock on the parent (CONCURRENTLY is refused while a DEFAULT
    partition exists): the lock timeout makes it give up rather than queue every writer behind a long read.
    """
    cursor.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
    cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
    cursor.execute("SET LOCAL lock_timeout = DEFAULT")
    # The parent's triggers leave with the detach: the archived month stays append-only on its own.
    cursor.execute(
        f"CREATE TRIGGER {name}_append_only BEFORE UPDATE OR DELETE ON {name} "
        "FOR EACH ROW EXECUTE FUNCTION reviews_refuse_change()"
    )


def table_partition(
    cursor: CursorWrapper, spec: HistoryTable, *, columns: str, column_types: str, now: datetime
) -> None:
    """Migrations: the table becomes partitioned by month of created_at, its rows copied month by month.

    Its indexes, constraints and triggers are created afterwards by the migration (the names are free once the
    old table is gone); the identity goes on from the highest id copied.
    """
    old = f"{spec.table}_unpartitioned"
    cursor.execute(f"ALTER TABLE {spec.table} RENAME TO {old}")
    cursor.execute(
        f"CREATE TABLE {spec.table} (id bigint GENERATED BY DEFAULT AS IDENTITY, {column_types}) "
        "PARTITION BY RANGE (created_at)"
    )
    cursor.execute(f"SELECT min(created_at) FROM {old}")  # noqa: S608 - our table names, as are all here
    month = month_start(cursor.fetchone()[0] or now)
    while month < month_start(now):
        partition_create(cursor, spec, month)
        month = month_add(month, 1)
    partitions_ensure(cursor, spec, now=now)
    cursor.execute(f"INSERT INTO {spec.table} ({columns}) SELECT {columns} FROM {old} ORDER BY id")  # noqa: S608
    # CASCADE: foreign keys into the old table go with it (into a partitioned table they cannot reference id).
    cursor.execute(f"DROP TABLE {old} CASCADE")
    identity_continue(cursor, spec.table)
    # The primary key must include the partition key; ids stay unique because one identity hands them out.
    cursor.execute(f"ALTER TABLE {spec.table} ADD PRIMARY KEY (id, created_at)")


def table_unpartition(cursor: CursorWrapper, table: str, *, columns: str, column_types: str) -> None:
    """Migrations, backwards: a plain table again with the attached months' rows (archived ones stay out)."""
    old = f"{table}_partitioned"
    cursor.execute(f"ALTER TABLE {table} RENAME TO {old}")
    cursor.execute(f"ALTER TABLE {old} DROP CONSTRAINT {table}_pkey")
    cursor.execute(
        f"CREATE TABLE {table} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, {column_types})"
    )
    cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {old} ORDER BY id")  # noqa: S608
    cursor.execute(f"DROP TABLE {old}")
    identity_continue(cursor, table)


def identity_continue(cursor: CursorWrapper, table: str) -> None:
    cursor.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(max(id), 0) + 1, false) "  # noqa: S608
        f"FROM {table}"
    )
