"""Auditors read the audit log in the product: newest first, filtered, paged, each page checked against
its hashes."""

from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from audit import services as audit
from audit.models import AuditEvent
from audit.selectors import AUDIT_PAGE_SIZE
from policies.models import Policy
from tests.audit.test_audit_chain import events_record, with_trigger_disabled
from tests.conftest import ClientFor


def get(client: Client, **params: str | int) -> tuple[int, str]:
    response = client.get("/audit/log/", params)
    return response.status_code, response.content.decode()


def seqs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', html)]


def test_it_pages_through_the_whole_log_newest_first_without_overlap(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    client = client_for(auditor)
    events_record(policy, AUDIT_PAGE_SIZE + 7)
    total = AuditEvent.objects.count()
    status, first = get(client)
    assert status == 200
    assert seqs(first) == list(range(total, total - AUDIT_PAGE_SIZE, -1))
    older = re.search(r'href="\?([^"]+)">Older events', first)
    assert older is not None
    assert older.group(1) == f"before={total - AUDIT_PAGE_SIZE + 1}"
    status, second = get(client, before=total - AUDIT_PAGE_SIZE + 1)
    assert seqs(second) == list(range(total - AUDIT_PAGE_SIZE, 0, -1))
    assert "Older events" not in second
    assert "match their hashes and link to each other" in first


def test_it_filters_by_action_actor_and_object(auditor: User, policy: Policy, client_for: ClientFor) -> None:
    client = client_for(auditor)
    events_record(policy, 3)
    audit.record("policy.special", actor=auditor, obj=policy, payload={})
    _, html = get(client, action="policy.special")
    assert len(seqs(html)) == 1 and "policy.special" in html
    _, html = get(client, actor=auditor.username)
    assert len(seqs(html)) == 2  # the login and policy.special; the test events have no actor
    _, html = get(client, object_type="moderation.policy", object_id=str(policy.pk), action="test.event")
    assert len(seqs(html)) == 3
    _, html = get(client, action="nothing.here")
    assert "No events match these filters." in html


def test_it_filters_by_a_time_range_and_keeps_it_on_older_pages(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    client = client_for(auditor)
    events_record(policy, 3)
    middle = timezone.now()
    events_record(policy, AUDIT_PAGE_SIZE + 2)
    _, html = get(client, action="test.event", until=middle.isoformat())
    assert len(seqs(html)) == 3
    _, html = get(client, action="test.event", since=middle.isoformat())
    assert len(seqs(html)) == AUDIT_PAGE_SIZE
    older = re.search(r'href="\?([^"]+)">Older events', html)
    assert older is not None and "since=" in older.group(1)
    older_page = client.get("/audit/log/?" + older.group(1).replace("&amp;", "&")).content.decode()
    assert len(seqs(older_page)) == 2  # not the 3 events before the range
    status, html = get(client, since=middle.isoformat(), until=middle.isoformat())
    assert status == 400 and "Must be later than the start of the range." in html


def test_an_altered_event_is_called_out_on_the_page(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    event = events_record(policy, 5)[2]
    with_trigger_disabled("UPDATE reviews_auditevent SET payload = '{\"n\": 99}' WHERE id = %s", [event.pk])
    _, html = get(client_for(auditor))
    assert f"Chain broken at event {event.seq}:" in html
    assert "does not match its hash" in html


def test_payloads_are_shown_as_text_never_markup(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    audit.record("test.event", actor=None, obj=policy, payload={"note": "<script>alert(1)</script>"})
    _, html = get(client_for(auditor))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_bad_filters_get_a_400_that_says_why(auditor: User, client_for: ClientFor) -> None:
    status, html = get(client_for(auditor), action="DROP TABLE", before="zero")
    assert status == 400
    assert "Lower-case words joined by dots" in html


def test_moderators_cannot_read_the_log(moderator: User, client_for: ClientFor) -> None:
    status, _ = get(client_for(moderator))
    assert status == 403
