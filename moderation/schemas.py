"""Request and response bodies of the ingestion API (they are the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from ninja import Schema
from pydantic import ConfigDict, Field, StrictStr, field_validator, model_validator

EXTERNAL_ID_PATTERN = r"^[^/\x00-\x1f\x7f]{1,255}$"


class TranscriptTurn(Schema):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system"]
    content: StrictStr


class ItemIn(Schema):
    model_config = ConfigDict(extra="forbid")

    external_id: StrictStr = Field(
        pattern=EXTERNAL_ID_PATTERN,
        description="Your id for the item: 1-255 characters, no '/' or control characters. "
        "Re-sending an id is idempotent.",
    )
    text: StrictStr | None = Field(default=None, description="The content. Give text or transcript.")
    transcript: list[TranscriptTurn] | None = Field(
        default=None, min_length=1, max_length=500, description="A chat transcript, instead of text."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Anything; shown to moderators.")

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


class BatchIn(Schema):
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


class ItemStatusOut(Schema):
    external_id: str
    id: int
    status: Literal["pending", "in_review", "resolved"]
    received_at: datetime
    cases: list[CaseOut]


class FieldError(Schema):
    loc: list[str | int]
    msg: str


class ErrorOut(Schema):
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


class AppealIn(Schema):
    model_config = ConfigDict(extra="forbid")

    policy: StrictStr | None = Field(
        default=None, description="Slug of the policy whose decision is appealed; needed when several apply."
    )
    reason: StrictStr = Field(min_length=1, max_length=5000, description="Why the user disagrees.")


class AppealOut(Schema):
    case_id: int
    appeal_of: int
    state: str
    created: bool
