"""Risk first (issue 16, item 2): within a priority the highest p(violation) is claimed and listed first."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

from inference_worker.outcomes import case_risk
from reviews import selectors, services
from tests.conftest import CasesFactory, ClientFor


def test_a_verdict_outranks_the_funnel_and_confidence_moves_the_risk() -> None:
    assert case_risk("violates", "high", 0.1) == 0.95
    assert case_risk("violates", "low", None) < case_risk("violates", "high", None)
    assert case_risk("safe", "high", 0.9) == 0.05 < case_risk("safe", "low", None)
    assert case_risk("undetermined", "", 0.42) == 0.42
    assert case_risk("", "", None) == 0.5


def test_the_riskiest_case_of_a_priority_comes_first_and_pages_follow_the_order(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    old = timezone.now() - timedelta(hours=1)
    [urgent] = queued_cases(priority=90, risk=0.1)
    low = queued_cases(3, priority=50, risk=0.2, queued_at=old)
    high = queued_cases(3, priority=50, risk=0.9)
    [middle] = queued_cases(priority=50, risk=0.6, queued_at=old)
    expected = [urgent.pk, *[c.pk for c in high], middle.pk, *[c.pk for c in low]]

    cursor, seen = "", []
    while True:
        page = selectors.queue_page(moderator, selectors.QueueFilters(), cursor=cursor, size=3)
        seen += [c.pk for c in page.cases]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == expected
    assert services.case_claim_next(moderator=moderator) == urgent
    html = client_for(moderator).get("/queue/").content.decode()
    assert "0.90" in html  # the score is a column


@override_settings(SAFEGUARD_QUEUE_ORDER="oldest")
def test_the_queue_setting_keeps_oldest_first(moderator: User, queued_cases: CasesFactory) -> None:
    [newer] = queued_cases(priority=50, risk=0.9)
    [older] = queued_cases(priority=50, risk=0.1, queued_at=timezone.now() - timedelta(hours=1))
    page = selectors.queue_page(moderator, selectors.QueueFilters())
    assert [c.pk for c in page.cases] == [older.pk, newer.pk]
    assert services.case_claim_next(moderator=moderator) == older


def test_it_refuses_a_risk_outside_0_to_1(moderator: User, client_for: ClientFor) -> None:
    response = client_for(moderator).get("/queue/", {"after": "50_1.5_1700000000.0_1"})
    assert response.status_code == 400
