"""The ingestion API for platforms: authenticated as a Source by API key, optionally HMAC-signed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, re_path
from ninja import NinjaAPI, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.params.functions import Path
from ninja.security import HttpBearer

from config.views import forbidden_logged
from moderation import ingestion, selectors
from moderation.models import ContentItem, Source
from moderation.schemas import (
    EXTERNAL_ID_PATTERN,
    AppealIn,
    AppealOut,
    BatchIn,
    ErrorOut,
    IngestOut,
    ItemIn,
    ItemStatusOut,
)
from moderation.signatures import SignatureRefused, signature_verify
from reviews import selectors as review_selectors
from reviews.services import AppealRefused, appeal_open

# An id no item can have (NUL, '/', control characters) is refused as a field error, never looked up.
ExternalIdPath = Annotated[str, Path(pattern=EXTERNAL_ID_PATTERN, max_length=255)]


class IngestionAPI(NinjaAPI):
    def _get_urls(self) -> list[URLResolver | URLPattern]:
        # Every answer under /api/v1/ has the error shape: a wrong method (ninja answers it in plain text)
        # and an unknown path (Django would render its HTML page) included.
        patterns: list[URLResolver | URLPattern] = []
        for p in super()._get_urls():
            if isinstance(p, URLPattern):
                # The root only gives ninja its prefix (its view raises Http404 outside any operation).
                view = _not_found if p.name == "api-root" else _json_method_not_allowed(p.callback)
                p = URLPattern(p.pattern, view, p.default_args, p.name)
            patterns.append(p)
        patterns.append(re_path(r"^.+$", _not_found, name="not_found"))
        return patterns

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        # POST /items parses its body by hand (one item or a batch); publish both shapes.
        schema = super().get_openapi_schema(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ItemIn, BatchIn):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        return schema


api = IngestionAPI(
    title="Safeguard review queue API",
    version="1",
    description=(
        "Send content for review and read its status. Authenticate with `Authorization: Bearer <api key>`. "
        "Sources that require signatures also send `X-Signature-Timestamp` (Unix seconds) and "
        "`X-Signature: sha256=<hex HMAC-SHA256 of '<timestamp>.<body>' with the source's secret>`; "
        "a signature is accepted once, within 5 minutes of its timestamp."
    ),
    urls_namespace="api",
    # ninja's docs page loads Swagger UI from a CDN with an inline script; config/views.api_docs serves
    # the same UI from npm under the strict CSP.
    docs_url=None,
)

ERRORS: dict[int, type[ErrorOut]] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    413: ErrorOut,
    429: ErrorOut,
    503: ErrorOut,
}


class SourceKeyAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Source:
        content_length = request.META.get("CONTENT_LENGTH") or "0"
        if content_length.isdigit() and int(content_length) > settings.INGEST_MAX_BODY_BYTES:
            raise HttpError(413, f"request body is larger than {settings.INGEST_MAX_BODY_BYTES} bytes")
        source = selectors.source_by_api_key(token)
        if source is None:
            raise HttpError(401, "unknown or revoked API key")
        signature = request.headers.get("X-Signature")
        if signature is not None or source.require_signature:
            try:
                signature_verify(
                    secret=source.hmac_secret,
                    timestamp=request.headers.get("X-Signature-Timestamp"),
                    signature=signature,
                    body=request.body,
                    window_seconds=settings.INGEST_SIGNATURE_WINDOW_SECONDS,
                    replay_scope=str(source.pk),
                )
            except SignatureRefused as exc:
                raise HttpError(403, str(exc)) from exc
            except redis.RedisError as exc:
                raise HttpError(503, "cannot check signatures for replay right now; retry") from exc
        return source


def _error_response(
    request: HttpRequest, status: int, detail: str, errors: list[Any] | None = None
) -> HttpResponse:
    return api.create_response(request, {"detail": detail, "errors": errors or []}, status=status)


def _json_method_not_allowed(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)  # keeps csrf_exempt
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if response.status_code != 405 or response.get("Content-Type", "").startswith("application/json"):
            return response
        allowed = response["Allow"]
        refused = _error_response(request, 405, f"{request.method} is not allowed here; use {allowed}")
        refused["Allow"] = allowed
        return refused

    return wrapper


def _not_found(request: HttpRequest) -> HttpResponse:
    return _error_response(request, 404, "no such API endpoint; see /api/v1/openapi.json")


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    # Django's message names models ("No ContentItem matches the given query."): never shown.
    return _error_response(request, 404, "not found")


def _item_of(source: Source, external_id: str) -> ContentItem:
    item = selectors.items_of_source(source).filter(external_id=external_id).first()
    if item is None:
        raise HttpError(404, "no item with that external_id")
    return item


@api.exception_handler(NinjaValidationError)
def validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    return _error_response(request, 400, "invalid request", ingestion.field_errors(exc.errors))


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    response = _error_response(request, exc.status_code, str(exc))
    if exc.status_code == 403:
        forbidden_logged(request, response, exc)
    return response


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error_response(request, 401, "send your API key as 'Authorization: Bearer <key>'")


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error_response(
        request, 413, f"request body is larger than {settings.INGEST_MAX_BODY_BYTES} bytes"
    )


@api.exception_handler(ingestion.ItemsRefused)
def items_refused(request: HttpRequest, exc: ingestion.ItemsRefused) -> HttpResponse:
    return _error_response(request, 400, exc.detail, exc.errors)


@api.exception_handler(ingestion.BudgetExceeded)
def budget_exceeded(request: HttpRequest, exc: ingestion.BudgetExceeded) -> HttpResponse:
    response = _error_response(request, 429, str(exc))
    response["Retry-After"] = str(exc.retry_after_seconds)
    return response


@api.post(
    "/items",
    auth=SourceKeyAuth(),
    response={200: IngestOut, 201: IngestOut, **ERRORS},
    summary="Send one item or a batch of up to 500",
    openapi_extra={
        "responses": {
            200: {"description": "Every item already existed: nothing was created."},
            201: {"description": "At least one item was created (the others already existed)."},
        },
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/ItemIn"},
                            {"$ref": "#/components/schemas/BatchIn"},
                        ]
                    }
                }
            },
        },
    },
)
def items_create(request: HttpRequest) -> HttpResponse:
    source: Source = request.auth  # type: ignore[attr-defined]
    ingested = ingestion.items_receive(source=source, items=ingestion.items_parse(request.body))
    created = sum(1 for i in ingested if i.created)
    # The body is IngestOut, built here as plain data: validating 500 items' worth of output models
    # again would cost as much as the service's own work for nothing (the shape is fixed right here).
    body = {
        "created": created,
        "existing": len(ingested) - created,
        "items": [
            {
                "external_id": i.external_id,
                "id": i.item_id,
                "status": "created" if i.created else "existing",
                "case_ids": i.case_ids,
            }
            for i in ingested
        ],
    }
    return api.create_response(request, body, status=201 if created else 200)


@api.get(
    "/items/{external_id}",
    auth=SourceKeyAuth(),
    response={200: ItemStatusOut, **ERRORS, 404: ErrorOut},
    summary="Status of an item and its cases",
)
def item_status(request: HttpRequest, external_id: ExternalIdPath) -> dict[str, Any]:
    source: Source = request.auth  # type: ignore[attr-defined]
    item = _item_of(source, external_id)
    return review_selectors.item_status(item)


@api.post(
    "/items/{external_id}/appeals",
    auth=SourceKeyAuth(),
    response={200: AppealOut, 201: AppealOut, **ERRORS, 404: ErrorOut, 409: ErrorOut},
    summary="Appeal the decision on an item: re-judged at high effort and reviewed by a senior moderator",
)
def item_appeal(request: HttpRequest, external_id: ExternalIdPath, body: AppealIn) -> Status[dict[str, Any]]:
    source: Source = request.auth  # type: ignore[attr-defined]
    item = _item_of(source, external_id)
    try:
        case = selectors.case_appealable(item, policy_slug=body.policy)
    except selectors.NotAppealable as exc:
        raise HttpError(400 if exc.ambiguous else 404, str(exc)) from exc
    try:
        appeal, created = appeal_open(case=case, reason=body.reason, actor=source)
    except AppealRefused as exc:
        raise HttpError(409, str(exc)) from exc
    return Status(
        201 if created else 200,
        {"case_id": appeal.pk, "appeal_of": case.pk, "state": appeal.state, "created": created},
    )
