from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: the case table is the largest and ingestion writes to it all the time.
    atomic = False

    dependencies = [
        ("moderation", "0011_alter_case_policy_version_and_more"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="case",
            index=models.Index(
                condition=models.Q(("state__in", ["queued", "escalated", "appealed", "claimed"])),
                fields=["policy_version", "state"],
                include=["queued_at"],
                name="case_open_idx",
            ),
        ),
    ]
