from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent
from moderation.models import Case, ContentItem
from moderation.signatures import signature_compute
from policies.models import Policy
from tests.conftest import ApiClient, source_api_client


def item(external_id: Any = "post-1", text: Any = "hello there", **extra: Any) -> dict[str, Any]:
    return {"external_id": external_id, "text": text, **extra}


def error_locs(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["errors"]]


def test_it_creates_an_item_with_one_case_per_active_policy(
    source: ApiClient, django_capture_on_commit_callbacks: Any, redis_test_db: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = source.post_items(item(metadata={"author": "u1"}))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == 1 and body["existing"] == 0
    stored = ContentItem.objects.get(source=source.source, external_id="post-1")
    assert stored.metadata == {"author": "u1"}
    case = Case.objects.get(item=stored)
    assert body["items"][0] == {
        "external_id": "post-1",
        "id": stored.pk,
        "status": "created",
        "case_ids": [case.pk],
    }
    assert case.state == Case.State.PENDING_TRIAGE
    assert AuditEvent.objects.filter(action="item.ingested", object_id=str(stored.pk)).count() == 1
    # Triage was published to the broker after commit.
    message = json.loads(redis_test_db.lindex("celery", 0))
    assert message["headers"]["task"] == "inference_worker.triage_cases"


def test_it_opens_cases_for_every_active_policy_of_the_source(source: ApiClient, policy: Policy) -> None:
    from policies import services as policy_services
    from tests.conftest import POLICY_TEXT

    other = Policy.objects.create(slug="harassment", name="Harassment")
    policy_services.policy_version_create(policy=other, text=POLICY_TEXT, activate=True)
    source.source.policies.add(other)
    response = source.post_items({"items": [item("a"), item("b")]})
    assert response.status_code == 201
    assert Case.objects.count() == 4
    assert all(len(i["case_ids"]) == 2 for i in response.json()["items"])


def test_it_is_idempotent_on_external_id(source: ApiClient) -> None:
    first = source.post_items({"items": [item("a"), item("b")]}).json()
    response = source.post_items({"items": [item("b", text="edited"), item("c")]})
    assert response.status_code == 201  # "c" is new
    second = response.json()
    assert second["created"] == 1 and second["existing"] == 1
    by_id = {i["external_id"]: i for i in second["items"]}
    assert by_id["b"]["status"] == "existing"
    assert by_id["b"]["id"] == first["items"][1]["id"]
    assert by_id["b"]["case_ids"] == first["items"][1]["case_ids"]
    assert ContentItem.objects.get(external_id="b").text == "hello there"
    assert ContentItem.objects.count() == 3 and Case.objects.count() == 3


def test_it_accepts_a_chat_transcript(source: ApiClient) -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
    response = source.post_items({"external_id": "chat-1", "transcript": turns})
    assert response.status_code == 201
    stored = ContentItem.objects.get(external_id="chat-1")
    assert stored.transcript == turns
    assert stored.text == "user: hi\nassistant: hello!"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"external_id": "x"}, []),  # neither text nor transcript: a model-level error
        (item(text=123), ["text"]),
        (item(text="   "), ["text"]),
        ({"external_id": 5, "text": "x"}, ["external_id"]),
        (item(external_id="a/b"), ["external_id"]),
        (item(external_id=""), ["external_id"]),
        (item(metadata="not an object"), ["metadata"]),
        (item(txt="typo"), ["txt"]),
        ({"external_id": "x", "text": "t", "transcript": [{"role": "user", "content": "t"}]}, []),
        ({"external_id": "x", "transcript": [{"role": "robot", "content": "t"}]}, ["transcript", 0, "role"]),
    ],
)
def test_it_refuses_bad_fields_with_field_errors(
    source: ApiClient, body: dict[str, Any], loc: list[Any]
) -> None:
    response = source.post_items(body)
    assert response.status_code == 400, response.content
    assert response.json()["errors"], "field errors are listed"
    assert any(e[: len(loc)] == loc for e in error_locs(response))
    assert ContentItem.objects.count() == 0


