"""Both APIs answer every 4xx in one shape, {"detail": "...", "errors": [...]}, in words for the caller (no
model or framework names); a refusal is logged once, without a traceback; the site has a favicon."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.roles import Role
from audit.tokens import api_token_create
from policies.models import Policy
from tests.conftest import ApiClient
from tests.reviews.helpers import user_create

INTERNAL_WORDS = ("ContentItem", "Case", "matches the given query", "Not Found:", "Traceback", "ninja")


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["errors"], list)
    for word in INTERNAL_WORDS:
        assert word not in response.content.decode(), (word, body)
    return body


def auth(api: ApiClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.api_key}"}


def test_an_unknown_item_is_a_404_in_the_error_shape(source: ApiClient) -> None:
    status = assert_error_shape(source.get_item("no-such-item"), 404)
    appeal = assert_error_shape(
        source.client.post(
            "/api/v1/items/no-such-item/appeals",
            {"reason": "unfair"},
            content_type="application/json",
            headers=auth(source),
        ),
        404,
    )
    assert status["detail"] == appeal["detail"] == "no item with that external_id"


def test_an_unknown_path_and_the_api_root_are_404s_in_the_error_shape(source: ApiClient) -> None:
    for path in ("/api/v1/", "/api/v1/nothing-here", "/api/v1/items/a/b/c", "/api/v1/audit/nope"):
        body = assert_error_shape(source.client.get(path, headers=auth(source)), 404)
        assert body["detail"] == "no such API endpoint; see /api/v1/openapi.json"


def test_a_wrong_method_is_a_405_in_the_error_shape(source: ApiClient) -> None:
    response = source.client.delete("/api/v1/items", headers=auth(source))
    body = assert_error_shape(response, 405)
    assert body["detail"] == "DELETE is not allowed here; use POST"
    assert response["Allow"] == "POST"
    assert_error_shape(source.client.put("/api/v1/items/a", headers=auth(source)), 405)


def test_401_403_400_and_413_share_the_shape(source: ApiClient, settings: Any, db: None) -> None:
    client = Client()
    assert_error_shape(client.get("/api/v1/items/a"), 401)
    assert_error_shape(client.get("/api/v1/audit/events", headers={"Authorization": "Bearer nope"}), 401)
    _, token = api_token_create(user=user_create("mona", Role.MODERATOR), name="not an auditor")
    forbidden = client.get("/api/v1/audit/events", headers={"Authorization": f"Bearer {token}"})
    assert assert_error_shape(forbidden, 403)["detail"] == "only auditors and admins export"
    body = assert_error_shape(source.post_items({"external_id": "a"}), 400)
    assert body["errors"] and {"loc", "msg"} <= set(body["errors"][0])
    settings.INGEST_MAX_BODY_BYTES = 10
    assert_error_shape(source.post_items({"external_id": "a", "text": "a text longer than ten bytes"}), 413)


def test_pydantic_field_errors_read_as_sentences(auditor_token: str) -> None:
    response = Client().get(
        "/api/v1/audit/statements", {"format": "csv"}, headers={"Authorization": f"Bearer {auditor_token}"}
    )
    [error] = assert_error_shape(response, 400)["errors"]
    assert error["msg"].startswith("statements of reasons are JSON records")


@pytest.fixture
def auditor_token(db: None) -> str:
    return api_token_create(user=user_create("audrey", Role.AUDITOR), name="t")[1]


def forbidden_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and "Forbidden" in r.getMessage()]


def test_a_refused_page_is_logged_once_in_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture, policy: Policy
) -> None:
    client = Client()
    client.force_login(user_create("audrey", Role.AUDITOR))
    with caplog.at_level(logging.INFO):
        response = client.get("/policies/")

    assert response.status_code == 403
    assert b"Only policy editors manage policies." in response.content  # the 403 page still explains
    [record] = forbidden_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.exc_info is None and record.exc_text is None
    assert record.getMessage() == "Forbidden: GET /policies/ (audrey): Only policy editors manage policies."
    assert not [r for r in caplog.records if r.exc_info]


def test_a_refused_api_call_is_logged_once_without_a_traceback(
    caplog: pytest.LogCaptureFixture, db: None
) -> None:
    user: User = user_create("mona", Role.MODERATOR)
    _, token = api_token_create(user=user, name="not an auditor")
    with caplog.at_level(logging.INFO):
        response = Client().get("/api/v1/audit/events", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 403
    [record] = forbidden_records(caplog)
    assert (
        record.getMessage() == "Forbidden: GET /api/v1/audit/events (mona): only auditors and admins export"
    )
    assert not [r for r in caplog.records if r.exc_info]


def test_the_favicon_is_linked_and_served(settings: Any, db: None) -> None:
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    client = Client()
    login_page = client.get("/login/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in login_page

    redirect = client.get("/favicon.ico")
    assert redirect.status_code == 302 and redirect["Location"] == "/static/favicon.svg"
    icon = client.get(redirect["Location"])
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    assert icon.getvalue().startswith(b"<svg")
