"""The queue page: filters, keyset pagination in claim order, and the htmx table with out-of-band counts."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from moderation.models import Case
from policies import services as policy_services
from policies.models import Policy
from reviews import selectors
from reviews.models import QueueGrant
from tests.conftest import POLICY_TEXT, ApiClient, CasesFactory, ClientFor
from tests.reviews.helpers import case_ids_in, cases_create, table_rows

NEXT_PAGE = re.compile(r'href="\?([^"]*after=[^"]+)"')


def claim_order(cases: list[Case]) -> list[int]:
    fresh = Case.objects.filter(pk__in=[c.pk for c in cases])
    return [c.pk for c in sorted(fresh, key=lambda c: (-c.priority, c.queued_at, c.pk))]


@pytest.fixture
def second_policy(policy: Policy, source: ApiClient, moderator: User) -> Policy:
    other = Policy.objects.create(slug="harassment", name="Harassment")
    policy_services.policy_version_create(policy=other, text=POLICY_TEXT, activate=True)
    source.source.policies.add(other)
    QueueGrant.objects.create(user=moderator, policy=other)
    return other


def test_it_lists_waiting_cases_in_claim_order(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    now = timezone.now()
    old_low = queued_cases(priority=10, queued_at=now - timedelta(hours=2))
    new_high = queued_cases(priority=80, queued_at=now)
    old_high = queued_cases(priority=80, queued_at=now - timedelta(hours=1))
    queued_cases(state=Case.State.CLAIMED)
    queued_cases(state=Case.State.DECIDED)
    queued_cases(state=Case.State.PENDING_TRIAGE)
    ids = case_ids_in(client_for(moderator).get("/queue/").content)
    assert ids == [old_high[0].pk, new_high[0].pk, old_low[0].pk]


def test_it_filters_the_queue(
    moderator: User,
    senior_moderator: User,
    queued_cases: CasesFactory,
    second_policy: Policy,
    source: ApiClient,
    client_for: ClientFor,
) -> None:
    now = timezone.now()
    [violation] = queued_cases(verdict="violates", confidence="high", priority=80)
    [unsure] = queued_cases(verdict="safe", confidence="low", priority=40)
    [undetermined] = queued_cases(verdict="undetermined", confidence="", priority=75)
    [old] = queued_cases(
        verdict="violates", confidence="medium", priority=70, queued_at=now - timedelta(hours=3)
    )
    [escalated] = queued_cases(state=Case.State.ESCALATED, needs_senior=True, priority=65)
    [decided] = queued_cases(state=Case.State.DECIDED)
    [appeal] = queued_cases(state=Case.State.APPEALED, appeal_of=decided, priority=90)
    [harassment] = cases_create(second_policy, source.source, verdict="violates", priority=60)
    client = client_for(moderator)

    def shown(query: str) -> set[int]:
        response = client.get(f"/queue/?{query}")
        assert response.status_code == 200
        return set(case_ids_in(response.content))

    spam = {violation.pk, unsure.pk, undetermined.pk, old.pk, escalated.pk, appeal.pk}
    assert shown("") == spam | {harassment.pk}
    assert shown(f"policy={second_policy.pk}") == {harassment.pk}
    assert shown("verdict=undetermined") == {undetermined.pk}
    assert shown("verdict=violates") >= {violation.pk, old.pk, harassment.pk}
    assert unsure.pk not in shown("verdict=violates")
    assert shown("confidence=low") == {unsure.pk}
    assert shown("older_than_minutes=60") == {old.pk}
    assert shown("escalated=on") == {escalated.pk}
    assert shown("appeals=on") == {appeal.pk}
    assert shown(f"policy={second_policy.pk}&verdict=safe") == set()


def test_it_scopes_the_policy_filter_to_granted_queues(
    moderator: User, queued_cases: CasesFactory, source: ApiClient, client_for: ClientFor
) -> None:
    secret = Policy.objects.create(slug="secret", name="Secret")
    policy_services.policy_version_create(policy=secret, text=POLICY_TEXT, activate=True)
    [hidden] = cases_create(secret, source.source)
    [mine] = queued_cases()
    ids = case_ids_in(client_for(moderator).get(f"/queue/?policy={secret.pk}").content)
    assert hidden.pk not in ids and ids == [mine.pk]


def test_it_pages_through_the_queue_without_duplicates_or_gaps(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    now = timezone.now()
    cases: list[Case] = []
    # Ties on priority and on queued_at (a triage batch shares one timestamp) are common.
    for priority in (80, 70, 40):
        cases += queued_cases(30, priority=priority, queued_at=now - timedelta(minutes=5))
        cases += queued_cases(15, priority=priority, queued_at=now - timedelta(minutes=1, microseconds=1))
    cases += queued_cases(7, priority=-5, queued_at=now)
    client = client_for(moderator)

    seen: list[int] = []
    url = "/queue/?verdict=violates"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page_ids = case_ids_in(response.content)
        assert len(page_ids) <= selectors.QUEUE_PAGE_SIZE
        seen += page_ids
        pages += 1
        link = NEXT_PAGE.search(response.content.decode())
        url = f"/queue/?{link.group(1).replace('&amp;', '&')}" if link else ""
        if url:
            assert "verdict=violates" in url  # the filters travel with the cursor
        assert pages < 10
    assert pages == 3
    assert seen == claim_order(cases)


def test_it_ignores_a_malformed_cursor(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    cases = queued_cases(3)
    ids = case_ids_in(client_for(moderator).get("/queue/?after=not-a-cursor").content)
    assert ids == claim_order(cases)


def test_the_selector_pages_in_small_steps(moderator: User, queued_cases: CasesFactory) -> None:
    now = timezone.now()
    cases = queued_cases(9, priority=50, queued_at=now) + queued_cases(4, priority=60, queued_at=now)
    cursor, seen = "", []
    while True:
        page = selectors.queue_page(moderator, selectors.QueueFilters(), cursor=cursor, size=4)
        seen += [c.pk for c in page.cases]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == claim_order(cases)


def test_an_htmx_request_gets_the_table_and_the_counts_out_of_band(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(verdict="safe", confidence="low")
    queued_cases(2, verdict="violates")
    queued_cases(state=Case.State.ESCALATED, needs_senior=True)
    response = client_for(moderator).get("/queue/?verdict=safe", headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'class="filters"' not in html
    assert html.lstrip().startswith('<section id="queue-table"')
    assert case_ids_in(html) == [case.pk]
    counts = html[html.index('<table id="queue-counts"') :]
    assert 'hx-swap-oob="true"' in counts.split(">", 1)[0]
    assert ["Spam", "3", "1", "0", "0"] in table_rows(counts)


def test_the_counts_endpoint_reports_per_queue(
    moderator: User, other_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    queued_cases(2)
    queued_cases(state=Case.State.APPEALED, appeal_of=queued_cases(state=Case.State.DECIDED)[0])
    queued_cases(state=Case.State.CLAIMED, lease_owner=other_moderator)
    html = client_for(moderator).get("/queue/counts").content.decode()
    assert ["Spam", "2", "0", "1", "1"] in table_rows(html)


def test_it_escapes_untrusted_content(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(text='<script>alert("x")</script><img src=x onerror=alert(1)>')
    client = client_for(moderator)
    for url in ("/queue/", f"/cases/{case.pk}/"):
        html = client.get(url).content
        assert b"<script>alert" not in html and b"<img src=x" not in html
        assert b"&lt;script&gt;alert" in html


@pytest.mark.parametrize(
    "cursor",
    [
        "1_99999999999999999999.0_1",  # year far past 9999: OverflowError (500) before issue 14
        "1_1700000000.0_99999999999999999999",  # an id past bigint
        "99999_1700000000.0_1",  # a priority past smallint
        "1_1700000000.0_" + "9" * 5000,  # past int()'s digit limit
    ],
)
def test_it_refuses_an_out_of_range_cursor_with_400(
    moderator: User, queued_cases: CasesFactory, cursor: str, client_for: ClientFor
) -> None:
    queued_cases(1)

    response = client_for(moderator).get("/queue/", {"after": cursor})

    assert response.status_code == 400
    assert b"out of range" in response.content
