"""Creating a policy from the UI and changing its settings: validation, audit, and what the change does."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from audit.models import AuditEvent
from moderation.models import Case
from policies import services as policy_services
from policies.lint import policy_lint
from policies.models import Policy, PolicyVersion
from tests.conftest import ApiClient
from tests.reviews.helpers import text_of


@pytest.fixture
def editor_client(client: Client, policy_editor: User) -> Client:
    client.force_login(policy_editor)
    return client


def settings_post(policy: Policy, **changes: object) -> dict[str, object]:
    """The settings form as it is filled in now, with ``changes``."""
    data: dict[str, object] = {
        "name": policy.name,
        "description": policy.description,
        "auto_clear_min_confidence": policy.auto_clear_min_confidence,
        "escalate_below_confidence": policy.escalate_below_confidence,
        "qa_sample_rate": policy.qa_sample_rate,
        "activation_tolerance": policy.activation_tolerance,
        "funnel_target_recall": policy.funnel_target_recall or "",
        "recall_confidence": policy.recall_confidence,
        "sources": [s.pk for s in policy.sources.all()],
    }
    for switch in ("auto_action_violations", "funnel_auto_clear", "reasoner_auto_clear", "rules_required"):
        if getattr(policy, switch):
            data[switch] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_it_creates_a_policy_from_the_outline_and_opens_its_first_draft(
    editor_client: Client, policy_editor: User, policy: Policy
) -> None:
    form = editor_client.get("/policies/new").content.decode()
    assert "the recommended outline, to fill in" in form and "a copy of Spam (v1, active)" in form
    response = editor_client.post(
        "/policies/new", {"name": "Hate speech", "slug": "", "description": "", "start_from": "outline"}
    )
    assert response.status_code == 302 and response["Location"] == "/policies/hate-speech/v1/"
    created = Policy.objects.get(slug="hate-speech")
    draft = created.versions.get()
    assert draft.is_draft and draft.author == policy_editor and draft.text.startswith("# Hate speech\n")
    assert draft.rule_ids == ["R1", "R2"]
    assert not [h for h in policy_lint(draft.text).hints if "Missing sections" in h or "Output" in h]
    assert list(
        AuditEvent.objects.filter(actor_label=policy_editor.username, action__startswith="policy.")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["policy.created", "policy.draft_created"]
    editor = editor_client.get("/policies/hate-speech/v1/").content.decode()
    assert "Policy Hate speech created with draft v1." in editor


def test_it_creates_a_policy_from_a_copy_of_an_active_one(
    editor_client: Client, active_version: PolicyVersion
) -> None:
    response = editor_client.post(
        "/policies/new",
        {"name": "Spam for the marketplace", "slug": "market-spam", "start_from": "spam"},
    )
    assert response.status_code == 302
    draft = Policy.objects.get(slug="market-spam").versions.get()
    assert draft.text == active_version.text and draft.number == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": "", "start_from": "outline"}, "This field is required."),
        (
            {"name": "Spam", "start_from": "outline"},
            "A policy with the slug &#x27;spam&#x27; already exists.",
        ),
        ({"name": "Other", "slug": "spam", "start_from": "outline"}, "already exists"),
        ({"name": "Other", "slug": "not a slug!", "start_from": "outline"}, "Enter a valid “slug”"),
        ({"name": "!!!", "start_from": "outline"}, "The name has no letters or digits"),
        ({"name": "Other", "start_from": "no-such-policy"}, "Select a valid choice."),
    ],
)
def test_it_refuses_a_bad_new_policy_with_the_reason(
    editor_client: Client, policy: Policy, data: dict[str, str], error: str
) -> None:
    response = editor_client.post("/policies/new", data)
    assert response.status_code == 400 and error in response.content.decode()
    assert Policy.objects.count() == 1
    assert not AuditEvent.objects.filter(action="policy.created").exists()


def test_the_service_refuses_a_slug_taken_meanwhile(policy: Policy, policy_editor: User) -> None:
    with pytest.raises(policy_services.PolicyRefused, match="already exists"):
        policy_services.policy_create(
            name="Spam 2", slug="spam", description="", text="# x", author=policy_editor
        )
    assert Policy.objects.count() == 1 and not PolicyVersion.objects.filter(number=2).exists()


def test_settings_change_routing_and_record_only_what_changed(
    editor_client: Client, policy: Policy, policy_editor: User, source: ApiClient
) -> None:
    page = editor_client.get("/policies/spam/settings").content.decode()
    assert 'value="0.05"' in page and "Acme" in page
    response = editor_client.post(
        "/policies/spam/settings",
        settings_post(policy, qa_sample_rate="0.2", activation_tolerance="0.05", funnel_target_recall="0.99"),
    )
    assert response.status_code == 302 and response["Location"] == "/policies/spam/"
    policy.refresh_from_db()
    assert (policy.qa_sample_rate, policy.activation_tolerance, policy.funnel_target_recall) == (
        0.2,
        0.05,
        0.99,
    )
    event = AuditEvent.objects.get(action="policy.settings_changed")
    assert event.actor_label == policy_editor.username
    assert event.payload["changes"] == {
        "qa_sample_rate": [0.05, 0.2],
        "activation_tolerance": [0.02, 0.05],
        "funnel_target_recall": [None, 0.99],
    }
    detail = editor_client.get("/policies/spam/").content.decode()
    assert "Saved: qa sample rate, activation tolerance, funnel target recall." in detail
    assert "activation tolerance 0.050" in detail

    again = editor_client.post("/policies/spam/settings", settings_post(policy))
    assert again.status_code == 302
    assert AuditEvent.objects.filter(action="policy.settings_changed").count() == 1


def test_auto_clear_switches_and_confidence_are_audited_as_before_and_after(
    editor_client: Client, policy: Policy
) -> None:
    data = settings_post(policy, recall_confidence="0.99")
    del data["funnel_auto_clear"]  # an unticked box
    response = editor_client.post("/policies/spam/settings", data)
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.funnel_auto_clear, policy.reasoner_auto_clear, policy.recall_confidence) == (
        False,
        True,
        0.99,
    )
    event = AuditEvent.objects.get(action="policy.settings_changed")
    assert event.payload["changes"] == {"recall_confidence": [0.95, 0.99], "funnel_auto_clear": [True, False]}


def test_rules_required_is_on_by_default_and_turning_it_off_is_audited(
    editor_client: Client, policy: Policy
) -> None:
    assert policy.rules_required is True
    page = editor_client.get("/policies/spam/settings").content.decode()
    assert "A violation names its rules" in page
    data = settings_post(policy)
    del data["rules_required"]  # an unticked box
    assert editor_client.post("/policies/spam/settings", data).status_code == 302
    policy.refresh_from_db()
    assert policy.rules_required is False
    event = AuditEvent.objects.get(action="policy.settings_changed")
    assert event.payload["changes"] == {"rules_required": [True, False]}


def test_linking_a_source_sends_its_new_items_to_the_policy(
    editor_client: Client, policy: Policy, source: ApiClient
) -> None:
    threats = Policy.objects.create(slug="threats", name="Threats")
    policy_services.policy_version_create(policy=threats, text="# Threats\n- TH1: threats", activate=True)
    assert source.post_items({"external_id": "before", "text": "hello"}).status_code == 201
    response = editor_client.post(
        "/policies/threats/settings", settings_post(threats, sources=[source.source.pk])
    )
    assert response.status_code == 302
    assert "sources: Acme" in text_of(editor_client.get("/policies/threats/").content)
    assert source.post_items({"external_id": "after", "text": "hello again"}).status_code == 201
    assert Case.objects.filter(item__external_id="before", policy_version__policy=threats).count() == 0
    assert Case.objects.filter(item__external_id="after", policy_version__policy=threats).count() == 1
    event = AuditEvent.objects.get(action="policy.settings_changed")
    assert event.payload["changes"] == {"sources": [[], ["acme"]]}

    editor_client.post("/policies/threats/settings", settings_post(threats, sources=[]))
    assert source.post_items({"external_id": "unlinked", "text": "bye"}).status_code == 201
    assert not Case.objects.filter(item__external_id="unlinked", policy_version__policy=threats).exists()


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("qa_sample_rate", "1.5", "Ensure this value is less than or equal to 1.0."),
        ("activation_tolerance", "-0.1", "Ensure this value is greater than or equal to 0.0."),
        ("funnel_target_recall", "0.3", "Ensure this value is greater than or equal to 0.5."),
        ("recall_confidence", "1", "Ensure this value is less than or equal to 0.999."),
        ("auto_clear_min_confidence", "certain", "Select a valid choice."),
        ("name", "", "This field is required."),
    ],
)
def test_settings_refuse_bad_values_and_change_nothing(
    editor_client: Client, policy: Policy, field: str, value: str, error: str
) -> None:
    response = editor_client.post("/policies/spam/settings", settings_post(policy, **{field: value}))
    body = response.content.decode()
    assert response.status_code == 400 and error in body and "Not saved" in body
    assert "<h1>Spam: settings</h1>" in body
    policy.refresh_from_db()
    assert (policy.name, policy.qa_sample_rate, policy.funnel_target_recall) == ("Spam", 0.05, None)
    assert not AuditEvent.objects.filter(action="policy.settings_changed").exists()
