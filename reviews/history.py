"""History tables partitioned by month: the coming months are created ahead (config/partitions.py).

A daily task creates this month's partition and the next ones, so rows land in their month rather than in the
DEFAULT partition.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from config import partitions


def partitions_ensure(*, now: datetime | None = None) -> list[str]:
    """This month's partition and the next ones for every history table; the names it created."""
    now = now or timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        return [
            name
            for spec in partitions.HISTORY_TABLES
            for name in partitions.partitions_ensure(cursor, spec, now=now)
        ]
