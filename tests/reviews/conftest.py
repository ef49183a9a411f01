"""Personas and factories for the review workflow tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from accounts.roles import Role
from moderation.models import Case
from policies.models import Policy
from tests.conftest import ApiClient
from tests.reviews.helpers import CallbackReceiver, cases_create, user_create


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
