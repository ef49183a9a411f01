"""A platform that lost a callback recovers the outcome from GET /api/v1/items/<external_id> (issue 16)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.roles import Role
from inference_worker.services import cases_triage
from inference_worker.testing.fixtures import engine_config_for
from moderation.models import Case
from policies.models import Policy
from reviews import services
from reviews.models import Decision
from reviews.services import DecisionIn
from tests.conftest import ApiClient
from tests.reviews.helpers import user_create

NO_ENGINE = engine_config_for("")


@pytest.fixture(autouse=True)
def no_qa_sampling(policy: Policy) -> None:
    Policy.objects.filter(pk=policy.pk).update(qa_sample_rate=0)


def item_status(api: ApiClient, external_id: str) -> Any:
    response = api.client.get(
        f"/api/v1/items/{external_id}", headers={"Authorization": f"Bearer {api.api_key}"}
    )
    assert response.status_code == 200, response.content
    return response.json()


def decide_next(moderator: User, decision: DecisionIn) -> Decision:
    case = services.case_claim_next(moderator=moderator)
    assert case is not None
    return services.case_decide(case=case, moderator=moderator, decision=decision)


def test_it_returns_the_decision_and_the_appeal_per_policy(source: ApiClient, policy: Policy) -> None:
    moderator = user_create("mona", Role.MODERATOR, grants=[policy])
    senior = user_create("sena", Role.SENIOR_MODERATOR, grants=[policy])
    assert source.post_items({"external_id": "post-1", "text": "buy zorblax now"}).status_code == 201
    [case] = Case.objects.filter(item__external_id="post-1")
    cases_triage(case_ids=[case.pk], config=NO_ENGINE)

    [waiting] = item_status(source, "post-1")["outcomes"]
    assert (waiting["policy"], waiting["state"], waiting["final_label"], waiting["appeal"]) == (
        "spam",
        "in_review",
        None,
        None,
    )

    decision = decide_next(
        moderator, DecisionIn(action=Decision.Action.DECIDED, final_label="violates", rule_ids=["SP2"])
    )
    [decided] = item_status(source, "post-1")["outcomes"]
    assert {k: decided[k] for k in ("state", "final_label", "rule_ids", "decided_by", "case_id")} == {
        "state": "decided",
        "final_label": "violates",
        "rule_ids": ["SP2"],
        "decided_by": "moderator",
        "case_id": case.pk,
    }
    assert decided["decision_id"] == decision.pk and decided["decided_at"]

    response = source.client.post(
        "/api/v1/items/post-1/appeals",
        json.dumps({"reason": "It was a joke between friends"}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {source.api_key}"},
    )
    assert response.status_code in (200, 201), response.content
    [appealed] = item_status(source, "post-1")["outcomes"]
    assert appealed["final_label"] == "violates"  # still the decision until the appeal is ruled on
    assert {k: appealed["appeal"][k] for k in ("state", "reason", "final_label")} == {
        "state": "open",
        "reason": "It was a joke between friends",
        "final_label": None,
    }

    appeal_case = Case.objects.get(appeal_of=case)
    cases_triage(case_ids=[appeal_case.pk], config=NO_ENGINE)
    ruling = decide_next(senior, DecisionIn(action=Decision.Action.DECIDED, final_label="safe"))
    [ruled] = item_status(source, "post-1")["outcomes"]
    assert (ruled["final_label"], ruled["rule_ids"], ruled["decision_id"]) == ("safe", [], ruling.pk)
    assert (ruled["appeal"]["state"], ruled["appeal"]["final_label"]) == ("decided", "safe")


def test_the_outcomes_are_in_the_openapi_document(client: Client) -> None:
    document = client.get("/api/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "outcomes" in schemas["ItemStatusOut"]["properties"]
    assert {"final_label", "rule_ids", "decided_at", "appeal"} <= set(
        schemas["PolicyOutcomeOut"]["properties"]
    )
    assert {"state", "reason", "final_label"} <= set(schemas["AppealStatusOut"]["properties"])
