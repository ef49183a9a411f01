"""The engine settings page: the environment wins over what an admin saved, which wins over the defaults; the
API key is never shown or audited; "Test connection" sends one real request (the engine simulator here)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts.roles import Role
from audit.models import AuditEvent
from inference_worker import engine_check, engine_settings
from inference_worker.engine_settings import FIELDS
from inference_worker.models import EngineSettings
from inference_worker.runner import EngineConfig
from inference_worker.testing.engine_simulator import EngineSimulator
from policies.models import Policy, PolicyVersion
from tests.conftest import ClientFor
from tests.reviews.helpers import text_of, user_create

SECRET = "sk-test-0123456789abcdef"
FORM_FIELDS = [f.name for f in FIELDS if not f.secret]


@pytest.fixture(autouse=True)
def no_engine_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests decide which SAFEGUARD_* variables are set; the saved row is read afresh in each test."""
    for field in FIELDS:
        monkeypatch.delenv(field.env, raising=False)
        monkeypatch.delenv(f"{field.env}_FILE", raising=False)
    engine_settings.engine_settings_cache_clear()
    yield
    engine_settings.engine_settings_cache_clear()


@pytest.fixture
def admin(db: None) -> User:
    return user_create("ada", Role.ADMIN)


@pytest.fixture
def policy_editor(db: None) -> User:
    return user_create("pete", Role.POLICY_EDITOR)


def settings_post(client: Client, **fields: Any) -> Any:
    """The settings form as a browser sends it: every field, empty unless given."""
    data = {name: "" for name in FORM_FIELDS} | {"api_key": ""} | fields
    return client.post("/settings/engine", data)


def changes_audited() -> list[dict[str, Any]]:
    return [
        e.payload["changes"]
        for e in AuditEvent.objects.filter(action="engine.settings_changed").order_by("seq")
    ]


# --- precedence ------------------------------------------------------------------------------------


def test_without_a_saved_row_or_variables_the_defaults_apply(db: None, settings: Any) -> None:
    config = EngineConfig.from_settings()
    assert config.base_url == settings.SAFEGUARD_BASE_URL
    assert config.model == settings.SAFEGUARD_MODEL == "openai/gpt-oss-safeguard-20b"
    assert config.transport == "completions" and config.effort == "low"
    assert config.escalation_effort == "high"
    assert config.timeout_seconds == settings.SAFEGUARD_TIMEOUT_SECONDS


def test_what_an_admin_saves_wins_over_the_defaults(admin: User, client_for: ClientFor) -> None:
    response = settings_post(
        client_for(admin),
        base_url="http://gpu-host:8000/v1/",
        transport="chat",
        model="gpt-oss-safeguard:20b",
        effort="medium",
        timeout_seconds="45",
    )
    assert response.status_code == 302
    config = EngineConfig.from_settings()
    assert config.base_url == "http://gpu-host:8000/v1"  # a single-label host (compose) is fine
    assert (config.transport, config.model, config.effort) == ("chat", "gpt-oss-safeguard:20b", "medium")
    # The escalation model and the give-up delay follow the saved model and timeout, as their defaults do.
    assert config.escalation_model == "gpt-oss-safeguard:20b" and config.escalation_effort == "high"
    assert config.timeout_seconds == 45.0 and config.give_up_after_seconds == 45.0
    page = text_of(client_for(admin).get("/settings/engine").content)
    assert "Saved here (SAFEGUARD_MODEL is not set)." in page


def test_an_environment_variable_wins_over_the_saved_value_and_the_page_says_so(
    admin: User, settings: Any, monkeypatch: pytest.MonkeyPatch, client_for: ClientFor
) -> None:
    EngineSettings.objects.create(model="saved-model", base_url="http://saved:8000")
    monkeypatch.setenv("SAFEGUARD_MODEL", "env-model")
    settings.SAFEGUARD_MODEL = "env-model"  # what config/settings.py read from it at start
    assert EngineConfig.from_settings().model == "env-model"
    assert EngineConfig.from_settings().base_url == "http://saved:8000"  # its variable is not set

    client = client_for(admin)
    page = client.get("/settings/engine").content.decode()
    assert "Set by SAFEGUARD_MODEL in the environment: change it there." in page
    assert 'name="model" value="env-model"' in page and "disabled" in page.split('name="model"')[1][:80]
    # A posted value for it is ignored: the environment owns the field.
    assert settings_post(client, base_url="http://saved:8000", model="posted").status_code == 302
    assert EngineSettings.objects.get().model == "saved-model"
    assert EngineConfig.from_settings().model == "env-model"
    assert all("model" not in c for c in changes_audited())


