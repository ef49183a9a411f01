"""The demo data: policies with an accepted golden set, so the funnel tier works out of the box."""

from __future__ import annotations

import dataclasses
from io import StringIO

import pytest
from django.core.management import call_command

from inference_worker import services
from inference_worker.models import FunnelCalibration
from inference_worker.services import EngineConfig
from moderation.models import Case
from reviews.models import AuditEvent, GoldenExample


def test_seed_demo_gives_each_demo_policy_an_accepted_golden_set_once(db: None) -> None:
    call_command("seed_demo", "--admin-password", "a long demo password", stdout=StringIO())
    call_command("seed_demo", "--admin-password", "a long demo password", stdout=StringIO())
    for slug in ("spam", "harassment"):
        examples = GoldenExample.objects.filter(policy__slug=slug)
        assert examples.count() == 16
        assert set(examples.values_list("status", flat=True)) == {GoldenExample.Status.ACCEPTED}
        assert examples.filter(expected_label="violates").count() == 8
        assert examples.exclude(rule_ids=[]).count() == 8  # every violation cites its rules
    assert AuditEvent.objects.filter(action="golden.import").count() == 2


@pytest.mark.usefixtures("sentence_model")
def test_without_an_engine_the_demo_funnel_clears_safe_posts_and_keeps_every_violation(
    db: None, engine_config: EngineConfig
) -> None:
    call_command("seed_demo", "--admin-password", "a long demo password", stdout=StringIO())
    cases = list(Case.objects.select_related("item", "policy_version__policy"))
    services.cases_triage(
        case_ids=[c.pk for c in cases], config=dataclasses.replace(engine_config, base_url="")
    )

    calibrations = FunnelCalibration.objects.filter(policy_version__policy__slug__in=["spam", "harassment"])
    assert {c.method for c in calibrations} == {FunnelCalibration.Method.LOGISTIC_REGRESSION}
    cleared = {
        (c.policy_version.policy.slug, c.item.external_id)
        for c in Case.objects.filter(state=Case.State.AUTO_CLEARED).select_related(
            "item", "policy_version__policy"
        )
    }
    # The demo's violations (and its prompt-injection attempt) are never cleared; a plain question is.
    violating = {
        ("spam", "demo-2"),
        ("spam", "demo-6"),
        ("spam", "demo-9"),
        ("harassment", "demo-4"),
        ("harassment", "demo-7"),
        ("spam", "demo-12"),
        ("harassment", "demo-12"),
    }
    assert not cleared & violating
    assert {("spam", "demo-1"), ("harassment", "demo-1")} <= cleared
