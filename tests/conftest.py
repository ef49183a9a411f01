from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from moderation import services
from moderation.models import Policy, PolicyVersion, Source
from moderation.redis import redis_client

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


@pytest.fixture(autouse=True)
def redis_test_db() -> redis.Redis:
    """pyproject.toml points REDIS_URL and the broker at TEST_REDIS_DB; it is emptied before each test."""
    client = redis_client()
    assert client.connection_pool.connection_kwargs["db"] == TEST_REDIS_DB, (
        "tests never touch other Redis dbs"
    )
    client.flushdb()
    return client


@pytest.fixture
def policy(db: None) -> Policy:
    policy = Policy.objects.create(slug="spam", name="Spam")
    services.policy_version_create(policy=policy, text=POLICY_TEXT, activate=True)
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
