"""A policy editor's loop in the browser: edit a draft with live checks, publish it, evaluate it against the
engine simulator while the progress bar fills, compare with the active version, and activate it."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from django.db import connection
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker import evaluation_runs
from inference_worker.testing.engine_simulator import EngineSimulator
from inference_worker.testing.fixtures import engine_config_for
from policies import evaluations
from policies.models import EvaluationRun, Policy, PolicyVersion
from tests.browser.conftest import PASSWORD, Tab, screenshot, user_with_role
from tests.policies.evaluation_helpers import golden_accepted, golden_set_small

pytestmark = pytest.mark.browser

RUN_URL = re.compile(r"/runs/(\d+)/$")


def run_in_a_worker_thread(run_id: int) -> threading.Thread:
    """What a Celery worker does with the task's message: the same service, on another thread."""

    def work() -> None:
        try:
            evaluation_runs.evaluation_run_execute(run_id=run_id)
        finally:
            connection.close()

    thread = threading.Thread(target=work, name="evaluation-worker")
    thread.start()
    return thread


def test_a_policy_editor_edits_evaluates_compares_and_activates(
    tab: Tab, policy: Policy, active_version: PolicyVersion, settings: Any
) -> None:
    user_with_role("pete", Role.POLICY_EDITOR, grants=[])
    golden_set_small(policy)
    golden_accepted(policy, "glorpnik giveaway, just pay the fee", "violates", ["SP1"])
    with EngineSimulator(latency=0.3) as simulator:
        settings.SAFEGUARD_BASE_URL = simulator.base_url
        settings.SAFEGUARD_MAX_IN_FLIGHT = 2  # five items, two at a time: the bar moves in steps
        # The active version's run on the current golden set: what the gate compares with.
        baseline = evaluations.evaluation_run_create(
            version=active_version, actor=None, config=engine_config_for(simulator.base_url), enqueue=False
        )
        evaluation_runs.evaluation_run_execute(
            run_id=baseline.pk, config=engine_config_for(simulator.base_url)
        )
        simulator.reset_stats()

        page = tab.page
        page.goto(tab.url("/"))
        page.get_by_label("Username").fill("pete")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(tab.url("/policies/"))
        tab.assert_assets_loaded()
        page.get_by_role("link", name="Spam").click()

        # A new draft, edited with the live side panel.
        page.get_by_role("button", name="New draft", exact=True).click()
        expect(page).to_have_url(tab.url("/policies/spam/v2/"))
        tab.ready()
        panel = page.locator("#draft-lint")
        expect(panel).to_contain_text("SP1")
        expect(panel).not_to_contain_text("SP3")
        editor_box = page.get_by_label("Policy text (draft)")
        editor_box.press("End")
        editor_box.press("Control+End")
        editor_box.type("\n- SP3: Fake giveaways that ask for a fee.\n")
        expect(panel.locator("code", has_text="SP3")).to_be_visible()
        expect(panel).to_contain_text("tokens (o200k)")
        screenshot(tab, "policy-draft-editor")
        page.get_by_role("button", name="Save draft").click()
        expect(page.locator(".messages")).to_contain_text("Draft v2 saved.")
        assert "SP3" in PolicyVersion.objects.get(policy=policy, number=2).rule_ids
        page.get_by_role("button", name="Publish v2").click()
        expect(page).to_have_url(tab.url("/policies/spam/"))
        expect(page.locator(".messages")).to_contain_text("v2 published")
        expect(page.locator(".gate")).to_contain_text(
            "v2 has no finished evaluation run on the current golden set"
        )

        # Evaluate v2; a worker picks the run up while the page polls.
        page.get_by_label("Version").select_option(label="v2 (published)")
        page.get_by_role("button", name="Run evaluation on the golden set").click()
        expect(page).to_have_url(RUN_URL)
        run_id = int(RUN_URL.search(page.url)[1])  # type: ignore[index]
        progress = page.locator("#run-progress")
        expect(progress).to_have_attribute("max", "5")
        expect(page.locator(".run-status")).to_have_text("queued")
        worker = run_in_a_worker_thread(run_id)
        expect(progress).to_have_attribute("value", "5")
        expect(page.locator(".run-status")).to_have_text("finished")
        expect(page.get_by_role("heading", name="Confusion matrix")).to_be_visible()
        worker.join()
        run = EvaluationRun.objects.get(pk=run_id)
        assert run.status == EvaluationRun.Status.FINISHED and run.done == 5
        assert simulator.stats.max_in_flight == 2
        screenshot(tab, "policy-run-finished")
        page.locator("details summary").first.click()
        expect(page.locator("details pre.cot").first).to_be_visible()

        # Compare with the active version's run, then activate.
        page.get_by_role("link", name="← Spam").click()
        expect(page.locator(".gate")).to_contain_text("Gate open")
        page.get_by_role("link", name="Compare with the active version").click()
        expect(page.locator("h1")).to_contain_text(f"Run #{baseline.pk} (v1) → run #{run_id} (v2)")
        expect(page.locator("table.deltas")).to_contain_text("Accuracy")
        expect(page.locator("table.flipped")).to_contain_text("No verdict changed.")
        screenshot(tab, "policy-compare")
        page.go_back()
        screenshot(tab, "policy-page-gate-open")
        page.get_by_role("button", name="Activate v2").click()
        expect(page.locator(".messages")).to_contain_text("v2 is now active for new cases.")

    assert policy.versions.get(status=PolicyVersion.Status.ACTIVE).number == 2
    assert AuditEvent.objects.filter(action="policy.version_activated", actor_label="pete").exists()
    assert tab.csp_violations() == []
