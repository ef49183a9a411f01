from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: the case table is the largest and written all the time.
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
    ]
