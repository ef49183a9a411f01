"""DSA statements of reasons: one record per decision that restricted content, mapped per policy."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client

from moderation.models import Case, TriageResult
from policies.models import Policy, StatementOfReasonsMapping
from tests.audit.exports_helpers import decided_case, jsonl_rows
from tests.conftest import ApiClient, ClientFor
from tests.reviews.helpers import cases_create


def statements(client: Client, **params: str) -> list[dict[str, Any]]:
    rows = jsonl_rows(client.get("/audit/export", {"kind": "statements", "format": "jsonl", **params}))
    return rows


def auto_actioned_case(policy: Policy, source: ApiClient) -> Case:
    case = cases_create(policy, source.source, 1, state=Case.State.AUTO_ACTIONED)[0]
    TriageResult.objects.create(
        case=case, tier="safeguard", verdict="violates", confidence="high", rule_ids=["SP2"], rationale="link"
    )
    return case


def test_only_decisions_that_restricted_content_become_statements(
    auditor: User,
    moderator: User,
    senior_moderator: User,
    policy: Policy,
    source: ApiClient,
    client_for: ClientFor,
) -> None:
    restricted, _ = decided_case(policy, source, moderator)
    decided_case(policy, source, moderator, action="overturn", final_label="safe")
    decided_case(policy, source, moderator, model_verdict="safe", action="confirm", final_label="safe")
    decided_case(policy, source, moderator, action="escalate", final_label="")
    # A QA double-check of the restriction above restricts nothing new.
    decided_case(policy, source, senior_moderator, qa_of=restricted)
    auto = auto_actioned_case(policy, source)
    cases_create(policy, source.source, 1, state=Case.State.AUTO_CLEARED, verdict="safe")

    puids = [s["puid"] for s in statements(client_for(auditor))]
    assert len(puids) == 2
    assert puids[0].startswith(f"{source.source.slug}:{restricted.item.external_id}:decision-")
    assert puids[1] == f"{source.source.slug}:{auto.item.external_id}:case-{auto.pk}"


def test_the_automated_flags_say_who_decided(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    decided_case(policy, source, moderator, model_verdict="violates", action="confirm")
    decided_case(policy, source, moderator, model_verdict="safe", action="overturn", final_label="violates")
    auto_actioned_case(policy, source)
    confirmed, overturned, auto = statements(client_for(auditor))
    assert (confirmed["automated_detection"], confirmed["automated_decision"]) == (
        "Yes",
        "AUTOMATED_DECISION_PARTIALLY",
    )
    assert (overturned["automated_detection"], overturned["automated_decision"]) == (
        "No",
        "AUTOMATED_DECISION_NOT_AUTOMATED",
    )
    assert (auto["automated_detection"], auto["automated_decision"]) == ("Yes", "AUTOMATED_DECISION_FULLY")
    assert "human moderator" in confirmed["decision_facts"]
    assert "without human review" in auto["decision_facts"]


def test_a_policy_without_a_mapping_gets_the_terms_of_service_defaults(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    case, decision = decided_case(policy, source, moderator, rule_ids=("SP1",))
    (statement,) = statements(client_for(auditor))
    assert statement["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert statement["incompatible_content_ground"] == "Terms of service: Spam policy"
    assert statement["incompatible_content_illegal"] == "No"
    assert "illegal_content_legal_ground" not in statement
    assert statement["category"] == "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"
    assert statement["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_REMOVED"]
    assert statement["territorial_scope"] == ["EEA"]
    assert statement["content_type"] == ["CONTENT_TYPE_TEXT"]
    assert statement["source_type"] == "SOURCE_VOLUNTARY"
    assert statement["application_date"] == decision.created_at.date().isoformat()
    assert statement["content_date"] == case.item.received_at.date().isoformat()
    assert "SP1" in statement["decision_facts"] and "version 1" in statement["decision_facts"]


def test_the_policy_mapping_sets_ground_category_visibility_and_scope(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    StatementOfReasonsMapping.objects.create(
        policy=policy,
        decision_ground=StatementOfReasonsMapping.Ground.ILLEGAL_CONTENT,
        illegal_content_legal_ground="Unfair Commercial Practices Directive 2005/29/EC",
        illegal_content_explanation="Covert advertising is unlawful.",
        category=StatementOfReasonsMapping.Category.SCAMS_AND_FRAUD,
        category_by_rule={"SP2": StatementOfReasonsMapping.Category.RISK_FOR_PUBLIC_SECURITY.value},
        decision_visibility=[StatementOfReasonsMapping.Visibility.CONTENT_DEMOTED.value],
        territorial_scope=["DE", "FR"],
        source_type=StatementOfReasonsMapping.SourceType.ARTICLE_16,
    )
    decided_case(policy, source, moderator, rule_ids=("SP1",))
    decided_case(policy, source, moderator, rule_ids=("SP2",))
    by_rule_1, by_rule_2 = statements(client_for(auditor))
    assert by_rule_1["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert by_rule_1["illegal_content_legal_ground"] == "Unfair Commercial Practices Directive 2005/29/EC"
    assert by_rule_1["illegal_content_explanation"] == "Covert advertising is unlawful."
    assert "incompatible_content_ground" not in by_rule_1
    assert by_rule_1["category"] == "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"
    assert by_rule_2["category"] == "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY"
    assert by_rule_1["decision_visibility"] == ["DECISION_VISIBILITY_CONTENT_DEMOTED"]
    assert by_rule_1["territorial_scope"] == ["DE", "FR"]
    assert by_rule_1["source_type"] == "SOURCE_ARTICLE_16"


def test_statements_follow_the_policy_actor_and_time_filters(
    auditor: User,
    moderator: User,
    other_moderator: User,
    policy: Policy,
    source: ApiClient,
    client_for: ClientFor,
) -> None:
    _, first = decided_case(policy, source, moderator)
    _, second = decided_case(policy, source, other_moderator)
    auto_actioned_case(policy, source)
    client = client_for(auditor)
    assert len(statements(client, actor=moderator.username)) == 1
    assert len(statements(client, actor="system")) == 1
    assert len(statements(client, since=second.created_at.isoformat())) == 2  # second + the auto-action
    assert statements(client, policy="spam") == statements(client)
    assert [s["puid"] for s in statements(client, until=second.created_at.isoformat())] == [
        s["puid"] for s in statements(client) if s["puid"].endswith(f"decision-{first.pk}")
    ]


def test_the_mapping_refuses_unknown_categories_and_territories(policy: Policy) -> None:
    mapping = StatementOfReasonsMapping(
        policy=policy,
        decision_ground=StatementOfReasonsMapping.Ground.ILLEGAL_CONTENT,
        category_by_rule={"SP1": "SPAM"},
        territorial_scope=["DE", "XX"],
    )
    with pytest.raises(ValidationError) as raised:
        mapping.full_clean()
    assert set(raised.value.message_dict) == {
        "category_by_rule",
        "territorial_scope",
        "illegal_content_legal_ground",
    }
