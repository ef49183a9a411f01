"""Decisions become a table partitioned by month of created_at (docs/architecture.md, invariants).

Foreign keys into decisions (callback deliveries, golden examples) lose their database constraint first: a
partitioned table has no unique index on id alone for them to reference. One final decision per case becomes
a unique index of each month (config/partitions.py). The rows are copied in one transaction: on a large
table, run it in a maintenance window. Reversible while no month has been archived.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

from config import partitions

TABLE = "reviews_decision"
COLUMNS = (
    "id, action, final_label, rule_ids, note, seconds_spent, model_verdict, agrees_with_reviewed, created_at, "
    "case_id, moderator_id"
)
COLUMN_TYPES = """
    action varchar(8) NOT NULL,
    final_label varchar(8) NOT NULL,
    rule_ids varchar(32)[] NOT NULL,
    note text NOT NULL,
    seconds_spent integer NOT NULL CONSTRAINT reviews_decision_seconds_spent_check CHECK (seconds_spent >= 0),
    model_verdict varchar(16) NOT NULL,
    agrees_with_reviewed boolean NULL,
    created_at timestamp with time zone NOT NULL,
    case_id bigint NOT NULL,
    moderator_id integer NOT NULL
"""
AFTER = (
    f"CREATE INDEX reviews_decision_case_id_ba5558bc ON {TABLE} (case_id)",
    f"CREATE INDEX reviews_decision_created_at_a8b4b8b0 ON {TABLE} (created_at)",
    f"CREATE INDEX reviews_decision_moderator_id_430151b7 ON {TABLE} (moderator_id)",
    # Out of a partitioned table, foreign keys work as before.
    f"ALTER TABLE {TABLE} ADD CONSTRAINT reviews_decision_case_id_ba5558bc_fk_moderation_case_id "
    "FOREIGN KEY (case_id) REFERENCES moderation_case (id) DEFERRABLE INITIALLY DEFERRED",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT reviews_decision_moderator_id_430151b7_fk_auth_user_id "
    "FOREIGN KEY (moderator_id) REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED",
    f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
    "FOR EACH ROW EXECUTE FUNCTION reviews_refuse_change()",
)


def partition(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        partitions.table_partition(
            cursor, partitions.DECISIONS, columns=COLUMNS, column_types=COLUMN_TYPES, now=timezone.now()
        )
        for statement in AFTER:
            cursor.execute(statement)


def unpartition(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "DROP INDEX reviews_decision_case_id_ba5558bc, reviews_decision_created_at_a8b4b8b0, "
            "reviews_decision_moderator_id_430151b7"
        )
        cursor.execute(
            f"ALTER TABLE {TABLE} DROP CONSTRAINT reviews_decision_case_id_ba5558bc_fk_moderation_case_id, "
            "DROP CONSTRAINT reviews_decision_moderator_id_430151b7_fk_auth_user_id, "
            "DROP CONSTRAINT reviews_decision_seconds_spent_check"
        )
        partitions.table_unpartition(cursor, TABLE, columns=COLUMNS, column_types=COLUMN_TYPES)
        for statement in AFTER:
            cursor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [
        ("reviews", "0009_decision_hour"),
        ("policies", "0002_golden_decision_no_db_constraint"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="decision", name="decision_one_final_per_case"),
        migrations.AlterField(
            model_name="callbackdelivery",
            name="decision",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="callback_deliveries",
                to="reviews.decision",
            ),
        ),
        migrations.RunPython(partition, unpartition),
    ]
