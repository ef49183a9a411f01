"""Decisions through the case view: confirm, overturn, escalate; immutable rows, audit, golden candidates."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import Client

from audit.models import AuditEvent
from moderation.models import Case
from policies.models import GoldenExample, Policy
from reviews import services
from reviews.models import Decision
from reviews.services import DecisionIn, DecisionRefused
from tests.conftest import CasesFactory, ClientFor


@pytest.fixture(autouse=True)
def no_qa_sampling(policy: Policy) -> None:
    policy.qa_sample_rate = 0
    policy.save()


def claimed_by(client: Client, case: Case) -> None:
    assert client.post("/queue/next")["Location"] == f"/cases/{case.pk}/"


def test_it_records_a_confirmation_and_moves_on_to_the_next_case(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(priority=80, verdict="violates")
    [following] = queued_cases(priority=40, verdict="safe")
    client = client_for(moderator)
    claimed_by(client, case)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"], "note": ""})
    assert response.status_code == 302 and response["Location"] == f"/cases/{following.pk}/"

    decision = Decision.objects.get(case=case)
    assert (decision.action, decision.final_label, decision.model_verdict) == (
        "confirm",
        "violates",
        "violates",
    )
    assert decision.moderator == moderator and decision.rule_ids == ["SP1"]
    case.refresh_from_db()
    assert case.state == Case.State.DECIDED and case.lease_owner is None and case.lease_expires_at is None
    following.refresh_from_db()
    assert following.state == Case.State.CLAIMED and following.lease_owner == moderator

    event = AuditEvent.objects.get(action="case.decided", object_id=str(case.pk))
    assert event.actor_label == "mona"
    assert event.payload["decision_id"] == decision.pk and event.payload["final_label"] == "violates"

    golden = GoldenExample.objects.get(decision=decision)
    assert golden.text == case.item.text
    assert (golden.expected_label, golden.rule_ids, golden.status) == ("violates", ["SP1"], "candidate")
    assert golden.policy == case.policy_version.policy and golden.origin == "decision"


def test_it_goes_back_to_the_queue_when_nothing_is_left(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases()
    client = client_for(moderator)
    claimed_by(client, case)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"]})
    assert response.status_code == 302 and response["Location"] == "/queue/"
    assert b"Nothing left to review" in client.get("/queue/").content


def test_it_redirects_an_htmx_decision_with_hx_redirect(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    first, second = queued_cases(2)
    client = client_for(moderator)
    claimed_by(client, first)
    response = client.post(
        f"/cases/{first.pk}/decide",
        {"action": "confirm", "rule_ids": ["SP1"]},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/cases/{second.pk}/"


def test_it_records_an_overturn_with_the_moderators_label(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(verdict="violates")
    client = client_for(moderator)
    claimed_by(client, case)
    response = client.post(
        f"/cases/{case.pk}/decide", {"action": "overturn", "final_label": "safe", "note": "a joke"}
    )
    assert response.status_code == 302
    decision = Decision.objects.get(case=case)
    assert (decision.action, decision.final_label, decision.model_verdict) == ("overturn", "safe", "violates")
    assert decision.note == "a joke"
    assert GoldenExample.objects.get(decision=decision).expected_label == "safe"


@pytest.mark.parametrize(
    ("verdict", "post", "message"),
    [
        ("violates", {"action": "overturn", "final_label": "violates"}, b"confirm it instead"),
        ("violates", {"action": "overturn"}, b"Choose the correct label"),
        ("violates", {"action": "escalate", "note": "   "}, b"Say why you escalate"),
        ("undetermined", {"action": "confirm"}, b"no verdict to confirm"),
        ("violates", {"action": "shrug"}, b""),
    ],
)
def test_it_refuses_an_invalid_decision_with_the_reason(
    verdict: str,
    post: dict[str, Any],
    message: bytes,
    moderator: User,
    queued_cases: CasesFactory,
    client_for: ClientFor,
) -> None:
    [case] = queued_cases(verdict=verdict)
    client = client_for(moderator)
    claimed_by(client, case)
    # htmx swaps the form in place, with the reason.
    response = client.post(f"/cases/{case.pk}/decide", post, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert message in response.content
    assert b'id="decision-form"' in response.content and b"<html" not in response.content
    # A plain form post (no JavaScript) is refused the same way.
    response = client.post(f"/cases/{case.pk}/decide", post)
    assert response.status_code == 400
    assert message in response.content and b'id="decision-form"' in response.content
    assert not Decision.objects.exists() and not GoldenExample.objects.exists()
    case.refresh_from_db()
    assert case.state == Case.State.CLAIMED and case.lease_owner == moderator


def test_it_decides_an_undetermined_case_with_a_label(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(verdict="undetermined", confidence="")
    client = client_for(moderator)
    claimed_by(client, case)
    page = client.get(f"/cases/{case.pk}/")
    assert b'value="confirm"' not in page.content  # nothing to confirm
    assert b"checked" not in page.content  # no label (and no rule) chosen for the moderator
    assert b"<kbd>c</kbd> confirm" not in page.content
    # "Violates" names a rule (the policy requires it by default).
    refused = client.post(f"/cases/{case.pk}/decide", {"action": "decided", "final_label": "violates"})
    assert refused.status_code == 400
    assert b"requires at least one rule" in refused.content
    response = client.post(
        f"/cases/{case.pk}/decide", {"action": "decided", "final_label": "violates", "rule_ids": ["SP2"]}
    )
    assert response.status_code == 302
    decision = Decision.objects.get(case=case)
    # Recorded as what it is: a label where the model gave none, not an overturn.
    assert (decision.action, decision.final_label, decision.rule_ids, decision.model_verdict) == (
        Decision.Action.DECIDED,
        "violates",
        ["SP2"],
        "undetermined",
    )


def test_an_overturn_sent_for_a_case_without_a_verdict_is_recorded_as_decided(
    moderator: User, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases(verdict="undetermined", confidence="")
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    made = services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="safe"),
    )
    assert made.action == Decision.Action.DECIDED


def test_a_violation_without_rules_is_refused_only_when_the_policy_requires_rules(
    moderator: User, queued_cases: CasesFactory, policy: Policy
) -> None:
    queued_cases(2, verdict="safe")
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed is not None
    with pytest.raises(DecisionRefused, match="at least one rule"):
        services.case_decide(
            case=claimed,
            moderator=moderator,
            decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="violates"),
        )
    Policy.objects.filter(pk=policy.pk).update(rules_required=False)
    made = services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.OVERTURN, final_label="violates"),
    )
    assert (made.action, made.rule_ids) == (Decision.Action.OVERTURN, [])


def test_the_service_refuses_to_confirm_an_undetermined_verdict(
    moderator: User, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases(verdict="undetermined")
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    with pytest.raises(DecisionRefused):
        services.case_decide(
            case=claimed, moderator=moderator, decision=DecisionIn(action=Decision.Action.CONFIRM)
        )
    assert not Decision.objects.exists()


@pytest.mark.parametrize(
    "decision",
    [
        DecisionIn(action=Decision.Action.OVERTURN, final_label=""),
        DecisionIn(action=Decision.Action.OVERTURN, final_label="violates"),
        DecisionIn(action=Decision.Action.OVERTURN, final_label="maybe"),
        DecisionIn(action=Decision.Action.ESCALATE, note=" "),
    ],
    ids=["overturn-without-label", "overturn-to-the-same-label", "overturn-to-no-label", "escalate-silently"],
)
def test_the_service_refuses_a_decision_the_form_would_refuse(
    decision: DecisionIn, moderator: User, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases(verdict="violates")
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    with pytest.raises(DecisionRefused):
        services.case_decide(case=claimed, moderator=moderator, decision=decision)
    assert not Decision.objects.exists() and not GoldenExample.objects.exists()


def test_it_hands_an_escalation_to_senior_moderators(
    moderator: User, senior_moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(priority=60)
    client = client_for(moderator)
    claimed_by(client, case)
    response = client.post(
        f"/cases/{case.pk}/decide", {"action": "escalate", "note": "Looks like a coordinated campaign"}
    )
    assert response.status_code == 302 and response["Location"] == "/queue/"
    case.refresh_from_db()
    assert case.state == Case.State.ESCALATED and case.needs_senior
    assert case.lease_owner is None and case.priority == 65
    escalation = Decision.objects.get(case=case)
    assert (escalation.action, escalation.final_label) == ("escalate", "")
    assert escalation.note == "Looks like a coordinated campaign"
    assert not GoldenExample.objects.exists()
    assert AuditEvent.objects.filter(action="case.escalated", object_id=str(case.pk)).count() == 1
    # The moderator cannot take it back; a senior moderator can, and settles it.
    assert client.post("/queue/next")["Location"] == "/queue/"
    senior = client_for(senior_moderator)
    claimed_by(senior, case)
    assert (
        senior.post(f"/cases/{case.pk}/decide", {"action": "overturn", "final_label": "safe"}).status_code
        == 302
    )
    case.refresh_from_db()
    assert case.state == Case.State.DECIDED
    assert list(case.decisions.order_by("id").values_list("action", "final_label")) == [
        ("escalate", ""),
        ("overturn", "safe"),
    ]
    assert GoldenExample.objects.get().expected_label == "safe"


def test_it_records_one_final_decision_per_case(moderator: User, queued_cases: CasesFactory) -> None:
    [case] = queued_cases()
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
    )
    with pytest.raises(DecisionRefused):
        services.case_decide(
            case=claimed,
            moderator=moderator,
            decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
        )
    # The database holds the line too, whatever code path tries.
    with pytest.raises(IntegrityError), transaction.atomic():
        Decision.objects.create(case=case, moderator=moderator, action="overturn", final_label="safe")
    assert Decision.objects.filter(case=case).count() == 1
    assert GoldenExample.objects.count() == 1


def test_the_database_refuses_to_change_or_delete_a_decision(
    moderator: User, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases()
    claimed = services.case_claim_next(moderator=moderator)
    assert claimed == case
    decision = services.case_decide(
        case=claimed,
        moderator=moderator,
        decision=DecisionIn(action=Decision.Action.CONFIRM, rule_ids=["SP1"]),
    )
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        Decision.objects.filter(pk=decision.pk).update(final_label="safe")
    # (The ORM's delete() stops earlier, at the golden example's PROTECT; the trigger stops raw SQL too.)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("DELETE FROM reviews_decision WHERE id = %s", [decision.pk])
    event = AuditEvent.objects.filter(action="case.decided").get()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="case.nothing")
    decision.refresh_from_db()
    assert decision.final_label == "violates"


def test_an_escalated_appeal_stays_in_the_appeals_queue(
    senior_moderator: User, admin: User, queued_cases: CasesFactory
) -> None:
    [original] = queued_cases(state=Case.State.DECIDED)
    [appeal] = queued_cases(state=Case.State.APPEALED, appeal_of=original, priority=90)
    claimed = services.case_claim_next(moderator=senior_moderator)
    assert claimed == appeal
    services.case_decide(
        case=claimed,
        moderator=senior_moderator,
        decision=DecisionIn(action=Decision.Action.ESCALATE, note="needs legal"),
    )
    appeal.refresh_from_db()
    assert appeal.state == Case.State.APPEALED and appeal.needs_senior
    assert services.case_claim_next(moderator=admin) == appeal


def test_the_overturn_rate_counts_only_cases_the_model_had_a_verdict_for(
    moderator: User, queued_cases: CasesFactory, policy: Policy
) -> None:
    from reviews import metrics

    queued_cases(verdict="undetermined", confidence="", priority=90)
    queued_cases(verdict="violates", priority=80)
    queued_cases(verdict="safe", priority=70)
    for decision in (
        DecisionIn(action=Decision.Action.DECIDED, final_label="safe"),
        DecisionIn(action=Decision.Action.OVERTURN, final_label="safe"),
        DecisionIn(action=Decision.Action.CONFIRM),
    ):
        claimed = services.case_claim_next(moderator=moderator)
        assert claimed is not None
        services.case_decide(case=claimed, moderator=moderator, decision=decision)
    [version] = metrics.metrics_compute(Policy.objects.filter(pk=policy.pk))["overturns"]
    assert (version.decided, version.overturned, version.overturn_rate) == (2, 1, 0.5)


def test_confirming_a_violation_the_model_cited_no_rule_for_asks_for_a_rule(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(verdict="violates")  # no triage result: the model cited nothing
    client = client_for(moderator)
    claimed_by(client, case)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert response.status_code == 400
    assert b"requires one for a violation" in response.content
    assert not Decision.objects.filter(case=case).exists()
    with pytest.raises(DecisionRefused, match="at least one rule"):
        services.case_decide(
            case=case, moderator=moderator, decision=DecisionIn(action=Decision.Action.CONFIRM)
        )
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm", "rule_ids": ["SP1"]})
    assert response.status_code == 302
    assert Decision.objects.get(case=case).rule_ids == ["SP1"]


def test_a_lost_lease_is_a_409_even_when_the_form_lacks_a_rule(
    moderator: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    [case] = queued_cases(verdict="violates")
    client = client_for(moderator)
    claimed_by(client, case)
    Case.objects.filter(pk=case.pk).update(state=Case.State.QUEUED, lease_owner=None, lease_expires_at=None)
    response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm"})
    assert response.status_code == 409
    assert b"no longer yours" in response.content
