"""The policy team sees what auto-clear promises (the bound and the count it rests on) on the policy page and
/metrics/, sees QA monitoring switch a tier off, and turns it back on with a reason."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker import embeddings, funnel
from inference_worker.models import FunnelCalibration
from moderation.models import AutoClearSuspension
from policies.models import Policy, PolicyVersion
from tests.browser.conftest import Tab, screenshot, user_with_role
from tests.inference_worker.autoclear_helpers import reasoner_proven

pytestmark = pytest.mark.browser


@pytest.fixture
def proven(policy: Policy) -> PolicyVersion:
    """A funnel threshold proven on 212 held-out violations (2 below it), and a reasoner run."""
    version = policy.versions.get(status=PolicyVersion.Status.ACTIVE)
    FunnelCalibration.objects.create(
        policy_version=version,
        golden_fingerprint=funnel.EMPTY_GOLDEN_FINGERPRINT,
        target_recall=0.98,
        confidence=0.95,
        embedding_model=embeddings.model_name(),
        method=FunnelCalibration.Method.LOGISTIC_REGRESSION,
        threshold=0.31,
        measured_recall=0.9906,
        recall_lower_bound=0.9823,
        held_out_violations=212,
        held_out_misses=2,
        violations_needed=149,
        clear_rate=0.41,
        held_out_safe=120,
        violations=230,
        safe=400,
    )
    reasoner_proven(policy)
    return version


def test_the_policy_page_and_metrics_show_each_bound_with_its_count_and_a_suspension_is_lifted_by_hand(
    tab: Tab, policy: Policy, proven: PolicyVersion
) -> None:
    admin = user_with_role("ada", Role.ADMIN, grants=[policy])
    tab.login(admin)
    page = tab.page
    page.goto(tab.url(f"/policies/{policy.slug}/"))
    panel = page.locator(f"#funnel-calibration-{policy.pk}")
    expect(panel).to_contain_text("Recall ≥ 0.982 (0.95 confidence, 212 held-out violations; target 0.98)")
    expect(panel).to_contain_text("2 of 212 scored below it (never trained on)")
    expect(panel).to_contain_text("recall ≥ 0.980 (0.95 confidence, 149 labelled violations in run")
    screenshot(tab, "auto-clear-policy-page")

    suspension = AutoClearSuspension.objects.create(
        policy_version=proven,
        tier=AutoClearSuspension.Tier.FUNNEL,
        reason="QA found 1 violation in 2 auto-cleared samples",
        qa_samples=2,
        qa_misses=1,
        miss_rate_upper_bound=0.97,
    )
    page.goto(tab.url("/metrics/"))
    banner = page.locator(".banner.suspension").first
    expect(banner).to_contain_text("Funnel tier auto-clear suspended for Spam v1")
    expect(page.locator("main")).to_contain_text("212 held-out violations")
    expect(page.locator("main")).to_contain_text("Recall ≥ 0.982")
    screenshot(tab, "auto-clear-metrics")

    page.get_by_role("link", name="Review it on the policy page").click()
    expect(page).to_have_url(tab.url(f"/policies/{policy.slug}/"))
    page.get_by_label("Reason to turn it back on").fill("retrained on the new golden set; QA will watch")
    page.get_by_role("button", name="Turn funnel tier auto-clear back on").click()
    expect(page.locator(".messages")).to_contain_text("Funnel tier auto-clear is back on for v1")
    expect(page.locator(".banner.suspension")).to_have_count(0)
    suspension.refresh_from_db()
    assert suspension.resumed_at is not None and suspension.resumed_by == admin
    event = AuditEvent.objects.get(action="autoclear.resumed")
    assert event.payload["reason"] == "retrained on the new golden set; QA will watch"
    assert tab.csp_violations() == []
