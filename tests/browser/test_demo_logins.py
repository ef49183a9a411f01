"""The logins scripts/run prints (seed_demo): each demo user logs in and lands on its role's page."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from playwright.sync_api import expect

from tests.browser.conftest import TabOpener

pytestmark = pytest.mark.browser

DEMO_PASSWORD = "demo-password-for-the-browser"  # one word: the test reads it back from the output
# username -> (where the role lands, the heading of that page)
LANDINGS = {
    "admin": ("/queue/", "Review queue"),
    "moderator": ("/queue/", "Review queue"),
    "senior": ("/queue/", "Review queue"),
    "editor": ("/policies/", "Policies"),
    "auditor": ("/metrics/", "Metrics"),
}


def test_each_demo_user_logs_in_and_its_landing_page_loads(
    open_tab: TabOpener, transactional_db: None
) -> None:
    out = StringIO()
    call_command("seed_demo", "--admin-password", DEMO_PASSWORD, "--demo-password", DEMO_PASSWORD, stdout=out)
    printed = {
        line.split()[1]: line.split()[3]
        for line in out.getvalue().splitlines()
        if line.strip().startswith("login:")
    }
    assert set(printed) == set(LANDINGS)

    for username, (lands_on, heading) in LANDINGS.items():
        tab = open_tab()
        tab.login(User.objects.get(username=username), password=printed[username], lands_on=lands_on)
        expect(tab.page.get_by_role("heading", level=1, name=heading)).to_be_visible()
        if lands_on == "/queue/":
            # The reviewers see the demo policies' queues they were granted (admins see every queue).
            expect(tab.page.locator("main")).to_contain_text("Spam and scams")
            expect(tab.page.locator("main")).to_contain_text("Harassment and threats")
        assert not tab.csp_violations()
