"""Browser tests: Debian's chromium, driven by Playwright's sync API, against pytest-django's live server.

One browser for the whole package (it starts in about a second); a fresh context (cookies, storage)
per test. Every page a test opens is watched: a dialog, an uncaught error, a console error (CSP
violations land there too) or a failed request fails the test at teardown unless the test said
it expected it.

Playwright's sync API keeps an asyncio loop marked "running" on the main thread while it is started,
so Django would refuse ORM calls from the test's own code (SynchronousOnlyOperation) and
``asyncio.run`` would fail in any later test. The browser is therefore package-scoped (this directory
has an ``__init__.py``: without it "package" would mean all of tests/): the loop exists only while
these tests run, and DJANGO_ALLOW_ASYNC_UNSAFE is set for exactly that time (the test code is plain
synchronous code in a greenlet; nothing runs concurrently on its connection).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)
from pytest_django.live_server_helper import LiveServer

from accounts.roles import Role
from policies.models import Policy
from reviews.models import QueueGrant

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a moderator's long test password"
# Generous: a loaded 2-core machine can take seconds to render a page; passing tests never wait this long.
TIMEOUT_MS = 15_000
STATIC_ASSETS = ("/static/vendor/htmx/htmx.min.js", "/static/js/app.js", "/static/css/app.css")

# Records Content-Security-Policy violations of the current document (init scripts run before the page's
# own scripts and are not subject to its CSP).
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(
    event.effectiveDirective + " " + (event.blockedURI || "inline") + " at " + event.sourceFile + ":" +
      event.lineNumber + ":" + event.columnNumber + " " + event.sample
  );
});
"""


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it). "
            "Deselect these tests with -m 'not browser'."
        )
    expect.set_options(timeout=TIMEOUT_MS)
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@dataclass
class Tab:
    """A page in a fresh browser context, and everything it reported."""

    page: Page
    base_url: str
    javascript: bool = True
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    static: dict[str, int] = field(default_factory=dict)
    expected_errors: list[re.Pattern[str]] = field(default_factory=list)

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error}")

    def on_response(self, response: Response) -> None:
        path = response.url.removeprefix(self.base_url)
        if path.startswith("/static/"):
            self.static[path] = response.status

    def on_request_failed(self, request: Request) -> None:
        self.errors.append(f"request failed: {request.method} {request.url} {request.failure}")

    def expect_error(self, pattern: str) -> None:
        self.expected_errors.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected_errors)]

    def url(self, path: str) -> str:
        return self.base_url + path

    def path(self) -> str:
        return self.page.url.removeprefix(self.base_url)

    def login(self, user: User, password: str = PASSWORD, lands_on: str = "/queue/") -> None:
        self.page.goto(self.url("/"))
        expect(self.page).to_have_url(re.compile(r"/login/"))
        self.page.get_by_label("Username").fill(user.get_username())
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        expect(self.page).to_have_url(self.url(lands_on))
        if self.javascript:
            self.assert_assets_loaded()

    def ready(self) -> None:
        """Wait until the page's deferred scripts ran (URL assertions pass as soon as a navigation
        commits): keys pressed before app.js listens would be lost."""
        self.page.wait_for_load_state("load")
        self.page.wait_for_function("() => document.documentElement.classList.contains('js') && window.htmx")

    def assert_assets_loaded(self) -> None:
        """htmx 2 and app.js ran, the stylesheet applied: the live server really serves /static/."""
        self.page.wait_for_load_state("load")
        for asset in STATIC_ASSETS:
            # 304: the browser revalidated its copy (a file modified moments ago is not fresh for long).
            assert self.static.get(asset) in (200, 304), f"{asset} did not load: {self.static}"
        assert str(self.page.evaluate("() => window.htmx && window.htmx.version")).startswith("2."), (
            "htmx 2 is not running"
        )
        expect(self.page.locator("html")).to_have_class(re.compile(r"\bjs\b"))  # set by app.js
        background = self.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background != "rgba(0, 0, 0, 0)", "app.css was not applied"

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("() => window.__cspViolations"))


TabOpener = Callable[..., Tab]


@pytest.fixture
def open_tab(browser: Browser, live_server: LiveServer) -> Iterator[TabOpener]:
    """open_tab(javascript=True) -> a Tab in its own context; all of them are checked at teardown."""
    opened: list[tuple[BrowserContext, Tab]] = []

    def open_(*, javascript: bool = True) -> Tab:
        context = browser.new_context(
            viewport={"width": 1440, "height": 1000}, java_script_enabled=javascript
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        tab = Tab(page=page, base_url=live_server.url, javascript=javascript)
        page.on("dialog", tab.on_dialog)
        page.on("console", tab.on_console)
        page.on("pageerror", tab.on_page_error)
        page.on("response", tab.on_response)
        page.on("requestfailed", tab.on_request_failed)
        page.add_init_script(CSP_RECORDER)
        opened.append((context, tab))
        return tab

    yield open_
    for context, tab in opened:
        context.close()
        assert not tab.dialogs, f"a dialog opened: {tab.dialogs}"
        errors = tab.unexpected_errors()
        assert not errors, "the browser reported errors:\n" + "\n".join(errors)


@pytest.fixture
def tab(open_tab: TabOpener) -> Tab:
    return open_tab()


def screenshot(tab: Tab, name: str) -> None:
    """Saved only when BROWSER_SCREENSHOT_DIR is set (to look at the product; never committed)."""
    directory = os.environ.get("BROWSER_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        # caret="initial": hiding the caret injects a <style>, which the CSP (rightly) refuses.
        tab.page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True, caret="initial")


def user_with_role(username: str, role: Role, *, grants: list[Policy]) -> User:
    user = User.objects.create_user(username, password=PASSWORD)
    # get_or_create: a transactional test before this one emptied the groups the migration made.
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)
    for policy in grants:
        QueueGrant.objects.create(user=user, policy=policy)
    return user


@pytest.fixture
def moderator(policy: Policy) -> User:
    return user_with_role("mona", Role.MODERATOR, grants=[policy])
