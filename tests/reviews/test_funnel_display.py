"""What moderators and the policy team see of the funnel tier: scores on the case, calibration per policy."""

from __future__ import annotations

import dataclasses

import pytest
from django.contrib.auth.models import User
from django.test import Client

from inference_worker import services
from inference_worker.services import EngineConfig
from moderation import services as moderation_services
from moderation.models import Case, Policy
from reviews.models import Role
from tests.inference_worker.test_funnel import THREATS_POLICY, VIOLATING_ITEM
from tests.inference_worker.test_triage import cases_for
from tests.reviews.helpers import user_create

pytestmark = pytest.mark.usefixtures("sentence_model")

UNTRUSTED_EXAMPLE = '- "<script>alert(1)</script> I will kill you and your family" -> violation, TH1\n'


@pytest.fixture
def threats(db: None) -> Policy:
    policy = Policy.objects.create(slug="threats", name="Threats", qa_sample_rate=0)
    text = THREATS_POLICY.replace("## Examples\n", "## Examples\n" + UNTRUSTED_EXAMPLE)
    moderation_services.policy_version_create(policy=policy, text=text, activate=True)
    return policy


@pytest.fixture
def funnel_case(threats: Policy, engine_config: EngineConfig) -> Case:
    [case] = cases_for(threats, VIOLATING_ITEM)
    services.cases_triage(case_ids=[case.pk], config=dataclasses.replace(engine_config, base_url=""))
    return Case.objects.get(pk=case.pk)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_case_view_shows_the_funnel_score_and_its_nearest_examples_escaped(
    threats: Policy, funnel_case: Case
) -> None:
    moderator = user_create("mona", Role.MODERATOR, grants=[threats])
    page = logged_in(moderator).get(f"/cases/{funnel_case.pk}/").content.decode()
    score = funnel_case.triage_results.get().funnel or {}
    assert "no reasoning engine configured" in page
    assert f"p(violation) <strong>{score['p_violation']:.3f}</strong>" in page
    assert f"calibrated threshold {score['threshold']:.3f}" in page
    assert "at or above the threshold: passed on" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; I will kill you" in page
    assert "<script>alert(1)" not in page


def test_the_metrics_page_shows_each_policys_calibration(
    threats: Policy, policy: Policy, funnel_case: Case, engine_config: EngineConfig
) -> None:
    [uncalibrated] = cases_for(policy, "hello")
    services.cases_triage(case_ids=[uncalibrated.pk], config=dataclasses.replace(engine_config, base_url=""))
    admin = user_create("ada", Role.ADMIN)
    page = logged_in(admin).get("/metrics/").content.decode()
    calibration = funnel_case.policy_version.funnel_calibrations.get()
    assert "Funnel tier calibration" in page
    assert f"p(violation) &lt; {calibration.threshold:.3f} is auto-cleared" in page
    assert f"{calibration.measured_recall:.3f} of violations passed on (target 0.98)" in page
    assert "11 examples (6 violating, 5 safe; 11 from the policy text, 0 from the golden set)" in page
    assert "Measured on 6 violations only: a rough estimate" in page
    assert "not calibrated: needs at least 2 labelled violations" in page


def test_the_policy_page_shows_the_calibration_of_the_active_version(
    threats: Policy, funnel_case: Case
) -> None:
    editor = user_create("pat", Role.POLICY_EDITOR)
    page = logged_in(editor).get(f"/policies/{threats.slug}/").content.decode()
    calibration = funnel_case.policy_version.funnel_calibrations.get()
    assert "<h2>Funnel tier</h2>" in page
    assert f"p(violation) &lt; {calibration.threshold:.3f} is auto-cleared" in page
    assert f"{calibration.clear_rate:.3f} of safe examples auto-cleared" in page
