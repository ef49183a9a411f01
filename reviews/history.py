"""History retention: month partitions of the audit log and of decisions, created ahead and archived behind.

Each table is partitioned by month of created_at (config/partitions.py). A daily task creates the coming
months; with HISTORY_RETENTION_MONTHS set, another exports every month older than that to a gzipped JSON-lines
file with a manifest, records `history.partition_archived` in the audit log, and detaches the month: the
table stays in the database under its name for the operator to move to cheaper storage or drop
(docs/deployment.md). A month that is still needed is refused, with the reason; an archived month is no
longer attached, so running it again does nothing twice.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from audit import chain
from audit import services as audit
from audit.models import ArchivedPartition
from config import partitions
from moderation.models import Case
from policies.models import GoldenExample

logger = logging.getLogger(__name__)

ARCHIVED_ACTION = "history.partition_archived"
# pg_advisory_xact_lock key: one archiver at a time (any constant unique in this database).
ARCHIVE_LOCK_KEY = 0x5A6E_A0D2
# How long a detach waits for readers of the table before giving up until the next run.
DETACH_LOCK_TIMEOUT_MS = 5000
OPEN_CASE_STATES = (
    Case.State.PENDING_TRIAGE,
    Case.State.TRIAGING,
    Case.State.QUEUED,
    Case.State.CLAIMED,
    Case.State.ESCALATED,
    Case.State.APPEALED,
)


class ArchiveRefused(Exception):
    """The month may not be archived yet; the message says why."""


@dataclass
class ArchiveResult:
    archived: list[ArchivedPartition] = field(default_factory=list)
    # (partition, why not)
    refused: list[tuple[str, str]] = field(default_factory=list)


def partitions_ensure(*, now: datetime | None = None) -> list[str]:
    """This month's partition and the next ones for every history table; the names it created."""
    now = now or timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        return [
            name
            for spec in partitions.HISTORY_TABLES
            for name in partitions.partitions_ensure(cursor, spec, now=now)
        ]


def history_archive(
    *, retention_months: int, archive_dir: Path, now: datetime | None = None
) -> ArchiveResult:
    """Archive and detach every month older than `retention_months` full months (0: keep everything)."""
    result = ArchiveResult()
    if retention_months <= 0:
        return result
    now = now or timezone.now()
    cutoff = partitions.month_add(partitions.month_start(now), -retention_months)
    for spec in partitions.HISTORY_TABLES:
        with connection.cursor() as cursor:
            due = [
                p
                for p in partitions.partitions_attached(cursor, spec.table)
                if p.month is not None and p.month < cutoff
            ]
        for part in due:
            assert part.month is not None  # filtered above; for the type checker
            try:
                result.archived.append(partition_archive(spec, part.month, archive_dir=archive_dir, now=now))
            except ArchiveRefused as exc:
                result.refused.append((part.name, str(exc)))
                logger.warning("history: %s not archived: %s", part.name, exc)
                # Younger months wait for the older one: the audit chain leaves in order, and an operator
                # reads one reason at a time.
                break
    return result


def partition_archive(
    spec: partitions.HistoryTable, month: date, *, archive_dir: Path, now: datetime
) -> ArchivedPartition:
    """Export one month, record it in the audit log, detach it; ArchiveRefused says why not."""
    name = partitions.partition_name(spec.table, month)
    start, end = partitions.month_bounds(month)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ARCHIVE_LOCK_KEY])
        if name not in {p.name for p in partitions.partitions_attached(cursor, spec.table)}:
            raise ArchiveRefused(f"{name} is not attached (archived already?)")
        _refuse_unless_detachable(cursor, spec, name, month, end=end, now=now)
        manifest = _export(cursor, spec, name, archive_dir=archive_dir, start=start, end=end)
        if spec is partitions.AUDIT_EVENTS:
            _refuse_unless_chain_leaves_whole(cursor, manifest, end=end)
        event = audit.record_about(
            ARCHIVED_ACTION, actor=None, object_type="history.partition", object_id=name, payload=manifest
        )
        archived = ArchivedPartition.objects.create(
            table=spec.table,
            partition=name,
            range_start=start,
            range_end=end,
            rows=manifest["rows"],
            file=manifest["file"],
            sha256=manifest["sha256"],
            first_seq=manifest.get("first_seq"),
            last_seq=manifest.get("last_seq"),
            last_hash=manifest.get("last_hash") or "",
            event_seq=event.seq,
        )
        _manifest_write(archive_dir / f"{name}.manifest.json", {**manifest, "event_seq": event.seq})
        partitions.partition_detach(cursor, spec.table, name, lock_timeout_ms=DETACH_LOCK_TIMEOUT_MS)
    logger.info("history: archived %s (%s rows) to %s", name, manifest["rows"], manifest["file"])
    return archived


def _refuse_unless_detachable(
    cursor: CursorWrapper,
    spec: partitions.HistoryTable,
    name: str,
    month: date,
    *,
    end: datetime,
    now: datetime,
) -> None:
    older = [
        p.name
        for p in partitions.partitions_attached(cursor, spec.table)
        if p.month is not None and p.month < month
    ]
    if older:
        raise ArchiveRefused(f"older months are still attached ({', '.join(older)}): archive them first")
    default = partitions.default_name(spec.table)
    cursor.execute(f"SELECT count(*) FROM {default} WHERE created_at < %s", [end])  # noqa: S608 - our names
    stray = cursor.fetchone()[0]
    if stray:
        raise ArchiveRefused(
            f"{stray} rows of this month or older sit in {default}: move them into their month's partition "
            "first (docs/deployment.md), or they would be left out of the archive"
        )
    if spec is partitions.DECISIONS:
        _refuse_unless_decisions_settled(cursor, name, end=end, now=now)


