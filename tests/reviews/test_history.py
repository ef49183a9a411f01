"""History retention: months are created ahead, and archived behind (exported, audited, detached) only
when nothing still needs them."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import services as audit
from audit.models import ArchivedPartition, AuditEvent
from config import partitions
from moderation.models import Case
from reviews import history, tasks
from tests.audit.test_partitions import chain_insert
from tests.conftest import CasesFactory

OLD_MONTHS = [date(2025, 1, 1), date(2025, 2, 1), date(2025, 3, 1)]
NOW = datetime(2026, 12, 15, tzinfo=UTC)


def months_create(spec: partitions.HistoryTable, months: list[date]) -> None:
    with connection.cursor() as cursor:
        for month in months:
            partitions.partition_create(cursor, spec, month)


def attached(table: str) -> list[str]:
    with connection.cursor() as cursor:
        return [p.name for p in partitions.partitions_attached(cursor, table)]


def exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        return cursor.fetchone()[0] is not None


@pytest.fixture
def old_chain(db: None) -> list[datetime]:
    """Two events in each of three old months, then the chain goes on today."""
    months_create(partitions.AUDIT_EVENTS, OLD_MONTHS)
    times = [datetime(m.year, m.month, day, tzinfo=UTC) for m in OLD_MONTHS for day in (3, 20)]
    chain_insert(times)
    audit.record_about("test.recent", actor=None, object_type="test", object_id="recent")
    return times


def test_it_creates_the_coming_months_once(db: None) -> None:
    first = partitions.month_add(partitions.month_start(timezone.now()), 60)
    later = datetime(first.year, first.month, 15, tzinfo=UTC)
    created = history.partitions_ensure(now=later)
    expected = [
        partitions.partition_name(spec.table, partitions.month_add(first, n))
        for spec in partitions.HISTORY_TABLES
        for n in range(partitions.MONTHS_AHEAD + 1)
    ]
    assert created == expected
    assert all(exists(name) for name in expected)
    assert history.partitions_ensure(now=later) == []
    tasks.history_partitions_ensure()  # the beat task: this month's are there since the migration
    assert history.partitions_ensure() == []


def test_it_archives_old_months_exports_audits_detaches_and_the_chain_verifies_from_the_anchor(
    old_chain: list[datetime], tmp_path: Path
) -> None:
    result = history.history_archive(retention_months=6, archive_dir=tmp_path, now=NOW)

    assert result.refused == []
    names = [partitions.partition_name("reviews_auditevent", m) for m in OLD_MONTHS]
    assert [a.partition for a in result.archived] == names
    for month_index, archived in enumerate(result.archived):
        file = Path(archived.file)
        with gzip.open(file, "rt") as f:
            lines = [json.loads(line) for line in f]
        # Exactly that month's events, in chain order.
        assert [row["seq"] for row in lines] == [2 * month_index + 1, 2 * month_index + 2]
        assert archived.rows == 2
        assert archived.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
        manifest = json.loads((tmp_path / f"{archived.partition}.manifest.json").read_text())
        assert manifest["sha256"] == archived.sha256
        assert (manifest["first_seq"], manifest["last_seq"]) == (2 * month_index + 1, 2 * month_index + 2)
        assert manifest["last_hash"] == lines[-1]["hash"] == archived.last_hash
        event = AuditEvent.objects.get(action=history.ARCHIVED_ACTION, object_id=archived.partition)
        assert event.seq == manifest["event_seq"] == archived.event_seq
        assert event.payload["sha256"] == archived.sha256
        # Detached, but still in the database under its name, and still append-only.
        assert archived.partition not in attached("reviews_auditevent")
        assert exists(archived.partition)
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as c,
        ):
            c.execute(f"DELETE FROM {archived.partition}")  # noqa: S608 - a test's own table name

    assert AuditEvent.objects.filter(seq__lte=6).count() == 0
    report = audit.chain_verify()
    assert report.broken is None
    assert report.verified == 1 + 3  # the recent event and the three archive events
    assert "events before seq 7 were archived" in report.archived_note
    assert result.archived[-1].file in report.archived_note
    assert result.archived[-1].sha256 in report.archived_note

    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    said = out.getvalue()
    assert f"events before seq 7 were archived (the last of them in {result.archived[-1].file}" in said
    assert "audit log chain OK: 4 events verified" in said

    # Twice: nothing happens twice.
    again = history.history_archive(retention_months=6, archive_dir=tmp_path, now=NOW)
    assert again.archived == []
    assert again.refused == []
    assert ArchivedPartition.objects.count() == 3
    assert AuditEvent.objects.filter(action=history.ARCHIVED_ACTION).count() == 3


def test_it_still_detects_a_tampered_event_after_archiving(old_chain: list[datetime], tmp_path: Path) -> None:
    history.history_archive(retention_months=6, archive_dir=tmp_path, now=NOW)
    recent = AuditEvent.objects.get(action="test.recent")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE reviews_auditevent DISABLE TRIGGER reviews_auditevent_append_only")
        cursor.execute("UPDATE reviews_auditevent SET object_id = 'forged' WHERE id = %s", [recent.pk])
        cursor.execute("ALTER TABLE reviews_auditevent ENABLE TRIGGER reviews_auditevent_append_only")
    report = audit.chain_verify()
    assert report.broken is not None
    assert report.broken.seq == recent.seq
    assert "content hash differs" in report.broken.problem


def test_it_keeps_everything_while_the_retention_is_off(old_chain: list[datetime], tmp_path: Path) -> None:
    assert history.history_archive(retention_months=0, archive_dir=tmp_path, now=NOW).archived == []
    tasks.history_archive()  # the beat task, with HISTORY_RETENTION_MONTHS at its default 0
    assert ArchivedPartition.objects.count() == 0
    assert all(
        partitions.partition_name("reviews_auditevent", m) in attached("reviews_auditevent")
        for m in OLD_MONTHS
    )


def test_it_refuses_to_archive_a_broken_stretch_of_the_chain(
    old_chain: list[datetime], tmp_path: Path
) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE reviews_auditevent DISABLE TRIGGER reviews_auditevent_append_only")
        cursor.execute("UPDATE reviews_auditevent SET action = 'forged' WHERE seq = 4")
        cursor.execute("ALTER TABLE reviews_auditevent ENABLE TRIGGER reviews_auditevent_append_only")
    result = history.history_archive(retention_months=6, archive_dir=tmp_path, now=NOW)
    assert [a.partition for a in result.archived] == ["reviews_auditevent_p2025_01"]
    [(name, reason)] = result.refused
    assert name == "reviews_auditevent_p2025_02"
    assert "chain is broken at seq 4" in reason
    assert "reviews_auditevent_p2025_02" in attached("reviews_auditevent")


def decision_insert(case: Case, moderator: User, at: datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO reviews_decision (action, final_label, rule_ids, note, seconds_spent, "
            "model_verdict, created_at, case_id, moderator_id) "
            "VALUES ('escalate', '', '{}', '', 0, '', %s, %s, %s)",
            [at, case.pk, moderator.pk],
        )


def decision_partition_of(case: Case) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM reviews_decision WHERE case_id = %s", [case.pk])
        return cursor.fetchone()[0]


def test_it_refuses_to_archive_a_month_of_decisions_with_an_open_case(
    queued_cases: CasesFactory, moderator: User, tmp_path: Path
) -> None:
    month = date(2025, 1, 1)
    months_create(partitions.DECISIONS, [month])
    [case] = queued_cases(state=Case.State.ESCALATED)
    decision_insert(case, moderator, datetime(2025, 1, 10, tzinfo=UTC))
    assert decision_partition_of(case) == "reviews_decision_p2025_01"

    with pytest.raises(history.ArchiveRefused, match="1 open cases"):
        history.partition_archive(partitions.DECISIONS, month, archive_dir=tmp_path, now=NOW)
    with pytest.raises(history.ArchiveRefused, match="may still be appealed until 2025-08-03"):
        history.partition_archive(
            partitions.DECISIONS, month, archive_dir=tmp_path, now=datetime(2025, 3, 1, tzinfo=UTC)
        )
    assert "reviews_decision_p2025_01" in attached("reviews_decision")
    assert not AuditEvent.objects.filter(action=history.ARCHIVED_ACTION).exists()

    Case.objects.filter(pk=case.pk).update(state=Case.State.DECIDED)
    archived = history.partition_archive(partitions.DECISIONS, month, archive_dir=tmp_path, now=NOW)
    assert archived.rows == 1
    assert "reviews_decision_p2025_01" not in attached("reviews_decision")
    assert AuditEvent.objects.get(action=history.ARCHIVED_ACTION).payload["partition"] == archived.partition
    assert audit.chain_verify().broken is None


def test_it_writes_a_decision_to_its_months_partition(queued_cases: CasesFactory, moderator: User) -> None:
    [case] = queued_cases()
    decision_insert(case, moderator, timezone.now())
    assert decision_partition_of(case) == partitions.partition_name(
        "reviews_decision", partitions.month_start(timezone.now())
    )
