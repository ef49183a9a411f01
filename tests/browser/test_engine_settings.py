"""An admin connects the reasoning engine in the browser and tests the connection; a policy editor without an
engine is told what evaluation needs instead of being offered a run that fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker import engine_settings
from inference_worker.engine_settings import FIELDS
from inference_worker.models import EngineSettings
from inference_worker.runner import EngineConfig
from inference_worker.testing.engine_simulator import EngineSimulator
from policies.models import Policy, PolicyVersion
from tests.browser.conftest import Tab, screenshot, user_with_role
from tests.browser.test_policy_setup import log_in_as_policy_editor

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def no_engine_configured(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[None]:
    for field in FIELDS:
        monkeypatch.delenv(field.env, raising=False)
        monkeypatch.delenv(f"{field.env}_FILE", raising=False)
    settings.SAFEGUARD_BASE_URL = ""
    engine_settings.engine_settings_cache_clear()
    yield
    engine_settings.engine_settings_cache_clear()


def test_an_admin_connects_the_simulator_and_tests_the_connection(
    tab: Tab, active_version: PolicyVersion, engine_simulator: EngineSimulator
) -> None:
    tab.login(user_with_role("ada", Role.ADMIN, grants=[active_version.policy]))
    page = tab.page
    page.get_by_role("link", name="Engine").click()
    expect(page).to_have_url(tab.url("/settings/engine"))
    expect(page.locator("main")).to_contain_text("No reasoning engine is connected")
    expect(page.locator("#api-key-status")).to_have_text("not set")

    page.get_by_label("Base URL").fill(engine_simulator.base_url)
    page.get_by_label(re.compile(r"^Model:?$")).fill("openai/gpt-oss-safeguard-20b")
    page.get_by_label("Timeout per request (s)").fill("10")
    page.get_by_role("button", name="Save engine settings").click()
    expect(page.locator(".messages")).to_contain_text("Saved: Base URL, Model, Timeout per request (s).")
    expect(page.locator("main")).not_to_contain_text("No reasoning engine is connected")
    assert EngineConfig.from_settings().base_url == engine_simulator.base_url

    tab.ready()
    page.get_by_label("Policy").select_option(label="Spam")
    page.get_by_label("Sample text").fill("Cheap followers here [[violates]]")
    page.get_by_role("button", name="Test connection").click()
    result = page.locator("#engine-check")
    expect(result).to_contain_text("Connected: openai/gpt-oss-safeguard-20b answered with a verdict")
    expect(result.locator(".check-verdict")).to_have_text("violates (high confidence)")
    expect(result.locator(".check-latency")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(result).to_contain_text("SP1")
    expect(page).to_have_url(tab.url("/settings/engine"))  # htmx swapped the result in place
    screenshot(tab, "engine-settings-connected")
    assert engine_simulator.stats.requests_total == 1

    # A failing engine: the exact failure, in the same place.
    engine_simulator.mode = "http_500"
    page.get_by_role("button", name="Test connection").click()
    expect(result.locator(".check-error")).to_contain_text("engine unavailable (HTTP 500)")
    assert tab.csp_violations() == []
    event = AuditEvent.objects.get(action="engine.settings_changed")
    assert event.payload["changes"]["base_url"] == ["", engine_simulator.base_url]
    assert EngineSettings.objects.get().updated_by is not None


def test_a_policy_editor_without_an_engine_is_told_what_evaluation_needs(tab: Tab, policy: Policy) -> None:
    log_in_as_policy_editor(tab)
    page = tab.page
    expect(page.get_by_role("link", name="Engine")).to_have_count(0)
    page.get_by_role("link", name="Spam").click()
    expect(page.locator(".engine-needed")).to_contain_text("Evaluation needs a reasoning engine")
    expect(page.locator(".engine-needed")).to_contain_text("ask an admin to connect a reasoning engine")
    expect(page.get_by_role("button", name="Run evaluation on the golden set")).to_have_count(0)
    screenshot(tab, "policy-without-engine")
    assert tab.csp_violations() == []