def _refuse_unless_decisions_settled(
    cursor: CursorWrapper, name: str, *, end: datetime, now: datetime
) -> None:
    appealable_until = end + timedelta(days=settings.HISTORY_APPEAL_WINDOW_DAYS)
    if appealable_until > now:
        raise ArchiveRefused(
            f"its decisions may still be appealed until {appealable_until:%Y-%m-%d} "
            f"(HISTORY_APPEAL_WINDOW_DAYS={settings.HISTORY_APPEAL_WINDOW_DAYS})"
        )
    cases = Case._meta.db_table
    cursor.execute(
        f"""
        SELECT count(*) FROM {cases} c
        WHERE c.state = ANY(%s)
          AND (c.id IN (SELECT case_id FROM {name})
               OR c.appeal_of_id IN (SELECT case_id FROM {name})
               OR c.qa_of_id IN (SELECT case_id FROM {name}))
        """,  # noqa: S608 - our table names
        [list(OPEN_CASE_STATES)],
    )
    open_cases = cursor.fetchone()[0]
    if open_cases:
        raise ArchiveRefused(
            f"{open_cases} open cases (queued, claimed, escalated, appealed, pending triage, or an appeal or "
            "QA review of one) still need its decisions"
        )
    golden = GoldenExample._meta.db_table
    cursor.execute(
        f"SELECT count(*) FROM {golden} WHERE decision_id IN (SELECT id FROM {name})"  # noqa: S608
    )
    cited = cursor.fetchone()[0]
    if cited:
        raise ArchiveRefused(f"{cited} golden examples cite its decisions as their provenance")


def _export(
    cursor: CursorWrapper,
    spec: partitions.HistoryTable,
    name: str,
    *,
    archive_dir: Path,
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    """Every row of the month as a JSON line, gzipped, in order; the manifest of what the file holds."""
    audit_log = spec is partitions.AUDIT_EVENTS
    order = "seq" if audit_log else "id"
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / f"{name}.jsonl.gz"
    partial = path.with_suffix(".partial")
    rows, first, last = 0, None, None
    # A server-side cursor in this transaction: memory stays flat however large the month.
    with connection.chunked_cursor() as rows_cursor, gzip.open(partial, "wt", encoding="utf-8") as out:
        rows_cursor.execute(
            f"SELECT r.{order}, {'r.hash' if audit_log else 'NULL'}, row_to_json(r)::text "  # noqa: S608
            f"FROM {name} r ORDER BY r.{order}"
        )
        while chunk := rows_cursor.fetchmany(5000):
            for key, row_hash, line in chunk:
                out.write(line + "\n")
                first = first or (key, row_hash)
                last = (key, row_hash)
                rows += 1
    os.replace(partial, path)
    manifest: dict[str, Any] = {
        "table": spec.table,
        "partition": name,
        "range_start": start.isoformat(),
        "range_end": end.isoformat(),
        "rows": rows,
        "file": str(path),
        "sha256": _sha256_of(path),
    }
    if audit_log:
        manifest |= {
            "first_seq": first[0] if first else None,
            "first_hash": first[1] if first else None,
            "last_seq": last[0] if last else None,
            "last_hash": last[1] if last else None,
        }
    return manifest


def _refuse_unless_chain_leaves_whole(
    cursor: CursorWrapper, manifest: dict[str, Any], *, end: datetime
) -> None:
    """The month must be the next unbroken stretch of the chain after the anchor, and verify from it."""
    if manifest["rows"] == 0:
        return
    anchor = audit.chain_anchor()
    after_seq, after_hash = (anchor.last_seq, anchor.last_hash) if anchor else (0, chain.GENESIS_HASH)
    first_seq, last_seq = manifest["first_seq"], manifest["last_seq"]
    if first_seq != after_seq + 1 or last_seq - first_seq + 1 != manifest["rows"]:
        raise ArchiveRefused(
            f"its events (seq {first_seq} to {last_seq}, {manifest['rows']} rows) are not the next unbroken "
            f"stretch of the chain after seq {after_seq}"
        )
    cursor.execute(
        "SELECT count(*) FROM reviews_auditevent WHERE seq <= %s AND created_at >= %s", [last_seq, end]
    )
    if cursor.fetchone()[0]:
        raise ArchiveRefused(
            f"events up to seq {last_seq} also sit in younger months: the chain would be split"
        )
    report = audit.chain_verify_range(after_seq=after_seq, after_hash=after_hash, up_to_seq=last_seq)
    if report.broken is not None:
        raise ArchiveRefused(
            f"the chain is broken at seq {report.broken.seq} ({report.broken.problem}): "
            "run manage.py verify_audit_log; a broken stretch is not archived"
        )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _manifest_write(path: Path, manifest: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def history_archive_due() -> ArchiveResult:
    """The retention the settings give (HISTORY_RETENTION_MONTHS, 0: off), into HISTORY_ARCHIVE_DIR."""
    return history_archive(
        retention_months=settings.HISTORY_RETENTION_MONTHS, archive_dir=Path(settings.HISTORY_ARCHIVE_DIR)
    )
