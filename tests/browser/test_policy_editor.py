"""The draft editor in the browser (issue 17 item 5): publishing keeps an edit that was not saved yet, the
override asks for its reason by name, and the checks name the outline's placeholders left in."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from policies import services as policy_services
from policies.models import Policy, PolicyVersion
from tests.browser.conftest import Tab, screenshot, user_with_role
from tests.browser.sessions import log_in
from tests.policies.evaluation_helpers import golden_set_small

pytestmark = pytest.mark.browser


@pytest.fixture
def editor(db: None) -> User:
    return user_with_role("pete", Role.POLICY_EDITOR, grants=[])


def test_publishing_a_draft_with_unsaved_edits_publishes_the_text_as_shown(
    tab: Tab, editor: User, policy: Policy
) -> None:
    policy_services.policy_draft_create(policy=policy, author=editor)
    log_in(tab, editor)
    page = tab.page
    page.goto(tab.url("/policies/spam/v2/"))
    tab.ready()
    note = page.locator("#unsaved-note")
    expect(note).to_be_hidden()
    box = page.get_by_label("Policy text (draft)")
    box.press("Control+End")
    box.type("\n- SP3: Fake giveaways that ask for a fee.\n")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Publish")
    screenshot(tab, "policy-draft-unsaved")
    page.get_by_role("button", name="Publish v2").click()  # not saved first
    expect(page).to_have_url(tab.url("/policies/spam/"))
    expect(page.locator(".messages")).to_contain_text("v2 published with your latest edits")
    published = PolicyVersion.objects.get(policy=policy, number=2)
    assert published.status == PolicyVersion.Status.PUBLISHED
    # A browser sends a textarea's lines with CRLF, as "Save draft" stores them.
    assert published.text.replace("\r\n", "\n").endswith("- SP3: Fake giveaways that ask for a fee.\n")
    assert "SP3" in published.rule_ids
    assert AuditEvent.objects.filter(action="policy.draft_edited", actor_label="pete").exists()
    assert tab.csp_violations() == []


def test_an_override_without_a_reason_is_asked_for_one_by_name(
    tab: Tab, editor: User, policy: Policy, active_version: PolicyVersion
) -> None:
    golden_set_small(policy)
    draft = policy_services.policy_draft_create(policy=policy, author=editor)
    policy_services.policy_version_publish(version=draft, author=editor)
    log_in(tab, editor)
    page = tab.page
    page.goto(tab.url("/policies/spam/"))
    tab.expect_error("status of 400")  # the refused form comes back as a 400 page
    page.get_by_role("button", name="Override and activate v2").click()
    alert = page.locator("div.error[role=alert]")
    expect(alert).to_have_text("Not activated: Give a reason to override the activation gate.")
    expect(page.locator(".gate")).to_contain_text("no finished evaluation run on the current golden set")
    screenshot(tab, "policy-override-needs-a-reason")
    assert policy.versions.get(status=PolicyVersion.Status.ACTIVE).number == 1
    page.get_by_label("Override reason (required, audited)").fill("a legal change that cannot wait")
    page.get_by_role("button", name="Override and activate v2").click()
    expect(page.locator(".messages")).to_contain_text("v2 is now active for new cases (gate overridden).")
    event = AuditEvent.objects.get(action="policy.version_activation_overridden")
    assert event.payload["reason"] == "a legal change that cannot wait"


def test_the_checks_name_the_outline_placeholders_left_in(tab: Tab, editor: User) -> None:
    log_in(tab, editor)
    page = tab.page
    page.goto(tab.url("/policies/new"))
    page.get_by_label("Name").fill("Scams")
    page.get_by_role("button", name="Create").click()
    expect(page).to_have_url(tab.url("/policies/scams/v1/"))
    panel = page.locator("#draft-lint")
    expect(panel).to_contain_text('Placeholder text left in: "Term: what it means in this policy."')
    expect(panel).to_contain_text('"An example that breaks R1"')
    tab.ready()
    box = page.get_by_label("Policy text (draft)")
    box.fill(box.input_value().replace("An example that breaks R1", "Send 0.1 BTC and get 0.2 back"))
    expect(panel).not_to_contain_text("breaks R1")  # the live panel, before any save
    expect(panel).to_contain_text('"An example that breaks R2"')
