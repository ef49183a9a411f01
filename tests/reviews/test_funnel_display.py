"""What moderators and the policy team see of the funnel tier: scores on the case, calibration per policy."""

from __future__ import annotations

import dataclasses

import pytest

from accounts.roles import Role
from inference_worker import services
from inference_worker.runner import EngineConfig
from moderation.models import Case
from policies import services as policy_services
from policies.models import GoldenExample, Policy
from tests.conftest import ClientFor
from tests.inference_worker.test_funnel import SAFE, THREATS_POLICY, VIOLATING_ITEM, VIOLATIONS, golden
from tests.inference_worker.test_triage import cases_for
from tests.reviews.helpers import user_create

pytestmark = pytest.mark.usefixtures("sentence_model")

UNTRUSTED_EXAMPLE = '- "<script>alert(1)</script> I will kill you and your family" -> violation, TH1\n'


@pytest.fixture
def threats(db: None) -> Policy:
    policy = Policy.objects.create(
        slug="threats", name="Threats", qa_sample_rate=0, funnel_target_recall=0.8, recall_confidence=0.5
    )
    text = THREATS_POLICY.replace("## Examples\n", "## Examples\n" + UNTRUSTED_EXAMPLE)
    policy_services.policy_version_create(policy=policy, text=text, activate=True)
    for text in VIOLATIONS:
        golden(policy, text, "violates", GoldenExample.Status.ACCEPTED)
    for text in SAFE:
        golden(policy, text, "safe", GoldenExample.Status.ACCEPTED)
    return policy


@pytest.fixture
def funnel_case(threats: Policy, engine_config: EngineConfig) -> Case:
    [case] = cases_for(threats, VIOLATING_ITEM)
    services.cases_triage(case_ids=[case.pk], config=dataclasses.replace(engine_config, base_url=""))
    return Case.objects.get(pk=case.pk)


def test_the_case_view_shows_the_funnel_score_its_bound_and_its_nearest_examples_escaped(
    threats: Policy, funnel_case: Case, client_for: ClientFor
) -> None:
    moderator = user_create("mona", Role.MODERATOR, grants=[threats])
    page = client_for(moderator).get(f"/cases/{funnel_case.pk}/").content.decode()
    score = funnel_case.triage_results.get().funnel or {}
    assert "no reasoning engine configured" in page
    assert f"p(violation) <strong>{score['p_violation']:.3f}</strong>" in page
    assert f"at or above the proven threshold {score['threshold']:.3f}: passed on" in page
    assert (
        f'Funnel recall &ge; <span class="recall-bound">{score["recall_lower_bound"]:.3f}</span> '
        f'(0.50 confidence, <span class="bound-count">{score["held_out_violations"]} held-out violations'
    ) in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; I will kill you" in page
    assert "<script>alert(1)" not in page


def test_the_metrics_page_shows_each_policys_bound_and_what_the_rest_still_need(
    threats: Policy, policy: Policy, funnel_case: Case, engine_config: EngineConfig, client_for: ClientFor
) -> None:
    [unscored] = cases_for(policy, "hello")
    services.cases_triage(case_ids=[unscored.pk], config=dataclasses.replace(engine_config, base_url=""))
    admin = user_create("ada", Role.ADMIN)
    page = client_for(admin).get("/metrics/").content.decode()
    calibration = funnel_case.policy_version.funnel_calibrations.get()
    assert calibration.recall_lower_bound is not None and calibration.threshold is not None
    assert "Auto-clear guarantees" in page
    assert f'Recall &ge; <strong class="recall-bound">{calibration.recall_lower_bound:.3f}</strong>' in page
    assert '<span class="bound-count">6 held-out violations</span>' in page
    assert f"p(violation) &lt; {calibration.threshold:.3f} may be auto-cleared" in page
    assert "1.000 of violations" not in page  # never a bare measured recall
    assert "not scoring: needs at least 2 labelled violations" in page
    # No evaluation run yet: the reasoner's safe verdicts go to humans, and the page says so.
    assert "reasoner auto-clear not proven: no finished evaluation run" in page


def test_the_policy_page_shows_the_guarantee_of_the_active_version(
    threats: Policy, funnel_case: Case, client_for: ClientFor
) -> None:
    editor = user_create("pat", Role.POLICY_EDITOR)
    page = client_for(editor).get(f"/policies/{threats.slug}/").content.decode()
    calibration = funnel_case.policy_version.funnel_calibrations.get()
    assert "<h2>Auto-clear</h2>" in page
    assert '<span class="badge state-on">clearing</span>' in page
    cleared = calibration.held_out_safe_cleared
    assert f"{cleared} of 3 held-out safe examples ({calibration.clear_rate:.2f})" in page


def test_in_shadow_mode_the_policy_page_says_how_many_violations_it_still_needs(
    threats: Policy, engine_config: EngineConfig, client_for: ClientFor
) -> None:
    threats.funnel_target_recall = None
    threats.recall_confidence = 0.95
    threats.save()
    [case] = cases_for(threats, VIOLATING_ITEM)
    services.cases_triage(case_ids=[case.pk], config=dataclasses.replace(engine_config, base_url=""))
    editor = user_create("pat", Role.POLICY_EDITOR)
    page = client_for(editor).get(f"/policies/{threats.slug}/").content.decode()
    assert "shadow mode" in page
    assert 'It needs <strong class="violations-missing">149</strong> more labelled violations' in page
