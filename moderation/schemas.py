"""Request and response bodies of the ingestion API (they are the OpenAPI document)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from ninja import Schema
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

EXTERNAL_ID_PATTERN = r"^[^/\x00-\x1f\x7f]{1,255}$"

# PostgreSQL stores neither NUL nor lone UTF-16 surrogates (valid JSON "\u0000", "\ud800"), nor NaN or
# infinite numbers in jsonb: refused here with a field error instead of failing the INSERT.
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _storable_text(value: str) -> str:
    if _UNSTORABLE_CHARACTER.search(value):
        raise ValueError("must not contain NUL (\\u0000) or unpaired surrogate (\\ud800-\\udfff) characters")
    return value


# A hard ceiling whatever INGEST_METADATA_MAX_DEPTH says: the walk and the page stay bounded.
METADATA_MAX_DEPTH = 32


def _storable_json(value: Any, *, max_depth: int = METADATA_MAX_DEPTH, max_keys: int | None = None) -> None:
    """Walked without recursion: metadata nested a thousand levels deep must be a 400, not a crash. Keys are
    counted across all levels and the walk stops at the first one over `max_keys`."""
    max_depth = min(max_depth, METADATA_MAX_DEPTH)
    keys = 0
    pending: list[tuple[Any, str, int]] = [(value, "", 0)]
    while pending:
        item, path, depth = pending.pop()
        if depth > max_depth:
            raise ValueError(f"{path}: nested deeper than {max_depth} levels")
        if isinstance(item, str):
            try:
                _storable_text(item)
            except ValueError as exc:
                raise ValueError(f"{path or 'value'} {exc}") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path or 'value'}: NaN and infinite numbers are not JSON")
        elif isinstance(item, dict):
            keys += len(item)
            if max_keys is not None and keys > max_keys:
                raise ValueError(f"has more than {max_keys} keys (counted across all levels)")
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                try:
                    _storable_text(key)
                except ValueError as exc:
                    raise ValueError(f"key {where!r} {exc}") from None
                pending.append((child, where, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))


def _storable_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _storable_json(
        value, max_depth=settings.INGEST_METADATA_MAX_DEPTH, max_keys=settings.INGEST_METADATA_MAX_KEYS
    )
    # Keys and depth are bounded by now, so this costs at most the body the request was allowed to send.
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > settings.INGEST_METADATA_MAX_BYTES:
        raise ValueError(f"is larger than {settings.INGEST_METADATA_MAX_BYTES} bytes as JSON ({size})")
    return value


def _reachable_external_id(value: str) -> str:
    # Clients and proxies normalise /items/. and /items/.. away: such an item could never be read back.
    if value in {".", ".."}:
        raise ValueError("external_id must not be '.' or '..'")
    return value


StorableStr = Annotated[StrictStr, AfterValidator(_storable_text)]

# The ingestion bodies (TranscriptTurn, ItemIn, BatchIn) are plain pydantic models, parsed by hand in api.py:
# ninja's Schema validates a model with extra="forbid" twice (once as given, once through its DjangoGetter),
# so a batch of items nested in BatchIn was validated four times over, a third of a batch request's CPU.
# api.py publishes their JSON schemas in the OpenAPI document itself.


class TranscriptTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: StorableStr


class ItemIn(BaseModel):
    # The document says what the validators below enforce: exactly one of text or transcript.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}, "transcript": {"not": {}}}},
                {
                    "required": ["transcript"],
                    "properties": {"transcript": {"type": "array"}, "text": {"not": {}}},
                },
            ]
        },
    )

    external_id: Annotated[StorableStr, AfterValidator(_reachable_external_id)] = Field(
        pattern=EXTERNAL_ID_PATTERN,
        description="Your id for the item: 1-255 characters, no '/' or control characters, not '.' or '..'. "
        "Re-sending an id is idempotent.",
        json_schema_extra={"not": {"enum": [".", ".."]}},
    )
    text: StorableStr | None = Field(
        default=None,
        description="The content. Give text or transcript.",
        json_schema_extra={"pattern": r"\S", "maxLength": settings.INGEST_MAX_TEXT_CHARS},
    )
    transcript: list[TranscriptTurn] | None = Field(
        default=None, min_length=1, max_length=500, description="A chat transcript, instead of text."
    )
    metadata: Annotated[dict[str, Any], AfterValidator(_storable_metadata)] = Field(
        default_factory=dict,
        description="Anything JSON; shown to moderators. At most "
        f"{settings.INGEST_METADATA_MAX_KEYS} keys counted across all levels, "
        f"{min(settings.INGEST_METADATA_MAX_DEPTH, METADATA_MAX_DEPTH)} levels deep and "
        f"{settings.INGEST_METADATA_MAX_BYTES} bytes as compact UTF-8 JSON.",
    )

    @field_validator("text")
    @classmethod
    def text_size(cls, text: str | None) -> str | None:
        if text is not None and not text.strip():
            raise ValueError("text must not be empty")
        if text is not None and len(text) > settings.INGEST_MAX_TEXT_CHARS:
            raise ValueError(f"text is longer than {settings.INGEST_MAX_TEXT_CHARS} characters")
        return text

    @model_validator(mode="after")
    def text_or_transcript(self) -> ItemIn:
        if (self.text is None) == (self.transcript is None):
            raise ValueError("give exactly one of text or transcript")
        if self.transcript is not None:
            size = sum(len(turn.content) for turn in self.transcript)
            if size > settings.INGEST_MAX_TEXT_CHARS:
                raise ValueError(f"transcript is longer than {settings.INGEST_MAX_TEXT_CHARS} characters")
        return self


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def external_ids_unique(self) -> BatchIn:
        seen: set[str] = set()
        for item in self.items:
            if item.external_id in seen:
                raise ValueError(f"external_id {item.external_id!r} appears twice in the batch")
            seen.add(item.external_id)
        return self


class IngestedItemOut(Schema):
    external_id: str
    id: int
    status: Literal["created", "existing"]
    case_ids: list[int]


class IngestOut(Schema):
    created: int
    existing: int
    items: list[IngestedItemOut]


class CaseOut(Schema):
    id: int
    policy: str
    policy_version: int
    state: str
    is_appeal: bool
    verdict: str | None
    confidence: str | None
    priority: int
    route_reason: str
    updated_at: datetime


class AppealStatusOut(Schema):
    case_id: int
    state: Literal["open", "decided"] = Field(description="decided: a senior moderator ruled on it.")
    reason: str
    opened_at: datetime | None
    final_label: Literal["violates", "safe"] | None = Field(description="The ruling, once decided.")
    rule_ids: list[str]
    decided_at: datetime | None


class PolicyOutcomeOut(Schema):
    """Where the item stands under one policy: what a lost callback would have said, and any appeal."""

    policy: str
    state: Literal["pending", "in_review", "decided"]
    final_label: Literal["violates", "safe"] | None = Field(
        description="The outcome: a decided appeal's ruling, else the decision (or the auto-clear / "
        "auto-action); null while nothing is decided."
    )
    rule_ids: list[str]
    decided_at: datetime | None
    decided_by: Literal["moderator", "auto_clear", "auto_action"] | None
    case_id: int = Field(description="The case judged under this policy (not the appeal).")
    decision_id: int | None = Field(description="The decision callbacks carry, if a moderator made it.")
    appeal: AppealStatusOut | None


class ItemStatusOut(Schema):
    external_id: str
    id: int
    status: Literal["pending", "in_review", "resolved"]
    received_at: datetime
    cases: list[CaseOut]
    outcomes: list[PolicyOutcomeOut] = Field(
        default_factory=list, description="Per policy: the final label, rule ids, when, and any appeal."
    )


class FieldError(Schema):
    loc: list[str | int]
    msg: str


class ErrorOut(Schema):
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


class AppealIn(Schema):
    model_config = ConfigDict(extra="forbid")

    policy: StorableStr | None = Field(
        default=None, description="Slug of the policy whose decision is appealed; needed when several apply."
    )
    reason: StorableStr = Field(min_length=1, max_length=5000, description="Why the user disagrees.")


class AppealOut(Schema):
    case_id: int
    appeal_of: int
    state: str
    created: bool
