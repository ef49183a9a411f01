"""A policy editor sets up a new policy in the browser (outline draft, settings, a linked source) and cancels
an evaluation run while a worker is judging it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker.testing.engine_simulator import EngineSimulator
from policies.models import EvaluationResult, EvaluationRun, Policy, PolicyVersion
from tests.browser.conftest import PASSWORD, Tab, screenshot, user_with_role
from tests.browser.test_policy_flow import RUN_URL, run_in_a_worker_thread
from tests.conftest import source_api_client
from tests.policies.evaluation_helpers import golden_accepted

pytestmark = pytest.mark.browser


def log_in_as_policy_editor(tab: Tab) -> None:
    user_with_role("pete", Role.POLICY_EDITOR, grants=[])
    tab.page.goto(tab.url("/"))
    tab.page.get_by_label("Username").fill("pete")
    tab.page.get_by_label("Password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Log in").click()
    expect(tab.page).to_have_url(tab.url("/policies/"))


def test_a_policy_editor_creates_a_policy_and_links_a_source(tab: Tab, policy: Policy) -> None:
    source_api_client("acme", [policy])
    log_in_as_policy_editor(tab)
    page = tab.page
    page.get_by_role("link", name="New policy").click()
    page.get_by_label("Name").fill("Threats")
    expect(page.get_by_label("First draft")).to_have_value("outline")
    page.get_by_role("button", name="Create policy").click()
    expect(page).to_have_url(tab.url("/policies/threats/v1/"))
    expect(page.locator(".messages")).to_contain_text("Policy Threats created with draft v1.")
    expect(page.locator("#draft-lint")).to_contain_text("R2")
    outline = re.compile(r"^# Threats\n\n## Instructions")
    expect(page.get_by_label("Policy text (draft)")).to_have_value(outline)

    page.goto(tab.url("/policies/threats/"))
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Acme").check()
    page.get_by_label("Activation tolerance").fill("0.05")
    screenshot(tab, "policy-settings")
    page.get_by_role("button", name="Save settings").click()
    expect(page).to_have_url(tab.url("/policies/threats/"))
    expect(page.locator(".messages")).to_contain_text("Saved: activation tolerance, sources.")
    expect(page.locator("main")).to_contain_text("sources: Acme")
    threats = Policy.objects.get(slug="threats")
    assert threats.activation_tolerance == 0.05
    assert threats.versions.get().status == PolicyVersion.Status.DRAFT
    assert list(threats.sources.values_list("slug", flat=True)) == ["acme"]
    assert tab.csp_violations() == []


def test_a_policy_editor_cancels_a_run_a_worker_is_judging(
    tab: Tab, policy: Policy, active_version: PolicyVersion, settings: Any
) -> None:
    for n in range(30):
        golden_accepted(policy, f"example post {n}", "safe")
    with EngineSimulator(latency=0.3) as simulator:
        settings.SAFEGUARD_BASE_URL = simulator.base_url
        settings.SAFEGUARD_MAX_IN_FLIGHT = 1
        log_in_as_policy_editor(tab)
        page = tab.page
        page.get_by_role("link", name="Spam").click()
        page.get_by_role("button", name="Run evaluation on the golden set").click()
        expect(page).to_have_url(RUN_URL)
        run_id = int(RUN_URL.search(page.url)[1])  # type: ignore[index]
        worker = run_in_a_worker_thread(run_id)
        expect(page.locator(".run-status")).to_have_text("running")
        expect(page.locator("#run-progress")).not_to_have_attribute("value", "0")
        page.get_by_role("button", name="Cancel run").click()
        expect(page.locator(".messages")).to_contain_text(f"Run #{run_id} cancelled.")
        expect(page.locator(".run-status")).to_have_text("cancelled")
        expect(page.locator("main")).to_contain_text("Cancelled by pete")
        expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
        worker.join(timeout=30)
        assert not worker.is_alive()

    run = EvaluationRun.objects.get(pk=run_id)
    assert run.status == EvaluationRun.Status.CANCELLED
    judged = run.results.exclude(status=EvaluationResult.Status.PENDING).count()
    assert 1 <= judged < 30
    page.reload()
    expect(page.locator("table.results tbody tr")).to_have_count(judged)  # what was judged stays visible
    screenshot(tab, "policy-run-cancelled")
    assert simulator.stats.requests_total < 30
    assert AuditEvent.objects.filter(action="evaluation.cancelled", actor_label="pete").exists()
    assert tab.csp_violations() == []
