"""Logging in as any persona (``Tab.login`` expects a moderator's landing page, the queue)."""

from __future__ import annotations

from django.contrib.auth.models import User
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, Tab


def log_in(tab: Tab, user: User) -> None:
    page = tab.page
    page.goto(tab.url("/login/"))
    page.get_by_label("Username").fill(user.get_username())
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).not_to_have_url(tab.url("/login/"))
    tab.assert_assets_loaded()
