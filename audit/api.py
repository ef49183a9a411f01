"""The export API for auditors: `Authorization: Bearer <personal API token>` (made on the audit page)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from django.contrib.auth.models import User
from django.http import HttpRequest, QueryDict, StreamingHttpResponse
from ninja import Query, Router, Schema
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer
from pydantic import Field, field_validator

from audit import exports
from audit.forms import ExportForm
from audit.tokens import api_token_user
from moderation.schemas import ErrorOut


class UserTokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> User:
        user = api_token_user(token)
        if user is None:
            raise HttpError(401, "unknown or revoked API token")
        return user


router = Router(auth=UserTokenAuth(), tags=["audit exports"])


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class ExportFilters(Schema):
    since: datetime | None = Field(default=None, description="Start of the time range (ISO 8601), included.")
    until: datetime | None = Field(default=None, description="End of the time range (ISO 8601), excluded.")
    policy: str | None = Field(default=None, max_length=100, description="A policy's slug.")
    actor: str | None = Field(
        default=None,
        max_length=200,
        description="Events: the actor's label (username, source slug or 'system'). "
        "Decisions and statements: the moderator's username.",
    )

    @field_validator("since", "until", mode="before")
    @classmethod
    def iso_8601_only(cls, value: object) -> object:
        # Pydantic would also read a bare number as seconds since 1970: the document promises ISO 8601.
        if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
            raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T00:00:00Z")
        return value


class EventFilters(ExportFilters):
    format: Literal["csv", "jsonl"] = "csv"
    action: str | None = Field(default=None, max_length=64, description="An event action, e.g. case.decided.")


class DecisionFilters(ExportFilters):
    format: Literal["csv", "jsonl"] = "csv"
    action: Literal["confirm", "overturn", "escalate"] | None = None
    include_reasoning: bool = Field(
        default=False,
        description="Add the model's chain of thought (column model_chain_of_thought). Needs the admin "
        "role or the reviews.export_reasoning permission; 403 otherwise.",
    )


class StatementFilters(ExportFilters):
    format: Literal["jsonl"] = Field(
        default="jsonl", description="Statements of reasons are JSON records: JSON Lines only."
    )

    @field_validator("format", mode="before")
    @classmethod
    def json_lines_only(cls, value: object) -> object:
        if value == "csv":
            raise ValueError("statements of reasons are JSON records: use format=jsonl (CSV is not offered)")
        return value


STREAM_RESPONSES = {
    200: {
        "description": "The export, streamed (no row cap).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}
ERRORS: dict[int, type[ErrorOut]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut}


def _export(request: HttpRequest, kind: str, filters: Schema) -> StreamingHttpResponse:
    user: User = request.auth  # type: ignore[attr-defined]
    if not exports.user_may_export(user):
        raise HttpError(403, "only auditors and admins export")
    # A misspelt filter must not silently widen an export to everything.
    unknown = sorted(set(request.GET) - set(type(filters).model_fields))
    if unknown:
        raise NinjaValidationError([{"loc": ["query", name], "msg": "unknown parameter"} for name in unknown])
    # The audit page's form makes the checks that need the database (policy exists, range, per-kind rules).
    data = QueryDict(mutable=True)
    for name, value in filters.model_dump(exclude_none=True).items():
        data[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    data["kind"] = kind
    data.setdefault("format", "jsonl")
    if data.get("include_reasoning") == "False":
        del data["include_reasoning"]
    form = ExportForm(data)
    if not form.is_valid():
        raise NinjaValidationError(
            [
                {"loc": ["query", field], "msg": error["message"]}
                for field, errors in form.errors.get_json_data().items()
                for error in errors
            ]
        )
    export = form.export_request()
    try:
        stream = exports.export_start(user=user, request=export, via="api")
    except exports.ExportRefused as exc:
        raise HttpError(403, str(exc)) from exc
    return stream_response(stream, export)


def stream_response(stream: Any, export: exports.ExportRequest) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type=exports.CONTENT_TYPES[export.format])
    response["Content-Disposition"] = f'attachment; filename="{export.filename()}"'
    response["Cache-Control"] = "no-store"
    return response


@router.get(
    "/events",
    response={**ERRORS},
    openapi_extra={"responses": STREAM_RESPONSES},
    summary="Export audit events (hash chain included) as CSV or JSON Lines",
)
def events_export(request: HttpRequest, filters: Query[EventFilters]) -> StreamingHttpResponse:
    return _export(request, exports.Kind.EVENTS, filters)


@router.get(
    "/decisions",
    response={**ERRORS},
    openapi_extra={"responses": STREAM_RESPONSES},
    summary="Export decisions with the item, policy version, model verdict and human decision",
)
def decisions_export(request: HttpRequest, filters: Query[DecisionFilters]) -> StreamingHttpResponse:
    return _export(request, exports.Kind.DECISIONS, filters)


@router.get(
    "/statements",
    response={**ERRORS},
    openapi_extra={
        "responses": {
            200: {
                "description": "One EU DSA statement of reasons (Transparency Database fields) per line.",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        }
    },
    summary="Export DSA statements of reasons for every decision that restricted content",
)
def statements_export(request: HttpRequest, filters: Query[StatementFilters]) -> StreamingHttpResponse:
    return _export(request, exports.Kind.STATEMENTS, filters)
