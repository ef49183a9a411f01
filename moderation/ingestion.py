"""The ingestion rules every way in goes through: the API today, a stream consumer or a file import later.

A body is validated into items (``items_parse``: JSON, then the item schema's rules), a transcript is
rendered into the text the engine judges, and only items new to the source spend its per-minute budget
(``items_receive``), before ``services.items_ingest`` stores them. Refusals are exceptions that say what
was wrong; the caller turns them into its own answer (the API: its error shape and status code).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pydantic

from moderation import services
from moderation.models import Source
from moderation.ratelimit import source_rate_limit_take
from moderation.schemas import BatchIn, ItemIn


class ItemsRefused(Exception):
    """The body or its items break the rules: nothing was stored. ``errors`` are per field."""

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class BudgetExceeded(Exception):
    """The source sent more new items this minute than its rate limit allows: nothing was stored."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("rate limit exceeded for this source; retry later")
        self.retry_after_seconds = retry_after_seconds


def field_errors(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as {"loc", "msg"}, the message being our validators' own sentence."""
    return [
        {
            "loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
            # pydantic prefixes our validators' sentences with "Value error, ": the sentence is the message.
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
        }
        for e in raw
    ]


def items_parse(body: bytes | str) -> list[ItemIn]:
    """One item, or a batch as {"items": [...]}, validated; ItemsRefused says why not."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ItemsRefused(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ItemsRefused("body is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ItemsRefused('body must be a JSON object: one item, or {"items": [...]}')
    try:
        if "items" in data:
            return BatchIn.model_validate(data).items
        return [ItemIn.model_validate(data)]
    except pydantic.ValidationError as exc:
        raise ItemsRefused("invalid items; nothing was stored", field_errors(exc.errors())) from exc


def _item_for_storage(item: ItemIn) -> services.ItemIn:
    # A transcript is stored as sent, and judged as its rendered text.
    turns = [t.model_dump() for t in item.transcript] if item.transcript is not None else None
    text = item.text if item.text is not None else services.transcript_render(turns or [])
    return services.ItemIn(external_id=item.external_id, text=text, transcript=turns, metadata=item.metadata)


def items_receive(*, source: Source, items: Sequence[ItemIn]) -> list[services.IngestedItem]:
    """Store validated items from ``source`` (see services.items_ingest); BudgetExceeded when its new items
    would overspend the source's budget.

    Re-sent items are answered from what is stored and cost nothing: only new ones spend the budget. The
    lookup is handed to the storing service, which neither scans nor inserts them again.
    """
    stored = services.items_stored(source, [i.external_id for i in items])
    limit = source_rate_limit_take(source, len(items) - len(stored))
    if not limit.allowed:
        raise BudgetExceeded(limit.retry_after_seconds)
    return services.items_ingest(source=source, items=[_item_for_storage(i) for i in items], stored=stored)