def test_it_refuses_text_over_the_limit(source: ApiClient, settings: Any) -> None:
    settings.INGEST_MAX_TEXT_CHARS = 50
    response = source.post_items(item(text="x" * 51))
    assert response.status_code == 400
    assert "longer than 50" in response.json()["errors"][0]["msg"]


def test_it_refuses_an_empty_batch_and_one_over_500(source: ApiClient) -> None:
    assert source.post_items({"items": []}).status_code == 400
    response = source.post_items({"items": [item(f"i{n}") for n in range(501)]})
    assert response.status_code == 400
    assert error_locs(response) == [["items"]]


def test_it_refuses_duplicate_external_ids_in_one_batch(source: ApiClient) -> None:
    response = source.post_items({"items": [item("a"), item("a")]})
    assert response.status_code == 400
    assert "appears twice" in response.json()["errors"][0]["msg"]


def test_it_writes_nothing_when_one_item_of_a_batch_is_bad(source: ApiClient) -> None:
    response = source.post_items({"items": [item("a"), item("b"), {"external_id": "c", "text": 7}]})
    assert response.status_code == 400
    assert error_locs(response) == [["items", 2, "text"]]
    assert (
        ContentItem.objects.count() == 0
        and Case.objects.count() == 0
        and AuditEvent.objects.filter(action="item.ingested").count() == 0
    )


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', ""])
def test_it_refuses_bodies_that_are_not_a_json_object(source: ApiClient, raw: str) -> None:
    response = source.post_items(raw)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_it_refuses_bodies_over_the_size_limit_with_413(source: ApiClient, settings: Any) -> None:
    settings.INGEST_MAX_BODY_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = source.post_items(item(text="x" * 2000))
    assert response.status_code == 413
    assert ContentItem.objects.count() == 0


def test_it_refuses_missing_wrong_and_revoked_keys(source: ApiClient, client: Any) -> None:
    missing = client.post("/api/v1/items", item(), content_type="application/json")
    assert missing.status_code == 401
    source.api_key = source.api_key[:-4] + "abcd"
    assert source.post_items(item()).status_code == 401
    source.api_key = "not-a-key"
    assert source.post_items(item()).status_code == 401
    assert ContentItem.objects.count() == 0


def test_it_refuses_a_deactivated_source(source: ApiClient) -> None:
    source.source.is_active = False
    source.source.save()
    assert source.post_items(item()).status_code == 401


def signed(
    api: ApiClient, body: dict[str, Any], *, secret: str | None = None, at: int | None = None
) -> tuple[str, dict[str, str]]:
    raw = json.dumps(body)
    timestamp = str(at if at is not None else int(time.time()))
    signature = signature_compute(
        secret=secret or api.source.hmac_secret, timestamp=timestamp, body=raw.encode()
    )
    return raw, {"X-Signature": signature, "X-Signature-Timestamp": timestamp}


@pytest.fixture
def signing_source(policy: Policy) -> ApiClient:
    return source_api_client("signer", [policy], require_signature=True)


def test_it_accepts_a_valid_signature(signing_source: ApiClient) -> None:
    raw, headers = signed(signing_source, item())
    assert signing_source.post_items(raw, headers).status_code == 201


def test_it_refuses_unsigned_requests_when_the_source_requires_signatures(signing_source: ApiClient) -> None:
    response = signing_source.post_items(item())
    assert response.status_code == 403
    assert "X-Signature" in response.json()["detail"]


def test_it_refuses_a_wrong_signature_and_another_sources_secret(
    signing_source: ApiClient, source: ApiClient
) -> None:
    raw, headers = signed(signing_source, item(), secret="guess")
    assert signing_source.post_items(raw, headers).status_code == 403
    raw, headers = signed(signing_source, item(), secret=source.source.hmac_secret)
    assert signing_source.post_items(raw, headers).status_code == 403
    raw, headers = signed(signing_source, item())
    assert signing_source.post_items(raw.replace("hello", "HELLO"), headers).status_code == 403
    assert ContentItem.objects.count() == 0


