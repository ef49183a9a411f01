"""manage.py history_archive: export and detach the history months older than the retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from reviews import history


class Command(BaseCommand):
    help = (
        "Export each month of audit events and decisions older than the retention to a gzipped JSON-lines "
        "file with a manifest, audit it, and detach it. Refused months are listed with the reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--retention-months",
            type=int,
            default=settings.HISTORY_RETENTION_MONTHS,
            help="keep this many full months attached (default HISTORY_RETENTION_MONTHS; 0 archives nothing)",
        )
        parser.add_argument("--archive-dir", type=Path, default=Path(settings.HISTORY_ARCHIVE_DIR))

    def handle(self, *args: Any, **options: Any) -> None:
        history.partitions_ensure()
        result = history.history_archive(
            retention_months=options["retention_months"], archive_dir=options["archive_dir"]
        )
        for archived in result.archived:
            self.stdout.write(f"archived {archived.partition}: {archived.rows} rows in {archived.file}")
        for name, reason in result.refused:
            self.stdout.write(f"kept {name}: {reason}")
        if not result.archived and not result.refused:
            self.stdout.write("nothing to archive")
