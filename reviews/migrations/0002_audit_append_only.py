from __future__ import annotations

from django.db import migrations

# The audit log is append-only at the database level: no UPDATE, no DELETE, whoever asks.
FORWARD = """
CREATE FUNCTION reviews_auditevent_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER reviews_auditevent_append_only
    BEFORE UPDATE OR DELETE ON reviews_auditevent
    FOR EACH ROW EXECUTE FUNCTION reviews_auditevent_refuse_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS reviews_auditevent_append_only ON reviews_auditevent;
DROP FUNCTION IF EXISTS reviews_auditevent_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("reviews", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
