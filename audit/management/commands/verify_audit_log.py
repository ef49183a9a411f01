"""manage.py verify_audit_log: walk the audit log's hash chain; exit 1 at the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import chain_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain, in order; names the first broken link and exits 1."

    def handle(self, *args: Any, **options: Any) -> None:
        report = chain_verify()
        if report.anchor is not None:
            self.stdout.write(report.archived_note)
        if report.broken is not None:
            broken = report.broken
            raise CommandError(
                f"audit log chain BROKEN at event id={broken.event_id} seq={broken.seq}: {broken.problem}. "
                f"{report.verified} events before it verified.",
                returncode=1,
            )
        self.stdout.write(
            f"audit log chain OK: {report.verified} events verified; "
            f"head seq {report.head_seq}, hash {report.head_hash}"
        )
