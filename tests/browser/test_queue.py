"""The queue page: counts, filters without a reload, the next-case button and the empty state."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from moderation.models import Case, ContentItem
from policies.models import Policy, PolicyVersion
from tests.browser.conftest import Tab, screenshot
from tests.conftest import ApiClient

pytestmark = pytest.mark.browser


def queued(source: ApiClient, policy: Policy, text: str, *, verdict: str, priority: int) -> Case:
    version = policy.versions.get(status=PolicyVersion.Status.ACTIVE)
    item = ContentItem.objects.create(
        source=source.source, external_id=f"q-{ContentItem.objects.count()}", text=text
    )
    return Case.objects.create(
        item=item,
        policy_version=version,
        state=Case.State.QUEUED,
        verdict=verdict,
        confidence="high",
        priority=priority,
        route_reason=f"model: {verdict}",
        queued_at=timezone.now() - timedelta(minutes=5),
    )


def test_the_queue_shows_counts_filters_in_place_and_hands_out_the_top_case(
    tab: Tab, moderator: User, source: ApiClient, policy: Policy
) -> None:
    violating = queued(source, policy, "buy followers now", verdict="violates", priority=80)
    queued(source, policy, "hello friends", verdict="safe", priority=10)
    page = tab.page
    page.clock.install()
    tab.login(moderator)

    counts = page.locator("#queue-counts")
    expect(counts.get_by_role("row", name=re.compile(r"Spam"))).to_have_text(
        re.compile(r"Spam\s*2\s*0\s*0\s*0")
    )
    expect(page.locator("#queue-table tbody tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Next case")).to_be_visible()
    screenshot(tab, "queue")

    # Filtering swaps the table in place (no navigation) and keeps the URL shareable.
    page.evaluate("() => { window.__samePage = true; }")
    page.get_by_label("Verdict").select_option("safe")
    expect(page).to_have_url(re.compile(r"verdict=safe"))
    expect(page.locator("#queue-table tbody tr")).to_have_count(1)
    expect(page.locator("#queue-table")).to_contain_text("hello friends")
    assert page.evaluate("() => window.__samePage") is True

    # The counters poll: another case arrives and shows up without a reload.
    queued(source, policy, "more spam", verdict="violates", priority=70)
    page.clock.run_for(11_000)
    expect(counts.get_by_role("row", name=re.compile(r"Spam"))).to_have_text(
        re.compile(r"Spam\s*3\s*0\s*0\s*0")
    )
    assert page.evaluate("() => window.__samePage") is True

    # Next case takes the top of the queue, whatever the filter shows.
    page.get_by_label("Verdict").select_option("")
    page.keyboard.press("n")
    expect(page).to_have_url(tab.url(f"/cases/{violating.pk}/"))


def test_next_case_on_an_empty_queue_says_there_is_nothing_left(tab: Tab, moderator: User) -> None:
    page = tab.page
    tab.login(moderator)
    expect(page.locator("#queue-table")).to_contain_text("Nothing is waiting here.")
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(tab.url("/queue/"))
    expect(page.get_by_role("status")).to_contain_text("Nothing left to review in your queues.")
    assert not Case.objects.exists()


def test_the_next_case_button_respects_the_policy_filter(
    tab: Tab, moderator: User, source: ApiClient, policy: Policy
) -> None:
    from policies import services as policy_services
    from reviews.models import QueueGrant
    from tests.conftest import POLICY_TEXT

    other = Policy.objects.create(slug="harassment", name="Harassment")
    policy_services.policy_version_create(policy=other, text=POLICY_TEXT, activate=True)
    QueueGrant.objects.create(user=moderator, policy=other)
    queued(source, policy, "spam, top priority", verdict="violates", priority=80)
    wanted = queued(source, other, "harassment, lower priority", verdict="violates", priority=60)
    page = tab.page
    tab.login(moderator)
    page.get_by_label("Policy").select_option(label="Harassment")
    expect(page.locator("#queue-table tbody tr")).to_have_count(1)
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(tab.url(f"/cases/{wanted.pk}/"))
