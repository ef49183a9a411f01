"""The audit log becomes a table partitioned by month of created_at (docs/architecture.md, invariants).

The rows are copied into the new table (one month per partition, plus a DEFAULT one), in one transaction:
on a large log this holds the chain for as long as the copy takes, so run it in a maintenance window.
Reversible while no month has been archived (a detached month is not folded back).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.utils import timezone

from config import partitions

TABLE = "reviews_auditevent"
SEQ_UNIQUE = "reviews_auditevent_seq_3f1f1fdb_uniq"
COLUMNS = (
    "id, created_at, actor_kind, actor_id, actor_label, action, object_type, object_id, payload, seq, "
    "prev_hash, hash"
)
COLUMN_TYPES = """
    created_at timestamp with time zone NOT NULL,
    actor_kind varchar(8) NOT NULL,
    actor_id varchar(64) NOT NULL,
    actor_label varchar(200) NOT NULL,
    action varchar(64) NOT NULL,
    object_type varchar(64) NOT NULL,
    object_id varchar(64) NOT NULL,
    payload jsonb NOT NULL,
    seq bigint NOT NULL,
    prev_hash varchar(64) NOT NULL,
    hash varchar(64) NOT NULL
"""
INDEXES = (
    f"CREATE INDEX audit_object_idx ON {TABLE} (object_type, object_id)",
    f"CREATE INDEX audit_action_idx ON {TABLE} (action, created_at)",
    f"CREATE INDEX reviews_auditevent_created_at_eb688ff5 ON {TABLE} (created_at)",
)
TRIGGER = (
    f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
    "FOR EACH ROW EXECUTE FUNCTION reviews_refuse_change()"
)


def partition(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        partitions.table_partition(
            cursor, partitions.AUDIT_EVENTS, columns=COLUMNS, column_types=COLUMN_TYPES, now=timezone.now()
        )
        for statement in (*INDEXES, TRIGGER):
            cursor.execute(statement)


def unpartition(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        # Index names are per schema: the partitioned table's go first.
        cursor.execute("DROP INDEX audit_object_idx, audit_action_idx, reviews_auditevent_created_at_eb688ff5")
        partitions.table_unpartition(
            cursor, TABLE, columns=COLUMNS, column_types=f"{COLUMN_TYPES}, CONSTRAINT {SEQ_UNIQUE} UNIQUE (seq)"
        )
        for statement in (*INDEXES, TRIGGER):
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial"), ("reviews", "0008_remove_apitoken_user_delete_auditevent_and_more")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(partition, unpartition)],
            # seq is unique because appends are serialised, and per partition by an index of each month.
            state_operations=[
                migrations.AlterField(model_name="auditevent", name="seq", field=models.BigIntegerField()),
            ],
        ),
    ]
