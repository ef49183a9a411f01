"""The ingestion rules without HTTP: what a stream consumer or a file import would call."""

from __future__ import annotations

import json

import pytest

from moderation import ingestion
from moderation.models import ContentItem
from policies.models import Policy
from tests.conftest import ApiClient, source_api_client


def test_a_transcript_is_stored_as_sent_and_judged_as_its_rendered_text(source: ApiClient) -> None:
    body = json.dumps(
        {
            "external_id": "t1",
            "transcript": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        }
    )

    [ingested] = ingestion.items_receive(source=source.source, items=ingestion.items_parse(body))

    stored = ContentItem.objects.get(pk=ingested.item_id)
    assert ingested.created and len(ingested.case_ids) == 1
    assert stored.text == "user: hi\nassistant: yo"
    assert stored.transcript == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_it_refuses_invalid_items_with_field_errors_and_stores_nothing() -> None:
    with pytest.raises(ingestion.ItemsRefused) as refused:
        ingestion.items_parse(
            json.dumps({"items": [{"external_id": "a", "text": "ok"}, {"external_id": "b"}]})
        )

    assert refused.value.detail == "invalid items; nothing was stored"
    assert refused.value.errors == [{"loc": ["items", 1], "msg": "give exactly one of text or transcript"}]
    with pytest.raises(ingestion.ItemsRefused, match="not valid JSON"):
        ingestion.items_parse(b"{")


def test_only_new_items_spend_the_budget(policy: Policy) -> None:
    source = source_api_client("small", [policy], rate_limit_per_minute=2).source
    first = ingestion.items_parse(
        json.dumps({"items": [{"external_id": "a", "text": "x"}, {"external_id": "b", "text": "y"}]})
    )
    ingestion.items_receive(source=source, items=first)

    again = ingestion.items_receive(source=source, items=first)
    with pytest.raises(ingestion.BudgetExceeded) as exceeded:
        ingestion.items_receive(
            source=source, items=ingestion.items_parse(json.dumps({"external_id": "c", "text": "z"}))
        )

    assert [i.created for i in again] == [False, False]
    assert exceeded.value.retry_after_seconds >= 1
    assert sorted(ContentItem.objects.values_list("external_id", flat=True)) == ["a", "b"]
