"""POST /api/v1/items/<external_id>/appeals: a platform asks for a decided item to be judged again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker.runner import EngineConfig
from inference_worker.services import cases_triage
from inference_worker.testing.fixtures import engine_config_for
from moderation.models import Case, TriageResult
from policies import services as policy_services
from policies.models import Policy
from reviews import callbacks, services
from reviews.models import CallbackDelivery, Decision
from reviews.services import DecisionIn
from tests.conftest import POLICY_TEXT, ApiClient, source_api_client
from tests.reviews.helpers import CallbackReceiver, case_ids_in, user_create

NO_ENGINE = engine_config_for("")


@pytest.fixture(autouse=True)
def no_qa_sampling(policy: Policy) -> None:
    policy.qa_sample_rate = 0
    policy.save()


@pytest.fixture
def moderator(policy: Policy) -> User:
    return user_create("mona", Role.MODERATOR, grants=[policy])


@pytest.fixture
def senior_moderator(policy: Policy) -> User:
    return user_create("sena", Role.SENIOR_MODERATOR, grants=[policy])


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


def appeal(api: ApiClient, external_id: str, body: Any) -> Any:
    return api.client.post(
        f"/api/v1/items/{external_id}/appeals",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {api.api_key}"},
    )


def ingested(api: ApiClient, external_id: str = "post-1", text: str = "buy zorblax now") -> list[Case]:
    response = api.post_items({"external_id": external_id, "text": text})
    assert response.status_code == 201, response.content
    return list(Case.objects.filter(item__external_id=external_id, item__source=api.source).order_by("id"))


def decide_next(moderator: User, decision: DecisionIn) -> Decision:
    case = services.case_claim_next(moderator=moderator)
    assert case is not None
    return services.case_decide(case=case, moderator=moderator, decision=decision)


def decided_item(api: ApiClient, moderator: User, external_id: str = "post-1") -> Case:
    """An item triaged (no engine configured) and decided by a moderator."""
    [case] = ingested(api, external_id)
    cases_triage(case_ids=[case.pk], config=NO_ENGINE)
    decide_next(
        moderator, DecisionIn(action=Decision.Action.OVERTURN, final_label="violates", rule_ids=["SP1"])
    )
    case.refresh_from_db()
    assert case.state == Case.State.DECIDED
    return case


def test_it_opens_an_appeal_and_enqueues_its_triage(
    source: ApiClient, moderator: User, redis_test_db: redis.Redis, django_capture_on_commit_callbacks: Any
) -> None:
    original = decided_item(source, moderator)
    redis_test_db.delete("celery")
    with django_capture_on_commit_callbacks(execute=True):
        response = appeal(source, "post-1", {"reason": "It was a joke between friends"})
    assert response.status_code == 201, response.content
    appeal_case = Case.objects.get(appeal_of=original)
    assert response.json() == {
        "case_id": appeal_case.pk,
        "appeal_of": original.pk,
        "state": "pending_triage",
        "created": True,
    }
    assert appeal_case.state == Case.State.PENDING_TRIAGE
    assert appeal_case.item_id == original.item_id
    assert appeal_case.policy_version_id == original.policy_version_id
    event = AuditEvent.objects.get(action="case.appealed", object_id=str(appeal_case.pk))
    assert event.actor_label == "acme" and event.payload["reason"] == "It was a joke between friends"
    message = json.loads(redis_test_db.lindex("celery", 0) or b"{}")
    assert message["headers"]["task"] == "inference_worker.triage_cases"
    assert f"[{appeal_case.pk}]" in message["headers"]["kwargsrepr"]
    # The platform sees the appeal in the item's status.
    status = source.get_item("post-1").json()
    assert status["status"] == "pending"
    assert [c["is_appeal"] for c in status["cases"]] == [False, True]


def test_it_answers_a_repeated_appeal_with_the_same_case(source: ApiClient, moderator: User) -> None:
    decided_item(source, moderator)
    first = appeal(source, "post-1", {"reason": "please"})
    again = appeal(source, "post-1", {"reason": "please, again"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["case_id"] == first.json()["case_id"] and again.json()["created"] is False
    assert Case.objects.filter(appeal_of__isnull=False).count() == 1


def test_it_refuses_to_appeal_a_case_still_under_review(source: ApiClient) -> None:
    [case] = ingested(source)
    response = appeal(source, "post-1", {"reason": "too slow"})
    assert response.status_code == 409
    assert "still under review" in response.json()["detail"]
    cases_triage(case_ids=[case.pk], config=NO_ENGINE)  # now queued for a human: still under review
    assert appeal(source, "post-1", {"reason": "too slow"}).status_code == 409
    assert not Case.objects.filter(appeal_of__isnull=False).exists()


def test_it_hides_other_sources_items(source: ApiClient, policy: Policy, moderator: User) -> None:
    decided_item(source, moderator)
    other = source_api_client("globex", [policy])
    assert appeal(other, "post-1", {"reason": "not yours"}).status_code == 404
    assert appeal(source, "no-such-item", {"reason": "?"}).status_code == 404
    assert not Case.objects.filter(appeal_of__isnull=False).exists()


def test_it_refuses_a_request_without_a_valid_api_key(source: ApiClient, moderator: User) -> None:
    decided_item(source, moderator)
    response = Client().post(
        "/api/v1/items/post-1/appeals", json.dumps({"reason": "x"}), content_type="application/json"
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "body", "reason"]),
        ({"reason": ""}, ["body", "body", "reason"]),
        ({"reason": 7}, ["body", "body", "reason"]),
        ({"reason": "x", "urgency": "high"}, ["body", "body", "urgency"]),
    ],
)
def test_it_explains_an_invalid_appeal_field_by_field(
    body: dict[str, Any], loc: list[str], source: ApiClient, moderator: User
) -> None:
    decided_item(source, moderator)
    response = appeal(source, "post-1", body)
    assert response.status_code == 400
    assert loc in [e["loc"] for e in response.json()["errors"]]
    assert not Case.objects.filter(appeal_of__isnull=False).exists()


def test_it_needs_the_policy_when_an_item_was_judged_under_several(
    source: ApiClient, policy: Policy, moderator: User
) -> None:
    other = Policy.objects.create(slug="harassment", name="Harassment", qa_sample_rate=0)
    policy_services.policy_version_create(policy=other, text=POLICY_TEXT, activate=True)
    source.source.policies.add(other)
    spam_case, harassment_case = ingested(source)
    Case.objects.filter(pk__in=[spam_case.pk, harassment_case.pk]).update(state=Case.State.DECIDED)

    response = appeal(source, "post-1", {"reason": "wrong"})
    assert response.status_code == 400
    assert "harassment, spam" in response.json()["detail"]
    assert appeal(source, "post-1", {"reason": "wrong", "policy": "violence"}).status_code == 404

    response = appeal(source, "post-1", {"reason": "wrong", "policy": "harassment"})
    assert response.status_code == 201
    assert Case.objects.get(pk=response.json()["case_id"]).appeal_of_id == harassment_case.pk


def test_an_appeal_is_rejudged_at_high_effort_and_settled_by_a_senior_moderator(
    source: ApiClient,
    moderator: User,
    senior_moderator: User,
    engine_config: EngineConfig,
    callback_receiver: CallbackReceiver,
) -> None:
    source.source.callback_url = callback_receiver.url
    source.source.save()
    [original] = ingested(source, text="buy zorblax now")
    cases_triage(case_ids=[original.pk], config=engine_config)
    first = decide_next(moderator, DecisionIn(action=Decision.Action.CONFIRM))
    callbacks.callback_deliver(decision_id=first.pk)

    response = appeal(source, "post-1", {"reason": "I was selling my own bike"})
    assert response.status_code == 201
    appeal_case = Case.objects.get(pk=response.json()["case_id"])
    cases_triage(case_ids=[appeal_case.pk], config=engine_config)

    appeal_case.refresh_from_db()
    assert appeal_case.state == Case.State.APPEALED
    assert appeal_case.priority == 90 and appeal_case.route_reason.startswith("appeal")
    assert appeal_case.queued_at is not None  # "waiting since" in the queue, and keyset order
    [result] = TriageResult.objects.filter(case=appeal_case)
    assert (result.tier, result.reasoning_effort) == ("escalation", "high")

    # Moderators see it waiting, but only senior moderators may take it.
    assert services.case_claim_next(moderator=moderator) is None
    senior = Client()
    senior.force_login(senior_moderator)
    assert case_ids_in(senior.get("/queue/?appeals=on").content) == [appeal_case.pk]
    assert senior.post("/queue/next")["Location"] == f"/cases/{appeal_case.pk}/"
    response = senior.post(f"/cases/{appeal_case.pk}/decide", {"action": "overturn", "final_label": "safe"})
    assert response.status_code == 302

    settled = Decision.objects.get(case=appeal_case)
    callbacks.callback_deliver(decision_id=settled.pk)
    assert CallbackDelivery.objects.filter(decision=settled, succeeded=True).count() == 1
    bodies = [json.loads(r.body) for r in callback_receiver.received]
    assert [(b["case_id"], b["is_appeal"], b["outcome"]) for b in bodies] == [
        (original.pk, False, "violates"),
        (appeal_case.pk, True, "safe"),
    ]
    assert source.get_item("post-1").json()["status"] == "resolved"


def test_an_appeal_without_an_engine_goes_straight_to_senior_moderators(
    source: ApiClient, moderator: User, senior_moderator: User
) -> None:
    decided_item(source, moderator)
    response = appeal(source, "post-1", {"reason": "please look again"})
    appeal_case = Case.objects.get(pk=response.json()["case_id"])
    cases_triage(case_ids=[appeal_case.pk], config=NO_ENGINE)
    appeal_case.refresh_from_db()
    assert appeal_case.state == Case.State.APPEALED
    assert services.case_claim_next(moderator=moderator) is None
    assert services.case_claim_next(moderator=senior_moderator) == appeal_case


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_appeals_open_one_case(policy: Policy) -> None:
    api = source_api_client("acme", [policy])
    [case] = ingested(api)
    Case.objects.filter(pk=case.pk).update(state=Case.State.DECIDED)
    callers = 6
    start = threading.Barrier(callers)
    answers: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def appeal_once() -> None:
        try:
            start.wait()
            opened, created = services.appeal_open(case=case, reason="again", actor=api.source)
            answers.append((opened.pk, created))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=appeal_once) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len({pk for pk, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False] * (callers - 1) + [True]
    assert Case.objects.filter(appeal_of=case).count() == 1
