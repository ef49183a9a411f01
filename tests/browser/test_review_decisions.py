"""What a decision means and what the moderator sees around it (issue 16): no label chosen for them, rule
names, the context seniors need, a confirmation after each decision, and filters that stay."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from moderation.models import Case, ContentItem
from policies.models import Policy, PolicyVersion
from reviews.models import Decision
from tests.browser.conftest import Tab, screenshot
from tests.conftest import ApiClient

pytestmark = pytest.mark.browser


def waiting(
    source: ApiClient,
    policy: Policy,
    text: str,
    *,
    verdict: str = "violates",
    confidence: str = "high",
    priority: int = 70,
    state: str = Case.State.QUEUED,
    **fields: object,
) -> Case:
    version = policy.versions.get(status=PolicyVersion.Status.ACTIVE)
    item = ContentItem.objects.create(
        source=source.source, external_id=f"d-{ContentItem.objects.count()}", text=text
    )
    return Case.objects.create(
        item=item,
        policy_version=version,
        state=state,
        verdict=verdict,
        confidence=confidence,
        priority=priority,
        route_reason=f"model: {verdict}",
        queued_at=timezone.now() - timedelta(minutes=5),
        **fields,
    )


def test_an_undetermined_case_has_no_label_chosen_and_no_confirm_key(
    tab: Tab, moderator: User, source: ApiClient, policy: Policy
) -> None:
    case = waiting(source, policy, "ambiguous zorblax", verdict="undetermined", confidence="")
    page = tab.page
    tab.login(moderator)
    page.keyboard.press("n")
    expect(page).to_have_url(tab.url(f"/cases/{case.pk}/"))
    tab.ready()
    labels = page.get_by_role("group", name=re.compile("Correct label"))
    expect(labels.get_by_role("radio", checked=True)).to_have_count(0)
    # Nothing to confirm: neither the button nor the key hint.
    expect(page.get_by_role("button", name=re.compile("^Confirm"))).to_have_count(0)
    expect(page.locator(".shortcuts")).not_to_contain_text("confirm")
    # Rule names next to the ids.
    rules = page.get_by_role("group", name=re.compile("Rules that apply"))
    expect(rules).to_contain_text("SP2 Links that disguise their destination")
    screenshot(tab, "case-undetermined")

    # One key does not record a label nobody chose; "violates" asks for a rule.
    tab.expect_error(r"status of 400|Status Error Code 400")
    page.keyboard.press("o")
    expect(page.locator("#decision-form")).to_contain_text("Choose the correct label")
    labels.get_by_label("Violates", exact=True).check()
    page.keyboard.press("o")
    expect(page.locator("#decision-form")).to_contain_text("requires at least one rule")
    assert not Decision.objects.exists()
    rules.get_by_label("SP1").check()
    page.keyboard.press("o")
    expect(page).to_have_url(tab.url("/queue/"))
    decision = Decision.objects.get(case=case)
    assert (decision.action, decision.final_label, decision.rule_ids) == ("decided", "violates", ["SP1"])


def test_a_senior_sees_the_appeal_reason_and_the_decision_under_appeal_at_the_top(
    tab: Tab, source: ApiClient, policy: Policy
) -> None:
    from accounts.roles import Role
    from reviews import services
    from reviews.services import DecisionIn
    from tests.browser.conftest import user_with_role

    moderator = user_with_role("mona", Role.MODERATOR, grants=[policy])
    senior = user_with_role("sena", Role.SENIOR_MODERATOR, grants=[policy])
    original = waiting(source, policy, "zorblax for a friend", verdict="violates")
    assert services.case_claim_next(moderator=moderator) == original
    services.case_decide(
        case=original,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP2"], note="link hides a shop"),
    )
    appeal, _ = services.appeal_open(case=original, reason="I was only joking with a friend", actor=None)
    Case.objects.filter(pk=appeal.pk).update(state=Case.State.APPEALED, queued_at=timezone.now())

    page = tab.page
    tab.login(senior)
    page.keyboard.press("n")
    expect(page).to_have_url(tab.url(f"/cases/{appeal.pk}/"))
    why = page.locator("#why-here")
    expect(why).to_contain_text("Appeal reason: “I was only joking with a friend”")
    expect(why).to_contain_text(
        "Decision under appeal: violates (SP2 (Links that disguise their destination))"
    )
    expect(why).to_contain_text("by mona")
    expect(why).to_contain_text("note: “link hides a shop”")
    # It is the first thing on the page, above the content.
    first_card = page.locator(".case-main > section").first
    expect(first_card).to_have_id("why-here")
    screenshot(tab, "case-appeal")


def test_the_policy_filter_is_kept_after_decide_and_skip_and_each_decision_is_confirmed(
    tab: Tab, moderator: User, source: ApiClient, policy: Policy
) -> None:
    from policies import services as policy_services
    from reviews.models import QueueGrant
    from tests.conftest import POLICY_TEXT

    other = Policy.objects.create(slug="harassment", name="Harassment")
    policy_services.policy_version_create(policy=other, text=POLICY_TEXT, activate=True)
    QueueGrant.objects.create(user=moderator, policy=other)
    # Spam is the top of "all my queues" throughout; the moderator works Harassment.
    for n in range(3):
        waiting(source, policy, f"spam {n}", priority=90)
    first = waiting(source, other, "harassment one", priority=60)
    second = waiting(source, other, "harassment two", priority=50)
    third = waiting(source, other, "harassment three", priority=40)

    page = tab.page
    tab.login(moderator)
    page.get_by_label("Policy").select_option(label="Harassment")
    expect(page).to_have_url(re.compile(r"policy="))
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(tab.url(f"/cases/{first.pk}/"))
    tab.ready()
    page.get_by_role("group", name=re.compile("Rules that apply")).get_by_label("SP2").check()
    page.keyboard.press("c")
    expect(page).to_have_url(tab.url(f"/cases/{second.pk}/"))
    expect(page.get_by_role("status")).to_contain_text(
        f"Case {first.pk} (Harassment): confirmed violates SP2"
    )
    tab.ready()
    page.keyboard.press("s")
    expect(page).to_have_url(tab.url(f"/cases/{third.pk}/"))
    tab.ready()
    page.get_by_role("group", name=re.compile("Rules that apply")).get_by_label("SP1").check()
    page.keyboard.press("c")
    # Harassment is empty but for the skipped case, and the page says so; Spam was never handed out.
    expect(page).to_have_url(re.compile(r"/queue/\?policy="))
    status = page.get_by_role("status")
    expect(status).to_contain_text("Nothing left to review in this queue")
    expect(status).to_contain_text("1 you skipped")
    assert not Case.objects.filter(policy_version__policy=policy, state=Case.State.CLAIMED).exists()
    assert Decision.objects.filter(case__in=[first, third]).count() == 2


def test_two_policies_one_claim_and_one_submit_per_item(tab: Tab, source: ApiClient, policy: Policy) -> None:
    """Issue 16, item 1: the text is read once; one claim and one submit decide every policy."""
    from accounts.roles import Role
    from policies import services as policy_services
    from tests.browser.conftest import user_with_role
    from tests.conftest import POLICY_TEXT

    harassment = Policy.objects.create(slug="harassment", name="Harassment", qa_sample_rate=0)
    policy_services.policy_version_create(
        policy=harassment, text=POLICY_TEXT.replace("SP1", "HA1").replace("SP2", "HA2"), activate=True
    )
    Policy.objects.filter(pk=policy.pk).update(qa_sample_rate=0)
    moderator = user_with_role("mona", Role.MODERATOR, grants=[policy, harassment])
    first = waiting(source, policy, "Triple your savings today", verdict="safe", priority=80)
    Case.objects.create(
        item=first.item,
        policy_version=harassment.versions.get(status=PolicyVersion.Status.ACTIVE),
        state=Case.State.QUEUED,
        verdict="safe",
        confidence="high",
        priority=80,
        queued_at=timezone.now(),
    )
    second = waiting(source, policy, "you are an idiot, buy zorblax", verdict="undetermined", confidence="")
    Case.objects.create(
        item=second.item,
        policy_version=harassment.versions.get(status=PolicyVersion.Status.ACTIVE),
        state=Case.State.QUEUED,
        verdict="violates",
        confidence="medium",
        priority=70,
        queued_at=timezone.now(),
    )
    page = tab.page
    tab.login(moderator)
    queue_rows = page.locator("#queue-table tbody tr")
    expect(queue_rows).to_have_count(2)  # items, not cases
    expect(queue_rows.first.locator(".chip")).to_have_count(2)

    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.keyboard.press("n")
    expect(page).to_have_url(tab.url(f"/cases/{first.pk}/"))
    tab.ready()
    expect(page.locator(".policy-panel")).to_have_count(2)
    expect(page.locator("#content")).to_contain_text("Triple your savings today")
    page.keyboard.press("c")  # both verdicts are the model's: one key confirms all
    expect(page).to_have_url(tab.url(f"/cases/{second.pk}/"))
    assert len(posts) == 2, posts  # one claim, one submit
    assert Decision.objects.filter(case__item=first.item).count() == 2
    screenshot(tab, "item-two-policies")

    tab.ready()
    expect(page.get_by_role("button", name=re.compile("^Confirm all"))).to_have_count(0)
    spam_panel = page.locator(f"#policy-{second.pk}")
    spam_panel.get_by_label("Safe", exact=True).check()
    other = page.locator(".policy-panel").filter(has_text="Harassment")
    other.get_by_label("HA1").check()
    page.keyboard.press("o")
    expect(page).to_have_url(tab.url("/queue/"))
    assert len(posts) == 3, posts
    assert sorted(Decision.objects.filter(case__item=second.item).values_list("action", "final_label")) == [
        ("confirm", "violates"),
        ("decided", "safe"),
    ]
