"""The demo data: policies with an accepted golden set, so the funnel tier works out of the box."""

from __future__ import annotations

import dataclasses
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker import services
from inference_worker.models import FunnelCalibration
from inference_worker.runner import EngineConfig
from moderation.models import Case
from policies.models import GoldenExample
from reviews.models import QueueGrant


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
def test_without_an_engine_the_demo_funnel_scores_in_shadow_mode_and_clears_nothing(
    db: None, engine_config: EngineConfig
) -> None:
    """16 labelled examples prove no recall at 0.98 / 95%: the demo funnel orders the queue and clears
    nothing, and says how many labelled violations it still needs."""
    call_command("seed_demo", "--admin-password", "a long demo password", stdout=StringIO())
    cases = list(Case.objects.select_related("item", "policy_version__policy"))
    services.cases_triage(
        case_ids=[c.pk for c in cases], config=dataclasses.replace(engine_config, base_url="")
    )

    calibrations = FunnelCalibration.objects.filter(policy_version__policy__slug__in=["spam", "harassment"])
    assert {c.method for c in calibrations} == {FunnelCalibration.Method.LOGISTIC_REGRESSION}
    assert {c.violations_missing for c in calibrations} == {149}
    assert not Case.objects.filter(state=Case.State.AUTO_CLEARED).exists()
    # The score orders the human queue: a demo violation waits ahead of a plain question.
    by_item = {
        (c.policy_version.policy.slug, c.item.external_id): c.priority
        for c in Case.objects.select_related("item", "policy_version__policy")
    }
    assert by_item[("spam", "demo-2")] > by_item[("spam", "demo-1")]


def test_seed_demo_makes_one_login_per_role_with_queue_grants_once(db: None) -> None:
    out = StringIO()
    call_command("seed_demo", "--admin-password", "a long demo password", stdout=out)
    call_command(
        "seed_demo",
        "--admin-password",
        "a long demo password",
        "--demo-password",
        "demo pass 123",
        stdout=out,
    )
    expected = {
        "admin": Role.ADMIN,
        "moderator": Role.MODERATOR,
        "senior": Role.SENIOR_MODERATOR,
        "editor": Role.POLICY_EDITOR,
        "auditor": Role.AUDITOR,
    }
    for username, role in expected.items():
        user = User.objects.get(username=username)
        assert list(user.groups.values_list("name", flat=True)) == [role.value]
        password = "a long demo password" if username == "admin" else "demo pass 123"
        assert user.check_password(password)
        assert f"login: {username:<9} / {password}" in out.getvalue()
    for username in ("moderator", "senior"):
        grants = QueueGrant.objects.filter(user__username=username)
        assert sorted(grants.values_list("policy__slug", flat=True)) == ["harassment", "spam"]
    assert QueueGrant.objects.count() == 4  # nothing doubled by the second run
    created = AuditEvent.objects.filter(action="user.created")
    assert sorted(e.payload["username"] for e in created) == ["auditor", "editor", "moderator", "senior"]
