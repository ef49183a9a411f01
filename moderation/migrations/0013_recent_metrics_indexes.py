from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: cases and triage results are the largest tables, and written all the time.
    atomic = False

    dependencies = [
        ("moderation", "0012_case_open_idx"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="case",
            index=models.Index(
                condition=models.Q(("state__in", ["auto_cleared", "auto_actioned"])),
                fields=["updated_at"],
                name="case_auto_recent_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="triageresult",
            index=models.Index(
                condition=models.Q(
                    ("error", ""), ("latency_ms__isnull", False), models.Q(("tier", "funnel"), _negated=True)
                ),
                fields=["created_at"],
                include=("latency_ms", "case"),
                name="triage_latency_recent_idx",
            ),
        ),
    ]
