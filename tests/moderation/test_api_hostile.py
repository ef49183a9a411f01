"""Hostile requests to the ingestion and appeal APIs: refused with a 4xx that says why, nothing stored.

Valid JSON that PostgreSQL cannot store (NUL, unpaired surrogates, NaN / infinite numbers) used to reach
the INSERT and answer 500. Signature gaps that tests/moderation/test_ingest_api.py leaves open are here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from moderation.models import ContentItem
from moderation.signatures import signature_compute
from policies.models import Policy
from tests.conftest import ApiClient, source_api_client

pytestmark = pytest.mark.hostile


@pytest.mark.parametrize(
    ("raw", "loc", "says"),
    [
        ('{"external_id": "a", "text": "x\\u0000y"}', ["text"], "NUL"),
        ('{"external_id": "a", "text": "x\\ud800y"}', ["text"], "surrogate"),
        (
            '{"external_id": "a", "transcript": [{"role": "user", "content": "\\u0000"}]}',
            ["transcript", 0, "content"],
            "NUL",
        ),
        (
            '{"external_id": "a", "text": "x", "metadata": {"k": [1, {"z": "\\udfff"}]}}',
            ["metadata"],
            "k[1].z",
        ),
        ('{"external_id": "a", "text": "x", "metadata": {"\\u0000": "v"}}', ["metadata"], "key"),
        ('{"external_id": "a", "text": "x", "metadata": {"n": NaN}}', ["metadata"], "NaN"),
        ('{"external_id": "a", "text": "x", "metadata": {"n": 1e400}}', ["metadata"], "infinite"),
    ],
)
def test_it_refuses_json_postgresql_cannot_store(
    source: ApiClient, raw: str, loc: list[Any], says: str
) -> None:
    response = source.post_items(raw)

    assert response.status_code == 400, response.content
    [error] = response.json()["errors"]
    assert error["loc"] == loc
    assert says in error["msg"]
    assert ContentItem.objects.count() == 0


@pytest.mark.parametrize("depth", [40, 900, 100_000])
def test_it_refuses_deeply_nested_json_with_a_400(source: ApiClient, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    item = source.post_items('{"external_id": "a", "text": "x", "metadata": {"a": ' + nested + "}}")
    appeal = source.client.post(
        "/api/v1/items/a/appeals",
        '{"reason": ' + nested + "}",
        content_type="application/json",
        headers={"Authorization": f"Bearer {source.api_key}"},
    )

    assert item.status_code == 400, item.content
    assert "nested" in item.content.decode()
    assert appeal.status_code == 400
    assert ContentItem.objects.count() == 0


def test_it_accepts_metadata_nested_to_the_limit(source: ApiClient, settings: Any) -> None:
    settings.INGEST_METADATA_MAX_DEPTH = 32  # the built-in ceiling; the default setting is stricter (8)
    nested = "[" * 31 + "]" * 31
    response = source.post_items('{"external_id": "a", "text": "x", "metadata": {"a": ' + nested + "}}")

    assert response.status_code == 201, response.content


def test_it_refuses_an_impossible_external_id_in_the_path(source: ApiClient) -> None:
    headers = {"Authorization": f"Bearer {source.api_key}"}
    status = source.client.get("/api/v1/items/a%00b", headers=headers)
    appeal = source.client.post(
        "/api/v1/items/%00/appeals", {"reason": "x"}, content_type="application/json", headers=headers
    )

    assert status.status_code == 400
    assert status.json()["errors"][0]["loc"] == ["path", "external_id"]
    assert appeal.status_code == 400


def test_it_refuses_an_appeal_reason_postgresql_cannot_store(source: ApiClient) -> None:
    source.post_items({"external_id": "p1", "text": "hello"})
    response = source.client.post(
        "/api/v1/items/p1/appeals",
        '{"reason": "unfair\\u0000"}',
        content_type="application/json",
        headers={"Authorization": f"Bearer {source.api_key}"},
    )

    assert response.status_code == 400
    assert "NUL" in response.json()["errors"][0]["msg"]


# Signatures ------------------------------------------------------------------------------------------------


def item() -> dict[str, Any]:
    return {"external_id": "signed-1", "text": "hello"}


def signature_headers(secret: str, raw: str, at: int) -> dict[str, str]:
    timestamp = str(at)
    return {
        "X-Signature": signature_compute(secret=secret, timestamp=timestamp, body=raw.encode()),
        "X-Signature-Timestamp": timestamp,
    }


@pytest.fixture
def signing_source(policy: Policy) -> ApiClient:
    return source_api_client("signer", [policy], require_signature=True)


def refused(api: ApiClient, raw: str, headers: dict[str, str]) -> str:
    response = api.post_items(raw, headers)
    assert response.status_code == 403, response.content
    assert ContentItem.objects.count() == 0
    detail: str = response.json()["detail"]
    return detail


def test_it_refuses_a_timestamp_from_the_future(signing_source: ApiClient) -> None:
    raw = json.dumps(item())
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()) + 301)

    assert "window" in refused(signing_source, raw, headers)


def test_it_accepts_a_timestamp_inside_the_window_on_either_side(signing_source: ApiClient) -> None:
    for offset, external_id in [(-290, "past"), (290, "future")]:
        raw = json.dumps({"external_id": external_id, "text": "hello"})
        headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()) + offset)
        assert signing_source.post_items(raw, headers).status_code == 201


@pytest.mark.parametrize("missing", ["X-Signature", "X-Signature-Timestamp"])
def test_it_refuses_a_request_missing_either_signature_header(
    signing_source: ApiClient, missing: str
) -> None:
    raw = json.dumps(item())
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))
    del headers[missing]

    assert "X-Signature and X-Signature-Timestamp headers are required" in refused(
        signing_source, raw, headers
    )


@pytest.mark.parametrize("timestamp", ["soon", "1.5e9", "", "+1700000000", "\u0661\u0667\u0660\u0660"])
def test_it_refuses_a_timestamp_that_is_not_unix_seconds(signing_source: ApiClient, timestamp: str) -> None:
    raw = json.dumps(item())
    headers = {
        "X-Signature": signature_compute(
            secret=signing_source.source.hmac_secret, timestamp=timestamp, body=raw.encode()
        ),
        "X-Signature-Timestamp": timestamp,
    }

    assert refused(signing_source, raw, headers)


def test_it_refuses_a_signature_with_non_ascii_characters(signing_source: ApiClient) -> None:
    raw = json.dumps(item())
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))
    headers["X-Signature"] = "sha256=\u00e9" + headers["X-Signature"][8:]

    assert "does not match" in refused(signing_source, raw, headers)


def test_it_refuses_a_signature_moved_to_another_timestamp(signing_source: ApiClient) -> None:
    raw = json.dumps(item())
    now = int(time.time())
    headers = signature_headers(signing_source.source.hmac_secret, raw, now)
    headers["X-Signature-Timestamp"] = str(now + 1)

    assert "does not match" in refused(signing_source, raw, headers)


def test_it_refuses_a_bare_hex_digest_without_the_scheme(signing_source: ApiClient) -> None:
    raw = json.dumps(item())
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))
    headers["X-Signature"] = headers["X-Signature"].removeprefix("sha256=")

    assert "does not match" in refused(signing_source, raw, headers)


def test_it_refuses_a_request_signed_by_its_source_but_sent_with_another_sources_key(
    signing_source: ApiClient, policy: Policy
) -> None:
    other = source_api_client("other-signer", [policy], require_signature=True)
    raw = json.dumps(item())
    # Signed with the signer's secret, authenticated as `other`: the key decides whose secret checks it.
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))

    assert "does not match" in refused(other, raw, headers)


def test_a_replay_is_refused_even_after_the_first_request_was_refused_for_its_body(
    signing_source: ApiClient,
) -> None:
    """A signed request that failed validation (400) still used its signature up: no second try."""
    raw = json.dumps({"external_id": "bad", "text": "   "})
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))
    assert signing_source.post_items(raw, headers).status_code == 400

    assert "replay" in refused(signing_source, raw, headers)


def test_a_signature_replayed_to_the_appeal_endpoint_is_refused(signing_source: ApiClient) -> None:
    raw = json.dumps(item())
    headers = signature_headers(signing_source.source.hmac_secret, raw, int(time.time()))
    assert signing_source.post_items(raw, headers).status_code == 201

    response = signing_source.client.post(
        "/api/v1/items/signed-1/appeals",
        raw,
        content_type="application/json",
        headers={"Authorization": f"Bearer {signing_source.api_key}", **headers},
    )
    assert response.status_code == 403
    assert "replay" in response.json()["detail"]


def test_an_unsigned_status_read_is_refused_when_the_source_requires_signatures(
    signing_source: ApiClient,
) -> None:
    response = signing_source.get_item("signed-1")

    assert response.status_code == 403
    assert "X-Signature" in response.json()["detail"]
