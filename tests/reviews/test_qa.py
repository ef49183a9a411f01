"""QA sampling: a share of decisions gets a second, independent review; agreement is recorded."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from django.contrib.auth.models import User

from audit.models import AuditEvent
from inference_worker.runner import EngineConfig
from inference_worker.services import cases_triage
from moderation.models import Case
from policies.models import GoldenExample, Policy
from reviews import services, tasks
from reviews.models import Decision
from reviews.services import DecisionIn
from tests.conftest import ApiClient, CasesFactory, ClientFor
from tests.inference_worker.autoclear_helpers import reasoner_proven


@pytest.fixture
def sampled_policy(policy: Policy, source: ApiClient) -> Policy:
    """Every decision is double-checked, and the platform wants callbacks."""
    policy.qa_sample_rate = 1.0
    policy.save()
    source.source.callback_url = "http://127.0.0.1:9/hooks"
    source.source.save()
    return policy


def callback_enqueues(callbacks: list[Any]) -> list[Any]:
    return [c for c in callbacks if isinstance(c, partial) and c.func is tasks.callback_enqueue]


def decide(moderator: User, decision: DecisionIn) -> Decision:
    case = services.case_claim_next(moderator=moderator)
    assert case is not None
    return services.case_decide(case=case, moderator=moderator, decision=decision)


def test_it_opens_a_second_review_that_the_deciding_moderator_cannot_take(
    sampled_policy: Policy,
    moderator: User,
    other_moderator: User,
    queued_cases: CasesFactory,
    django_capture_on_commit_callbacks: Any,
    client_for: ClientFor,
) -> None:
    [case] = queued_cases(verdict="violates")
    with django_capture_on_commit_callbacks() as callbacks:
        first = decide(moderator, DecisionIn(action=Decision.Action.OVERTURN, final_label="safe"))
    assert len(callback_enqueues(callbacks)) == 1  # the platform hears about the first decision

    qa_case = Case.objects.get(qa_of=case)
    assert qa_case.state == Case.State.QUEUED and qa_case.item_id == case.item_id
    assert qa_case.verdict == "violates" and qa_case.priority == services.PRIORITY_QA_REVIEW
    assert AuditEvent.objects.filter(action="case.qa_opened", object_id=str(qa_case.pk)).count() == 1

    assert client_for(moderator).post("/queue/next")["Location"] == "/queue/"
    assert services.case_claim_next(moderator=moderator) is None
    client = client_for(other_moderator)
    assert client.post("/queue/next")["Location"] == f"/cases/{qa_case.pk}/"
    page = client.get(f"/cases/{qa_case.pk}/")
    assert b"QA second review" in page.content

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(f"/cases/{qa_case.pk}/decide", {"action": "overturn", "final_label": "safe"})
    assert response.status_code == 302
    second = Decision.objects.get(case=qa_case)
    assert second.agrees_with_reviewed is True
    assert first.agrees_with_reviewed is None
    # Only the original decision is a golden candidate and a callback; no review of the review.
    assert callback_enqueues(callbacks) == []
    assert list(GoldenExample.objects.values_list("decision_id", flat=True)) == [first.pk]
    assert Case.objects.filter(qa_of__isnull=False).count() == 1
    qa_case.refresh_from_db()
    assert qa_case.state == Case.State.DECIDED


def test_it_records_a_disagreement(
    sampled_policy: Policy, moderator: User, other_moderator: User, queued_cases: CasesFactory
) -> None:
    queued_cases(verdict="violates")
    decide(moderator, DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]))
    second = decide(other_moderator, DecisionIn(action=Decision.Action.OVERTURN, final_label="safe"))
    assert second.agrees_with_reviewed is False
    event = AuditEvent.objects.get(action="case.decided", object_id=str(second.case_id))
    assert event.payload["agrees_with_reviewed"] is False


def test_an_escalated_second_review_records_agreement_once_settled(
    sampled_policy: Policy,
    moderator: User,
    other_moderator: User,
    senior_moderator: User,
    queued_cases: CasesFactory,
) -> None:
    queued_cases(verdict="violates")
    decide(moderator, DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]))
    handed_on = decide(other_moderator, DecisionIn(action=Decision.Action.ESCALATE, note="not sure"))
    assert handed_on.agrees_with_reviewed is None
    settled = decide(senior_moderator, DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]))
    assert settled.case_id == handed_on.case_id
    assert settled.agrees_with_reviewed is True
    assert Decision.objects.filter(agrees_with_reviewed__isnull=False).count() == 1


def test_a_sampled_auto_clear_reaches_a_human_who_checks_the_model(
    sampled_policy: Policy,
    source: ApiClient,
    moderator: User,
    other_moderator: User,
    engine_config: EngineConfig,
) -> None:
    reasoner_proven(sampled_policy)
    response = source.post_items(
        {
            "items": [
                {"external_id": "a", "text": "lovely weather today"},
                {"external_id": "b", "text": "see you at the park"},
            ]
        }
    )
    assert response.status_code == 201
    sampled = list(Case.objects.order_by("id"))
    cases_triage(case_ids=[c.pk for c in sampled], config=engine_config)
    for case in sampled:
        case.refresh_from_db()
        # Safe with high confidence would auto-clear; at a rate of 1.0 a human sees it anyway.
        assert (case.state, case.verdict, case.route_reason) == (
            "queued",
            "safe",
            "QA sample of a reasoner auto-clear",
        )

    agreeing = decide(moderator, DecisionIn(action=Decision.Action.CONFIRM))
    disagreeing = decide(
        other_moderator, DecisionIn(action=Decision.Action.OVERTURN, final_label="violates", rule_ids=["SP1"])
    )
    assert (agreeing.agrees_with_reviewed, disagreeing.agrees_with_reviewed) == (True, False)
    # Already a second look: not sampled again; its outcome goes to the platform and the golden set.
    assert not Case.objects.filter(qa_of__isnull=False).exists()
    assert GoldenExample.objects.filter(decision__in=[agreeing, disagreeing]).count() == 2


def test_it_samples_about_the_configured_share_of_decisions(
    policy: Policy, moderator: User, queued_cases: CasesFactory
) -> None:
    policy.qa_sample_rate = 0.25
    policy.save()
    cases = queued_cases(80)
    for _ in cases:
        decide(moderator, DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]))
    opened = Case.objects.filter(qa_of__isnull=False).count()
    assert 10 <= opened <= 30  # 20 expected


def test_it_hides_the_first_decision_from_the_second_reviewer_until_they_decide(
    sampled_policy: Policy,
    moderator: User,
    other_moderator: User,
    queued_cases: CasesFactory,
    client_for: ClientFor,
) -> None:
    [case] = queued_cases(verdict="violates")
    decide(
        moderator,
        DecisionIn(action=Decision.Action.OVERTURN, final_label="safe", note="satire, not a threat"),
    )
    qa_case = services.case_claim_next(moderator=other_moderator)
    assert qa_case is not None and qa_case.qa_of_id == case.pk

    page = client_for(other_moderator).get(f"/cases/{qa_case.pk}/").content.decode()
    assert "decide on your own" in page
    assert "satire, not a threat" not in page
    assert moderator.get_username() not in page

    services.case_decide(
        case=qa_case,
        moderator=other_moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
    )
    page = client_for(other_moderator).get(f"/cases/{qa_case.pk}/").content.decode()
    assert f"safe by {moderator.get_username()}" in page


# Issue 14: the second review stays blind even to a reviewer who types the original's URL ------------------


def test_the_blind_reviewer_cannot_open_the_case_they_double_check(
    sampled_policy: Policy,
    moderator: User,
    other_moderator: User,
    queued_cases: CasesFactory,
    client_for: ClientFor,
) -> None:
    [case] = queued_cases(verdict="violates")
    decide(moderator, DecisionIn(action=Decision.Action.OVERTURN, final_label="safe", note="satire, fine"))
    client = client_for(other_moderator)
    assert client.get(f"/cases/{case.pk}/").status_code == 200  # before claiming the review: any case
    qa_case = Case.objects.get(qa_of=case)
    assert client.post("/queue/next")["Location"] == f"/cases/{qa_case.pk}/"

    original = client.get(f"/cases/{case.pk}/")
    page = client.get(f"/cases/{qa_case.pk}/").content.decode()

    assert original.status_code == 404
    assert f"/cases/{case.pk}/" not in page
    assert "satire, fine" not in page and moderator.username not in page

    client.post(f"/cases/{qa_case.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"]})
    assert client.get(f"/cases/{case.pk}/").status_code == 200  # decided: no longer blind
