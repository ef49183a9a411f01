"""An auditor makes an API token and downloads an export from the audit page, under the strict CSP."""

from __future__ import annotations

import csv
import io
import re

import pytest
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from policies.models import Policy
from tests.browser.conftest import PASSWORD, Tab, screenshot, user_with_role

pytestmark = pytest.mark.browser


def test_an_auditor_makes_a_token_and_downloads_the_audit_log(tab: Tab, policy: Policy) -> None:
    auditor = user_with_role("audrey", Role.AUDITOR, grants=[])
    page = tab.page
    page.goto(tab.url("/login/"))
    page.get_by_label("Username").fill(auditor.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Audit").click()
    expect(page).to_have_url(tab.url("/audit/log/"))
    expect(page.locator("#chain-check")).to_contain_text("match their hashes and link to each other")
    expect(page.get_by_role("cell", name="user.login")).to_be_visible()
    page.get_by_role("link", name="Exports and API tokens").click()
    expect(page).to_have_url(tab.url("/audit/"))

    page.get_by_label("Token name").fill("quarterly report")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_have_text(re.compile(r"^sgu_"))
    screenshot(tab, "audit-page")

    page.get_by_label("Kind").select_option("events")
    page.get_by_label("Format").select_option("csv")
    # Chromium reports a navigation that turns into a download as an aborted request.
    tab.expect_error(r"request failed: GET .*/audit/export\?.* net::ERR_ABORTED")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == "events.csv"
    rows = list(csv.DictReader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    assert [int(r["seq"]) for r in rows] == list(
        AuditEvent.objects.order_by("seq").values_list("seq", flat=True)
    )
    assert rows[-1]["action"] == "export.started"
