"""Turn the audit log into a hash chain: seq, prev_hash, hash; backfill the chain for existing events.

The append-only trigger from 0002 refuses the backfill's UPDATEs, so it is disabled for the backfill and
enabled again within this migration's transaction.
"""

from __future__ import annotations

import json
from typing import Any

import django.utils.timezone
from django.db import migrations, models

from audit import chain

TABLE = "reviews_auditevent"
TRIGGER = f"{TABLE}_append_only"
BATCH = 5000


def chain_backfill(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    seq, prev_hash = 0, chain.GENESIS_HASH
    reader = connection.chunked_cursor()
    reader.execute(
        f"SELECT id, created_at, actor_kind, actor_id, actor_label, action, object_type, object_id, payload "
        f"FROM {TABLE} ORDER BY created_at, id"
    )
    with connection.cursor() as writer:
        while rows := reader.fetchmany(BATCH):
            updates = []
            for event_id, created_at, kind, actor_id, label, action, otype, oid, payload in rows:
                seq += 1
                digest = chain.event_hash(
                    seq=seq,
                    created_at=created_at,
                    actor_kind=kind,
                    actor_id=actor_id,
                    actor_label=label,
                    action=action,
                    object_type=otype,
                    object_id=oid,
                    payload=json.loads(payload) if isinstance(payload, str) else payload,
                    prev_hash=prev_hash,
                )
                updates.append((seq, prev_hash, digest, event_id))
                prev_hash = digest
            writer.executemany(
                f"UPDATE {TABLE} SET seq = %s, prev_hash = %s, hash = %s WHERE id = %s", updates
            )
    reader.close()


class Migration(migrations.Migration):
    dependencies = [("reviews", "0003_golden_curation_and_evaluation_runs")]

    operations = [
        migrations.AddField(model_name="auditevent", name="seq", field=models.BigIntegerField(null=True)),
        migrations.AddField(
            model_name="auditevent",
            name="prev_hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="hash",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="created_at",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.RunSQL(
            f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER};",
            f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER};",
        ),
        migrations.RunPython(chain_backfill, migrations.RunPython.noop),
        migrations.RunSQL(
            f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER};",
            f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER};",
        ),
        migrations.AlterField(model_name="auditevent", name="seq", field=models.BigIntegerField(unique=True)),
        migrations.AlterModelOptions(
            name="decision",
            options={
                "permissions": [
                    ("export_reasoning", "Can export the model's chain of thought with decisions")
                ]
            },
        ),
    ]