def test_it_refuses_a_stale_timestamp(signing_source: ApiClient) -> None:
    raw, headers = signed(signing_source, item(), at=int(time.time()) - 301)
    response = signing_source.post_items(raw, headers)
    assert response.status_code == 403
    assert "window" in response.json()["detail"]


def test_it_refuses_a_replayed_signature(signing_source: ApiClient) -> None:
    raw, headers = signed(signing_source, item())
    assert signing_source.post_items(raw, headers).status_code == 201
    replay = signing_source.post_items(raw, headers)
    assert replay.status_code == 403
    assert "replay" in replay.json()["detail"]


def test_it_checks_a_signature_sent_by_a_source_that_does_not_require_one(source: ApiClient) -> None:
    raw, headers = signed(source, item(), secret="wrong")
    assert source.post_items(raw, headers).status_code == 403


def test_it_rate_limits_a_source_and_writes_nothing_for_the_refused_batch(policy: Policy) -> None:
    api = source_api_client("small", [policy], rate_limit_per_minute=3)
    assert api.post_items({"items": [item("a"), item("b")]}).status_code == 201
    refused = api.post_items({"items": [item("c"), item("d")]})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert api.post_items(item("e")).status_code == 201
    assert sorted(ContentItem.objects.values_list("external_id", flat=True)) == ["a", "b", "e"]


def test_it_reports_the_status_of_an_item_and_its_cases(source: ApiClient, active_version: Any) -> None:
    source.post_items(item("post-9"))
    response = source.get_item("post-9")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "pending"
    assert body["cases"][0]["policy"] == "spam"
    assert body["cases"][0]["policy_version"] == active_version.number
    assert body["cases"][0]["state"] == "pending_triage"


def test_it_hides_items_of_other_sources(source: ApiClient, policy: Policy) -> None:
    source.post_items(item("mine"))
    other = source_api_client("other", [policy])
    hidden = other.get_item("mine")
    unknown = source.get_item("unknown")
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    # The same answer either way (nothing says the item exists elsewhere), in the error shape.
    assert hidden.json() == unknown.json() == {"detail": "no item with that external_id", "errors": []}


def test_it_answers_201_when_creating_and_200_when_everything_already_existed(source: ApiClient) -> None:
    created = source.post_items({"items": [item("a"), item("b")]})
    again = source.post_items({"items": [item("a"), item("b")]})
    one_new = source.post_items({"items": [item("a"), item("c")]})

    assert (created.status_code, again.status_code, one_new.status_code) == (201, 200, 201)
    assert (again.json()["created"], again.json()["existing"]) == (0, 2)
    assert (one_new.json()["created"], one_new.json()["existing"]) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_it_creates_exactly_one_item_under_two_concurrent_identical_requests(policy: Policy) -> None:
    api = source_api_client("racer", [policy])
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send() -> None:
        barrier.wait()
        statuses.append(api.post_items({"items": [item("same-1"), item("same-2")]}).status_code)
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 201]  # one created both items, the other found them stored
    assert ContentItem.objects.filter(external_id__startswith="same-").count() == 2
    assert Case.objects.count() == 2


def test_it_serves_an_openapi_document_that_describes_the_endpoints(client: Any) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    assert set(schema["paths"]) >= {"/api/v1/items", "/api/v1/items/{external_id}"}
    body = schema["paths"]["/api/v1/items"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    refs = {option["$ref"].rsplit("/", 1)[1] for option in body["oneOf"]}
    assert refs <= set(schema["components"]["schemas"])
    responses = schema["paths"]["/api/v1/items"]["post"]["responses"]
    assert {"200", "201", "400", "401", "403", "413", "429"} <= set(responses)
    assert responses["201"]["description"].startswith("At least one item was created")
    assert responses["200"]["description"].startswith("Every item already existed")
