"""The API's Swagger UI is served from our own static files and runs under the strict CSP."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Tab

pytestmark = pytest.mark.browser


def test_the_api_docs_render_every_endpoint_without_a_cdn(tab: Tab) -> None:
    requested: list[str] = []
    tab.page.on("request", lambda request: requested.append(request.url))
    tab.page.goto(tab.url("/api/v1/docs"))
    expect(tab.page.get_by_text("/api/v1/items/{external_id}/appeals")).to_be_visible()
    expect(tab.page.get_by_text("Send one item or a batch of up to 500")).to_be_visible()
    assert all(url.startswith(tab.base_url) or url.startswith("data:") for url in requested), requested
