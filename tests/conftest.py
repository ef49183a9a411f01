from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from accounts.roles import Role
from moderation import services
from moderation.models import Case, Source
from moderation.redis import redis_client
from policies import services as policy_services
from policies.models import Policy, PolicyVersion
from tests.reviews.helpers import CallbackReceiver, cases_create, user_create

pytest_plugins = ["inference_worker.testing.fixtures"]

TEST_REDIS_DB = int(os.environ["TEST_REDIS_DB"])  # set by pytest-env (pyproject.toml)

POLICY_TEXT = """# Spam policy (test)

## Instructions
Decide whether the content is spam. Answer with the JSON verdict described below.

## Rules
- SP1: Unsolicited commercial promotion repeated across conversations.
- SP2: Links that disguise their destination.

## Output
{"violation": 0|1, "policy_category": str|null, "rule_ids": [str], "confidence": "low"|"medium"|"high",
 "rationale": str}
"""


# What makes a test need the services (PostgreSQL, Redis). Fixture closures are transitive, so a test asking
# for `policy` or `moderator` uses `db` too. pytest-django's own autouse fixtures (django_db_blocker,
# _live_server_helper) are in every test's closure and say nothing.
SERVICE_FIXTURES = frozenset(
    {
        "db",
        "transactional_db",
        "django_db_reset_sequences",
        "django_db_serialized_rollback",
        "django_db_setup",
        "live_server",
        "redis_test_db",
    }
)
SERVICE_MARKERS = ("django_db", "browser", "stack", "faults")


def uses_services(item: pytest.Item) -> bool:
    """The test touches PostgreSQL or Redis: a database, a live server, the browser or the real stack, or
    Redis itself (a test that uses Redis without a database asks for `redis_test_db`)."""
    return bool(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
        item.get_closest_marker(name) for name in SERVICE_MARKERS
    )


# Loads torch and the embedding model (seconds): its tests need no service but stay out of `-m unit`.
SLOW_FIXTURES = frozenset({"sentence_model"})


def is_slow(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("slow") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every quick test that uses no service is `unit`: `pytest -m unit` runs without PostgreSQL and Redis.

    Decided from each test's fixtures and markers rather than a hand-kept list of modules, so a new pure test
    is a unit test at once and a test that starts using the database leaves the subset by itself. A test that
    reaches the database only through request.getfixturevalue() must ask for `db` itself to be seen here.
    Pure but slow tests (timing ratios, child processes, the embedding model) are marked `slow` and left out.
    """
    for item in items:
        if not uses_services(item) and not is_slow(item):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def redis_test_db() -> redis.Redis:
    """pyproject.toml points REDIS_URL and the broker at TEST_REDIS_DB; it is emptied before the test."""
    client = redis_client()
    assert client.connection_pool.connection_kwargs["db"] == TEST_REDIS_DB, (
        "tests never touch other Redis dbs"
    )
    client.flushdb()
    return client


@pytest.fixture(autouse=True)
def redis_emptied_for_service_tests(request: pytest.FixtureRequest) -> None:
    """Redis starts empty for every test that uses the services (autouse: before the test's own fixtures);
    unit tests never connect to it."""
    if uses_services(request.node):
        request.getfixturevalue("redis_test_db")


@pytest.fixture
def policy(db: None) -> Policy:
    policy = Policy.objects.create(slug="spam", name="Spam")
    policy_services.policy_version_create(policy=policy, text=POLICY_TEXT, activate=True)
    return policy


@pytest.fixture
def active_version(policy: Policy) -> PolicyVersion:
    return policy.versions.get(status=PolicyVersion.Status.ACTIVE)


@dataclass
class ApiClient:
    """A platform's view of the API: its source, its key, and a Django test client."""

    source: Source
    api_key: str
    client: Client

    def post_items(self, body: Any, headers: dict[str, str] | None = None) -> Any:
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(
            "/api/v1/items",
            raw,
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.api_key}", **(headers or {})},
        )

    def get_item(self, external_id: str) -> Any:
        return self.client.get(
            f"/api/v1/items/{external_id}", headers={"Authorization": f"Bearer {self.api_key}"}
        )


def source_api_client(slug: str, policies: list[Policy], **kwargs: Any) -> ApiClient:
    created = services.source_create(name=slug.title(), slug=slug, policies=policies, **kwargs)
    return ApiClient(source=created.source, api_key=created.api_key, client=Client())


@pytest.fixture
def source(policy: Policy) -> ApiClient:
    return source_api_client("acme", [policy])


ClientFor = Callable[[User], Client]


@pytest.fixture
def client_for() -> ClientFor:
    """client_for(user) -> a new test client logged in as `user` (force_login, itself a user.login event)."""

    def log_in(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return log_in


# Personas and factories of the review workflow, shared by every app's tests.


@pytest.fixture
def moderator(policy: Policy) -> User:
    return user_create("mona", Role.MODERATOR, grants=[policy])


@pytest.fixture
def other_moderator(policy: Policy) -> User:
    return user_create("otto", Role.MODERATOR, grants=[policy])


@pytest.fixture
def senior_moderator(policy: Policy) -> User:
    return user_create("sena", Role.SENIOR_MODERATOR, grants=[policy])


@pytest.fixture
def policy_editor(db: None) -> User:
    return user_create("pete", Role.POLICY_EDITOR)


@pytest.fixture
def auditor(db: None) -> User:
    return user_create("audrey", Role.AUDITOR)


@pytest.fixture
def admin(db: None) -> User:
    """In the admin group (not a Django superuser): sees every queue."""
    return user_create("ada", Role.ADMIN)


@pytest.fixture
def outsider(db: None) -> User:
    """A moderator of another team: no queue is granted to them."""
    return user_create("olaf", Role.MODERATOR)


CasesFactory = Callable[..., list[Case]]


@pytest.fixture
def queued_cases(policy: Policy, source: ApiClient) -> CasesFactory:
    """queued_cases(3, verdict="safe", priority=40, ...) -> cases waiting in the `policy` queue."""

    def make(count: int = 1, **fields: Any) -> list[Case]:
        return cases_create(policy, source.source, count, **fields)

    return make


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver
