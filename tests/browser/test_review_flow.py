"""A moderator's loop, as a person does it: log in, take a case, read the reasoning, decide by keyboard."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from accounts.roles import Role
from inference_worker import services as inference
from inference_worker.runner import EngineConfig
from moderation import services as moderation
from moderation.models import Case, TriageResult
from policies.models import Policy
from reviews import services as reviews
from reviews.models import Decision
from tests.browser.conftest import Tab, TabOpener, screenshot, user_with_role
from tests.conftest import ApiClient

pytestmark = pytest.mark.browser

CASE_URL = re.compile(r"/cases/(\d+)/$")


def triaged_cases(source: ApiClient, config: EngineConfig, *texts: str) -> list[Case]:
    """Ingested through the service and judged by the engine simulator ("zorblax" violates)."""
    ingested = moderation.items_ingest(
        source=source.source,
        items=[moderation.ItemIn(external_id=f"post-{n}", text=text) for n, text in enumerate(texts)],
    )
    case_ids = [case_id for item in ingested for case_id in item.case_ids]
    inference.cases_triage(case_ids=case_ids, config=config)
    cases = list(Case.objects.filter(pk__in=case_ids).order_by("pk"))
    assert [c.state for c in cases] == [Case.State.QUEUED] * len(texts)
    return cases


def test_a_moderator_reads_the_reasoning_and_overturns_by_keyboard(
    tab: Tab, moderator: User, source: ApiClient, engine_config: EngineConfig
) -> None:
    cases = triaged_cases(
        source,
        engine_config,
        "Best zorblax deals, message me now! zorblax zorblax",
        "Cheap zorblax here [[sim:hallucinated_rule]]",
    )
    page = tab.page
    tab.login(moderator)

    expect(page.get_by_role("button", name="Next case")).to_be_visible()
    page.keyboard.press("n")
    expect(page).to_have_url(CASE_URL)
    tab.ready()
    first = Case.objects.get(pk=int(CASE_URL.search(page.url)[1]))  # type: ignore[index]
    second = next(c for c in cases if c.pk != first.pk)
    assert first.lease_owner_id == moderator.pk

    # The content is blurred (the model says it violates) until the moderator reveals it.
    content = page.locator("#content")
    expect(content).to_have_class(re.compile(r"\bblurred\b"))
    screenshot(tab, "case-blurred")
    page.keyboard.press("b")
    expect(content).not_to_have_class(re.compile(r"\bblurred\b"))
    expect(content).to_contain_text(first.item.text)

    # The verdict, and the reasoning in a panel that says it may be wrong.
    expect(page.locator("#verdict .verdict")).to_contain_text("violates")
    reasoning = page.locator("#reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning).to_contain_text("may be wrong")
    result = TriageResult.objects.get(case=first)
    assert result.chain_of_thought
    expect(reasoning.locator("pre.cot")).to_have_text(result.chain_of_thought)
    expect(page.locator("#verdict .rationale")).to_have_text(result.rationale)
    for rule_id in result.rule_ids:
        expect(page.locator(".policy-line.cited")).to_contain_text(rule_id)
    if result.hallucinated_rule_ids:
        expect(page.get_by_text("cited rules this policy does not define")).to_be_visible()
    screenshot(tab, "case")

    page.keyboard.press("r")
    expect(reasoning).to_be_hidden()
    expect(page.locator("[data-shortcut=r]")).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("r")
    expect(reasoning).to_be_visible()

    # A refused decision re-renders the form in place (htmx swaps the 400), nothing is recorded.
    page.keyboard.press("e")
    expect(page.locator("#decision-form")).to_contain_text("Say why you escalate")
    assert tab.path() == f"/cases/{first.pk}/"
    assert not Decision.objects.filter(case=first).exists()
    tab.expect_error(r"status of 400|Status Error Code 400")

    # Overturn: the model said "violates"; the form preselects "safe". htmx follows HX-Redirect.
    expect(page.get_by_label("Safe", exact=True)).to_be_checked()
    page.keyboard.press("o")
    expect(page).to_have_url(tab.url(f"/cases/{second.pk}/"))
    tab.ready()
    decision = Decision.objects.get(case=first)
    assert (decision.action, decision.final_label, decision.moderator_id) == (
        Decision.Action.OVERTURN,
        "safe",
        moderator.pk,
    )
    first.refresh_from_db()
    assert first.state == Case.State.DECIDED

    # The next case is the moderator's now; its model output is on screen.
    expect(page.locator("#content")).to_contain_text(second.item.text)
    expect(page.get_by_role("button", name=re.compile("^Confirm"))).to_be_visible()
    second.refresh_from_db()
    assert (second.state, second.lease_owner_id) == (Case.State.CLAIMED, moderator.pk)
    tab.assert_assets_loaded()
    assert tab.csp_violations() == []


def test_the_decision_form_posts_the_clicked_button_and_confirms(
    tab: Tab, moderator: User, source: ApiClient, engine_config: EngineConfig, policy: Policy
) -> None:
    [case] = triaged_cases(source, engine_config, "zorblax for sale")
    page = tab.page
    tab.login(moderator)
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(tab.url(f"/cases/{case.pk}/"))
    tab.ready()
    page.get_by_role("group", name="Rules that apply").get_by_label("SP1").check()
    page.get_by_label("Note").fill("Obvious spam <b>really</b>")
    page.get_by_role("button", name=re.compile("^Confirm")).click()
    # Nothing left: back on the queue, told so.
    expect(page).to_have_url(tab.url("/queue/"))
    expect(page.get_by_role("status")).to_contain_text("Nothing left to review")
    decision = Decision.objects.get(case=case)
    assert (decision.action, decision.final_label, decision.rule_ids, decision.note) == (
        Decision.Action.CONFIRM,
        "violates",
        ["SP1"],
        "Obvious spam <b>really</b>",
    )


def test_without_javascript_the_forms_still_work_and_errors_come_back_as_a_page(
    open_tab: TabOpener, moderator: User, source: ApiClient, engine_config: EngineConfig
) -> None:
    first, second = triaged_cases(source, engine_config, "zorblax one", "zorblax two")
    tab = open_tab(javascript=False)
    page = tab.page
    tab.login(moderator)
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(CASE_URL)
    current = int(CASE_URL.search(page.url)[1])  # type: ignore[index]
    other = second.pk if current == first.pk else first.pk

    tab.expect_error(r"status of 400")
    page.get_by_role("button", name="Escalate").click()
    # The whole page again (not a bare fragment), with the error next to the note.
    expect(page.get_by_role("heading", name=re.compile(f"Case {current}"))).to_be_visible()
    expect(page.locator("#decision-form")).to_contain_text("Say why you escalate")
    expect(page.locator(".policy-text")).to_be_visible()

    page.get_by_role("button", name="Overturn").click()
    expect(page).to_have_url(tab.url(f"/cases/{other}/"))
    assert Decision.objects.get(case_id=current).action == Decision.Action.OVERTURN


def test_a_moderator_who_lost_the_case_is_told_so_and_moves_on(
    tab: Tab, moderator: User, policy: Policy, source: ApiClient, engine_config: EngineConfig
) -> None:
    [case] = triaged_cases(source, engine_config, "zorblax, slowly reviewed")
    colleague = user_with_role("otto", Role.MODERATOR, grants=[policy])
    page = tab.page
    tab.login(moderator)
    page.get_by_role("button", name="Next case").click()
    expect(page).to_have_url(tab.url(f"/cases/{case.pk}/"))
    tab.ready()
    # The hold runs out while the moderator reads; a colleague takes the case.
    Case.objects.filter(pk=case.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    reviews.leases_expire()
    assert reviews.case_claim_next(moderator=colleague) == case

    tab.expect_error(r"status of 409|Status Error Code 409")
    page.keyboard.press("c")
    expect(page.get_by_role("alert")).to_contain_text("no longer yours")
    expect(page.get_by_role("button", name=re.compile("^Confirm"))).to_have_count(0)
    assert not Decision.objects.exists()
    page.keyboard.press("n")
    expect(page).to_have_url(tab.url("/queue/"))
    expect(page.get_by_role("status")).to_contain_text("Nothing left to review")
