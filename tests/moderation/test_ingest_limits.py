"""Issue 14: bounded work per item. Metadata is limited in keys, depth and size; `.` and `..` are not ids;
re-sending stored items does not spend the source's per-minute budget."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moderation.models import ContentItem
from policies.models import Policy
from tests.conftest import ApiClient, source_api_client

pytestmark = pytest.mark.hostile


def item(external_id: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"external_id": external_id, "text": "hello", **extra}


def refusal(response: Any) -> str:
    assert response.status_code == 400, response.content
    [error] = response.json()["errors"]
    assert ContentItem.objects.count() == 0
    return f"{error['loc']} {error['msg']}"


def test_it_refuses_metadata_with_too_many_keys_counted_across_levels(
    source: ApiClient, settings: Any
) -> None:
    settings.INGEST_METADATA_MAX_KEYS = 10
    nested = {f"k{i}": {"a": 1} for i in range(6)}  # 6 + 6 = 12 keys, only 6 at the top

    says = refusal(source.post_items(item(metadata=nested)))

    assert "'metadata'" in says
    assert "more than 10 keys" in says


def test_it_refuses_the_hundred_thousand_key_metadata_of_the_report(source: ApiClient) -> None:
    metadata = {f"k{i}": i for i in range(100_000)}

    assert "keys" in refusal(source.post_items(item(metadata=metadata)))


def test_it_accepts_metadata_at_the_key_limit(source: ApiClient, settings: Any) -> None:
    settings.INGEST_METADATA_MAX_KEYS = 10
    metadata = {f"k{i}": {"a": 1} for i in range(5)}

    assert source.post_items(item(metadata=metadata)).status_code == 201


def test_it_refuses_metadata_nested_deeper_than_the_setting(source: ApiClient, settings: Any) -> None:
    settings.INGEST_METADATA_MAX_DEPTH = 3
    accepted = source.post_items(item("ok", metadata={"a": {"b": {"c": 1}}}))
    refused = source.post_items(item("deep", metadata={"a": {"b": {"c": [1]}}}))

    assert accepted.status_code == 201, accepted.content
    assert refused.status_code == 400
    assert "nested deeper than 3 levels" in refused.json()["errors"][0]["msg"]


def test_it_keeps_the_stricter_of_the_setting_and_the_built_in_nesting_limit(
    source: ApiClient, settings: Any
) -> None:
    settings.INGEST_METADATA_MAX_DEPTH = 1000
    nested = "[" * 40 + "]" * 40

    response = source.post_items('{"external_id": "a", "text": "x", "metadata": {"a": ' + nested + "}}")

    assert "nested deeper than 32 levels" in refusal(response)


def test_it_refuses_metadata_larger_than_the_byte_limit(source: ApiClient, settings: Any) -> None:
    settings.INGEST_METADATA_MAX_BYTES = 1000
    fits = {"note": "é" * 480}  # 960 UTF-8 bytes of value + the JSON around it: under 1000
    too_big = {"note": "é" * 500}

    assert source.post_items(item("fits", metadata=fits)).status_code == 201
    response = source.post_items(item("big", metadata=too_big))

    assert response.status_code == 400
    assert "larger than 1000 bytes" in response.json()["errors"][0]["msg"]


def test_the_default_limits_are_documented_ones(settings: Any) -> None:
    assert settings.INGEST_METADATA_MAX_KEYS == 100
    assert settings.INGEST_METADATA_MAX_DEPTH == 8
    assert settings.INGEST_METADATA_MAX_BYTES == 16384


@pytest.mark.parametrize("external_id", [".", ".."])
def test_it_refuses_dot_and_dot_dot_as_external_ids(source: ApiClient, external_id: str) -> None:
    says = refusal(source.post_items(item(external_id)))

    assert "external_id" in says
    assert "'.' or '..'" in says


def test_it_accepts_ids_that_merely_contain_dots(source: ApiClient) -> None:
    response = source.post_items({"items": [item("..."), item(".a"), item("a..b")]})

    assert response.status_code == 201, response.content


def test_it_does_not_count_re_sent_items_against_the_budget(policy: Policy) -> None:
    api = source_api_client("small", [policy], rate_limit_per_minute=3)
    batch = {"items": [item("a"), item("b"), item("c")]}
    assert api.post_items(batch).status_code == 201

    again = api.post_items(batch)
    mixed = api.post_items({"items": [item("a"), item("b"), item("d")]})

    assert again.status_code == 200, again.content
    assert again.json()["existing"] == 3
    assert mixed.status_code == 429  # "d" is new and the minute's 3 items are spent
    assert sorted(ContentItem.objects.values_list("external_id", flat=True)) == ["a", "b", "c"]


def test_a_batch_of_only_stored_items_is_answered_even_with_the_budget_spent(policy: Policy) -> None:
    api = source_api_client("tiny", [policy], rate_limit_per_minute=1)
    assert api.post_items(item("a")).status_code == 201
    assert api.post_items(item("b")).status_code == 429

    response = api.post_items(json.dumps(item("a")))

    assert response.status_code == 200
    assert response.json()["items"][0]["status"] == "existing"
