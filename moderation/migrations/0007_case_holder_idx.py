from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built concurrently: the case table is the largest and ingestion writes to it all the time.
    atomic = False

    dependencies = [
        ("moderation", "0006_content_item_injection_signals"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="case",
            index=models.Index(
                condition=models.Q(("state", "claimed")),
                fields=["lease_owner", "lease_expires_at"],
                name="case_holder_idx",
            ),
        ),
    ]
