from __future__ import annotations

from typing import Any

from django.db import migrations

# The audit log and decisions are append-only at the database level: no UPDATE, no DELETE, whoever asks.
APPEND_ONLY_TABLES = ("reviews_auditevent", "reviews_decision")

FUNCTION = """
CREATE FUNCTION reviews_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""
TRIGGER = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION reviews_refuse_change();
"""

ROLES = ("moderator", "senior moderator", "policy editor", "auditor", "admin")


def roles_create(apps: Any, schema_editor: Any) -> None:
    group_model = apps.get_model("auth", "Group")
    for name in ROLES:
        group_model.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("reviews", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS reviews_refuse_change();"),
        *(
            migrations.RunSQL(
                TRIGGER.format(table=table), f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};"
            )
            for table in APPEND_ONLY_TABLES
        ),
        migrations.RunPython(roles_create, migrations.RunPython.noop),
    ]
