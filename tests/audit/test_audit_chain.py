"""The audit log is an append-only hash chain that verify_audit_log checks link by link."""

from __future__ import annotations

import itertools
import threading
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import Client

from audit import chain
from audit import services as audit
from audit.models import AuditEvent
from policies.models import Policy


def events_record(policy: Policy, count: int) -> list[AuditEvent]:
    return [
        audit.record("test.event", actor=None, obj=policy, payload={"n": n, "text": 'é\n"q"'})
        for n in range(count)
    ]


def with_trigger_disabled(sql: str, params: list[str | int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE reviews_auditevent DISABLE TRIGGER reviews_auditevent_append_only")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE reviews_auditevent ENABLE TRIGGER reviews_auditevent_append_only")


def verify() -> str:
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    return out.getvalue()


def test_it_refuses_to_update_an_audit_event(policy: Policy) -> None:
    event = events_record(policy, 1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="test.rewritten")
    assert AuditEvent.objects.get(pk=event.pk).action == "test.event"


def test_it_refuses_to_delete_an_audit_event(policy: Policy) -> None:
    event = events_record(policy, 1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_it_links_every_event_to_the_one_before(policy: Policy, admin: User) -> None:
    events_record(policy, 2)
    audit.record_many("test.batch", actor=admin, objects=[(policy, {"i": i}) for i in range(3)])
    stored = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert stored[0].prev_hash == chain.GENESIS_HASH
    for before, after in itertools.pairwise(stored):
        assert after.prev_hash == before.hash
    report = audit.chain_verify()
    assert report.broken is None
    assert report.verified == len(stored)
    assert f"{len(stored)} events verified" in verify()


def test_it_hashes_the_stored_row_not_just_the_written_object(policy: Policy) -> None:
    written = events_record(policy, 1)[0]
    stored = AuditEvent.objects.get(pk=written.pk)
    assert stored.created_at == written.created_at
    assert stored.hash == written.hash


def test_verify_names_an_event_whose_content_was_altered(policy: Policy) -> None:
    events = events_record(policy, 4)
    with_trigger_disabled(
        "UPDATE reviews_auditevent SET payload = '{\"n\": 99}'::jsonb WHERE id = %s", [events[2].pk]
    )
    with pytest.raises(CommandError) as raised:
        verify()
    message = str(raised.value)
    assert f"id={events[2].pk} seq={events[2].seq}" in message
    assert "content hash differs" in message
    assert f"{events[2].seq - 1} events before it verified" in message
    assert raised.value.returncode == 1


def test_verify_names_the_link_after_a_removed_event(policy: Policy) -> None:
    events = events_record(policy, 4)
    with_trigger_disabled("DELETE FROM reviews_auditevent WHERE id = %s", [events[1].pk])
    with pytest.raises(CommandError) as raised:
        verify()
    assert f"id={events[2].pk} seq={events[2].seq}" in str(raised.value)
    assert "sequence gap" in str(raised.value)


def test_verify_names_a_rewired_prev_link(policy: Policy) -> None:
    events = events_record(policy, 3)
    with_trigger_disabled(
        "UPDATE reviews_auditevent SET prev_hash = %s WHERE id = %s", ["f" * 64, events[1].pk]
    )
    with pytest.raises(CommandError) as raised:
        verify()
    assert f"id={events[1].pk} seq={events[1].seq}" in str(raised.value)
    assert "prev link differs" in str(raised.value)


def test_verify_passes_on_an_empty_log(db: None) -> None:
    assert "0 events verified" in verify()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_unbroken_chain(policy: Policy) -> None:
    writers, transactions_each = 6, 15
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(worker: int) -> None:
        try:
            start.wait()
            for n in range(transactions_each):
                with transaction.atomic():
                    audit.record("test.single", actor=None, obj=policy, payload={"w": worker, "n": n})
                    audit.record_many(
                        "test.batch",
                        actor=None,
                        objects=[(policy, {"w": worker, "n": n, "i": i}) for i in range(3)],
                    )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    expected = writers * transactions_each * 4
    report = audit.chain_verify()
    assert report.broken is None
    assert report.verified == AuditEvent.objects.count()
    assert AuditEvent.objects.filter(action__startswith="test.").count() == expected
    # Each transaction's events stay together in the chain: the lock is held until commit.
    order = list(
        AuditEvent.objects.filter(action__startswith="test.")
        .order_by("seq")
        .values_list("payload", flat=True)
    )
    for start_at in range(0, expected, 4):
        group = {(p["w"], p["n"]) for p in order[start_at : start_at + 4]}
        assert len(group) == 1


def test_logins_and_failed_logins_join_the_chain(auditor: User) -> None:
    auditor.set_password("correct horse battery")
    auditor.save()
    client = Client()
    assert client.login(username=auditor.username, password="correct horse battery")
    assert not Client().login(username="mallory", password="guess")
    login = AuditEvent.objects.get(action="user.login")
    failed = AuditEvent.objects.get(action="user.login_failed")
    assert login.actor_label == auditor.username
    assert (failed.actor_label, failed.object_id, failed.payload) == (
        "anonymous",
        "mallory",
        {"username": "mallory"},
    )
    assert "guess" not in str(failed.payload)
    assert failed.prev_hash == login.hash
    assert audit.chain_verify().broken is None