def test_an_empty_variable_counts_as_not_set(admin: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_BASE_URL", "")
    EngineSettings.objects.create(base_url="http://saved:8000")
    assert EngineConfig.from_settings().base_url == "http://saved:8000"


def test_the_saved_row_is_read_once_per_period_and_at_once_after_a_save(
    admin: User, django_assert_num_queries: Any, client_for: ClientFor
) -> None:
    EngineSettings.objects.create(model="first")
    assert EngineConfig.from_settings().model == "first"
    with django_assert_num_queries(0):
        EngineConfig.from_settings()
    EngineSettings.objects.update(model="changed behind its back")
    assert EngineConfig.from_settings().model == "first"  # cached for CACHE_SECONDS
    settings_post(client_for(admin), model="saved on the page")
    assert EngineConfig.from_settings().model == "saved on the page"


def test_a_base_url_that_is_not_http_is_refused(admin: User, client_for: ClientFor) -> None:
    for url in ("ftp://host", "gpu-host:8000", "http://", "http://host:8000/?x=1", "http://a b"):
        response = settings_post(client_for(admin), base_url=url)
        assert response.status_code == 400, url
        assert "Not saved: check the fields marked below." in response.content.decode()
    assert not EngineSettings.objects.exists()


# --- the API key -----------------------------------------------------------------------------------


def test_the_api_key_is_never_shown_or_audited_and_can_be_cleared(admin: User, client_for: ClientFor) -> None:
    client = client_for(admin)
    assert settings_post(client, base_url="http://gpu-host:8000", api_key=SECRET).status_code == 302
    assert EngineConfig.from_settings().api_key == SECRET
    page = client.get("/settings/engine").content.decode()
    assert SECRET not in page
    assert '<strong id="api-key-status">set</strong>' in page
    assert "stored in this application's database" in page

    # Saving other fields with the key input left empty keeps it.
    settings_post(client, base_url="http://gpu-host:8000", model="other")
    assert EngineConfig.from_settings().api_key == SECRET
    settings_post(client, base_url="http://gpu-host:8000", model="other", clear_api_key="on")
    assert EngineConfig.from_settings().api_key == ""
    assert '<strong id="api-key-status">not set</strong>' in client.get("/settings/engine").content.decode()

    assert changes_audited() == [
        {"base_url": ["", "http://gpu-host:8000"], "api_key": ["not set", "changed"]},
        {"model": ["", "other"]},
        {"api_key": ["set", "not set"]},
    ]
    events = AuditEvent.objects.filter(action="engine.settings_changed")
    assert all(e.actor_label == "ada" and e.object_type == "inference_worker.enginesettings" for e in events)
    assert SECRET not in json.dumps([e.payload for e in AuditEvent.objects.all()])


def test_an_api_key_from_the_environment_is_only_said_to_be_set(
    admin: User, settings: Any, monkeypatch: pytest.MonkeyPatch, client_for: ClientFor
) -> None:
    monkeypatch.setenv("SAFEGUARD_API_KEY", SECRET)
    settings.SAFEGUARD_API_KEY = SECRET
    EngineSettings.objects.create(api_key="saved-key")
    assert EngineConfig.from_settings().api_key == SECRET
    page = text_of(client_for(admin).get("/settings/engine").content)
    assert SECRET not in page and "saved-key" not in page
    assert "API key: set · set by SAFEGUARD_API_KEY in the environment: change it there." in page
    settings_post(client_for(admin), api_key="posted", clear_api_key="on")
    assert EngineSettings.objects.get().api_key == "saved-key"


# --- who may open it -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.POLICY_EDITOR, Role.MODERATOR, Role.AUDITOR, Role.SENIOR_MODERATOR])
def test_everyone_but_admins_is_refused(db: None, role: str, client_for: ClientFor) -> None:
    client = client_for(user_create("someone", role))
    assert client.get("/settings/engine").status_code == 403
    assert settings_post(client, base_url="http://evil:8000").status_code == 403
    assert client.post("/settings/engine/test", {"text": "hello"}).status_code == 403
    assert not EngineSettings.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in(client: Client, db: None) -> None:
    for response in (client.get("/settings/engine"), client.post("/settings/engine/test")):
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_form_needs_its_csrf_token(admin: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    assert client.post("/settings/engine", {"base_url": "http://evil:8000"}).status_code == 403
    assert not EngineSettings.objects.exists()


def test_admins_see_the_engine_link_and_others_do_not(
    admin: User, policy_editor: User, client_for: ClientFor
) -> None:
    assert 'href="/settings/engine"' in client_for(admin).get("/metrics/").content.decode()
    assert 'href="/settings/engine"' not in client_for(policy_editor).get("/policies/").content.decode()


# --- test connection -------------------------------------------------------------------------------


def test_test_connection_sends_one_request_and_shows_the_verdict(
    admin: User, active_version: PolicyVersion, engine_simulator: EngineSimulator, client_for: ClientFor
) -> None:
    client = client_for(admin)
    settings_post(client, base_url=engine_simulator.base_url, model="openai/gpt-oss-safeguard-20b")
    response = client.post(
        "/settings/engine/test",
        {"policy": active_version.policy_id, "text": "buy followers now [[violates]]"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="engine-check"')  # the fragment only
    text = text_of(body)
    assert "Connected: openai/gpt-oss-safeguard-20b answered with a verdict in" in text
    assert "violates (high confidence)" in text and "SP1" in text
    assert "prompt (0 cached)" in text and "completion" in text
    assert "Reasoning (the model's chain of thought; may be wrong)" in text
    assert engine_simulator.stats.requests_total == 1
    # Without htmx (a reload, no JavaScript) it is the whole page with the result.
    page = client.post(
        "/settings/engine/test", {"policy": active_version.policy_id, "text": "a friendly hello"}
    )
    assert "<h1>Reasoning engine</h1>" in page.content.decode()
    assert "safe" in text_of(page.content) and engine_simulator.stats.requests_total == 2


def test_test_connection_reports_the_http_status(
    admin: User, active_version: PolicyVersion, engine_simulator: EngineSimulator, client_for: ClientFor
) -> None:
    engine_simulator.mode = "http_500"
    client = client_for(admin)
    settings_post(client, base_url=engine_simulator.base_url)
    response = client.post("/settings/engine/test", {"policy": active_version.policy_id, "text": "hello"})
    assert response.status_code == 200
    assert "engine unavailable (HTTP 500)" in text_of(response.content)
    assert engine_simulator.stats.requests_total == 1  # no retries from the page


def test_test_connection_gives_up_at_the_timeout(
    admin: User, active_version: PolicyVersion, engine_simulator: EngineSimulator, client_for: ClientFor
) -> None:
    engine_simulator.mode = "hang"
    client = client_for(admin)
    settings_post(client, base_url=engine_simulator.base_url, timeout_seconds="1")
    response = client.post("/settings/engine/test", {"policy": active_version.policy_id, "text": "hello"})
    text = text_of(response.content)
    assert "Failed after" in text and "timed out" in text and "no answer within 1 s" in text


def test_test_connection_says_when_the_reply_is_not_a_verdict(
    admin: User, active_version: PolicyVersion, engine_simulator: EngineSimulator, client_for: ClientFor
) -> None:
    engine_simulator.mode = "no_final"  # reasoning, then no final message
    config = dataclasses.replace(EngineConfig.from_settings(), base_url=engine_simulator.base_url)
    check = engine_check.engine_check(config=config, version=active_version, text="hello")
    assert check.unparseable and not check.ok and not check.error
    assert check.verdict is not None and check.verdict.label == "undetermined"
    client = client_for(admin)
    settings_post(client, base_url=engine_simulator.base_url)
    response = client.post("/settings/engine/test", {"policy": active_version.policy_id, "text": "hello"})
    text = text_of(response.content)
    assert "The engine answered, but its final message holds no verdict the parser can read" in text
    assert "Final message as received (none)" in text


def test_the_check_waits_at_most_thirty_seconds(db: None) -> None:
    config = EngineConfig.from_settings()
    assert engine_check.check_timeout_seconds(config) == min(config.timeout_seconds, 30.0)


def test_test_connection_without_an_engine_sends_nothing(
    admin: User, active_version: PolicyVersion, settings: Any, client_for: ClientFor
) -> None:
    settings.SAFEGUARD_BASE_URL = ""
    response = client_for(admin).post(
        "/settings/engine/test", {"policy": active_version.policy_id, "text": "hello"}
    )
    assert "no reasoning engine is connected: set its base URL" in text_of(response.content)


# --- the policy pages without an engine ------------------------------------------------------------


def test_without_an_engine_the_policy_page_explains_instead_of_offering_a_run(
    admin: User, policy_editor: User, policy: Policy, settings: Any, client_for: ClientFor
) -> None:
    settings.SAFEGUARD_BASE_URL = ""
    editor_page = client_for(policy_editor).get("/policies/spam/").content.decode()
    assert "Run evaluation on the golden set" not in editor_page
    assert "ask an admin to connect a reasoning engine" in editor_page
    assert 'href="/settings/engine"' not in editor_page
    admin_page = client_for(admin).get("/policies/spam/").content.decode()
    assert "Run evaluation on the golden set" not in admin_page
    assert '<a href="/settings/engine">connect one on the Engine page</a>' in admin_page
    # A run asked for anyway (an old tab) is refused with the same advice.
    refused = client_for(policy_editor).post("/policies/spam/runs", {"version": policy.versions.get().pk})
    assert refused.status_code == 409
    assert "Not started: no reasoning engine configured: ask an admin" in text_of(refused.content)

    # Once an admin saves a base URL, the button is there.
    settings_post(client_for(admin), base_url="http://gpu-host:8000")
    assert (
        "Run evaluation on the golden set"
        in client_for(policy_editor).get("/policies/spam/").content.decode()
    )
