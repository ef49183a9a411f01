"""manage.py createuser: a user in one role with its queue grants, audited; clear refusals."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from policies.models import Policy
from reviews.models import QueueGrant


def createuser(*args: str) -> str:
    out = StringIO()
    call_command("createuser", *args, stdout=out)
    return out.getvalue()


def test_it_creates_an_audited_moderator_with_its_queues(policy: Policy, tmp_path: Path) -> None:
    Policy.objects.create(slug="harassment", name="Harassment")
    password_file = tmp_path / "password"
    password_file.write_text("correct horse battery staple\n")
    out = createuser(
        "alice", "--role", "moderator", "--queues", "spam,harassment", "--password-file", str(password_file)
    )

    user = User.objects.get(username="alice")
    assert user.check_password("correct horse battery staple")
    assert list(user.groups.values_list("name", flat=True)) == ["moderator"]
    assert sorted(QueueGrant.objects.filter(user=user).values_list("policy__slug", flat=True)) == [
        "harassment",
        "spam",
    ]
    assert not user.is_staff
    assert "password" not in out  # it was given, so it is not printed
    event = AuditEvent.objects.get(action="user.created")
    assert event.object_id == str(user.pk)
    assert event.payload == {
        "username": "alice",
        "role": "moderator",
        "queues": ["harassment", "spam"],
        "via": "manage.py createuser",
    }


def test_without_a_terminal_it_generates_a_password_and_prints_it_once(db: None) -> None:
    out = createuser("audrey", "--role", "auditor")  # pytest's stdin is no terminal
    line = next(line for line in out.splitlines() if line.startswith("password:"))
    assert User.objects.get(username="audrey").check_password(line.split(":", 1)[1].strip())


def test_an_admin_gets_the_admin_site_too(db: None) -> None:
    createuser("ada", "--role", "admin", "--generate-password")
    user = User.objects.get(username="ada")
    assert user.is_staff and user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["admin"]


def test_it_refuses_an_unknown_role(db: None) -> None:
    with pytest.raises(CommandError, match="unknown role 'janitor': choose one of 'moderator'"):
        createuser("bob", "--role", "janitor", "--generate-password")
    assert not User.objects.filter(username="bob").exists()


def test_it_refuses_an_unknown_queue_and_creates_nothing(policy: Policy) -> None:
    with pytest.raises(CommandError, match=r"unknown queue \(policy slug\): nope"):
        createuser("bob", "--role", "moderator", "--queues", "spam,nope", "--generate-password")
    assert not User.objects.filter(username="bob").exists()
    assert not AuditEvent.objects.filter(action="user.created").exists()


def test_it_refuses_queues_for_a_role_that_reviews_none(policy: Policy) -> None:
    with pytest.raises(CommandError, match="queue grants are for moderators"):
        createuser("pete", "--role", "policy editor", "--queues", "spam", "--generate-password")


def test_it_refuses_a_taken_name_and_a_weak_password(db: None, tmp_path: Path) -> None:
    createuser("carol", "--role", "auditor", "--generate-password")
    with pytest.raises(CommandError, match="a user named 'carol' already exists"):
        createuser("carol", "--role", "auditor", "--generate-password")
    weak = tmp_path / "weak"
    weak.write_text("1234\n")
    with pytest.raises(CommandError, match="too short"):
        createuser("dave", "--role", "auditor", "--password-file", str(weak))
    assert not User.objects.filter(username="dave").exists()
