"""Issue 14: everything an admin changes in /admin/ is an event in the hash-chained audit log (not only a
django_admin_log row), with what changed before and after, and never a secret."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from accounts.roles import Role
from audit import services as audit
from audit.models import AuditEvent
from policies.models import Policy
from reviews.models import QueueGrant
from tests.conftest import ApiClient
from tests.reviews.helpers import user_create

NEW_PASSWORD = "correct horse battery staple 14"


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.org", "not-used-in-tests")


@pytest.fixture
def admin_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.fixture(autouse=True)
def callback_hosts(settings: Any) -> None:
    # Named hosts pass the callback URL policy without a DNS lookup.
    settings.CALLBACK_ALLOWED_HOSTS = ["old.example.org", "new.example.org"]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def everything_logged() -> str:
    return json.dumps(list(AuditEvent.objects.values_list("payload", flat=True)))


def source_form(source: Any, **changes: Any) -> dict[str, Any]:
    data = {
        "name": source.name,
        "slug": source.slug,
        "callback_url": source.callback_url,
        "policies": [p.pk for p in source.policies.all()],
        "rate_limit_per_minute": source.rate_limit_per_minute,
        "is_active": "on" if source.is_active else "",
        "require_signature": "on" if source.require_signature else "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def user_form(user: User, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [],
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "",
        "last_login_1": "",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def test_changing_a_sources_callback_url_and_settings_is_audited_with_before_and_after(
    admin_client: Client, superuser: User, source: ApiClient
) -> None:
    stored = source.source
    stored.callback_url = "https://old.example.org/hooks"
    stored.save()

    response = admin_client.post(
        f"/admin/moderation/source/{stored.pk}/change/",
        source_form(
            stored,
            callback_url="https://new.example.org/hooks",
            require_signature="on",
            rate_limit_per_minute=50,
        ),
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    [event] = events("source.changed")
    assert event.actor_id == str(superuser.pk) and event.actor_label == "root"
    assert event.object_type == "moderation.source" and event.object_id == str(stored.pk)
    assert event.payload["changes"] == {
        "callback_url": ["https://old.example.org/hooks", "https://new.example.org/hooks"],
        "require_signature": [False, True],
        "rate_limit_per_minute": [120_000, 50],
    }
    logged = everything_logged()
    assert stored.hmac_secret not in logged and stored.api_key_hash not in logged
    assert audit.chain_verify().broken is None


def test_deactivating_a_source_and_changing_its_policies_is_audited(
    admin_client: Client, source: ApiClient, policy: Policy
) -> None:
    stored = source.source
    other = Policy.objects.create(slug="harassment", name="Harassment")

    admin_client.post(
        f"/admin/moderation/source/{stored.pk}/change/",
        source_form(stored, is_active="", policies=[policy.pk, other.pk]),
    )

    [event] = events("source.changed")
    assert event.payload["changes"] == {
        "is_active": [True, False],
        "policies": [["spam"], ["harassment", "spam"]],
    }


def test_saving_a_source_unchanged_records_nothing(admin_client: Client, source: ApiClient) -> None:
    response = admin_client.post(
        f"/admin/moderation/source/{source.source.pk}/change/", source_form(source.source)
    )

    assert response.status_code == 302
    assert events("source.changed") == []


def test_adding_and_deleting_a_queue_grant_is_audited(
    admin_client: Client, superuser: User, policy: Policy
) -> None:
    mona = user_create("mona", Role.MODERATOR)

    added = admin_client.post("/admin/reviews/queuegrant/add/", {"user": mona.pk, "policy": policy.pk})

    assert added.status_code == 302, added.content.decode()[:2000]
    grant = QueueGrant.objects.get(user=mona)
    [created] = events("queue_grant.created")
    assert created.object_id == str(grant.pk) and created.actor_label == "root"
    assert created.payload["fields"]["user"] == f"mona (#{mona.pk})"
    assert created.payload["fields"]["policy"] == f"spam (#{policy.pk})"

    deleted = admin_client.post(f"/admin/reviews/queuegrant/{grant.pk}/delete/", {"post": "yes"})

    assert deleted.status_code == 302
    assert not QueueGrant.objects.exists()
    [event] = events("queue_grant.deleted")
    assert event.object_id == str(grant.pk)
    assert event.payload["fields"]["user"] == f"mona (#{mona.pk})"


def test_deleting_grants_in_bulk_records_one_event_each(admin_client: Client, policy: Policy) -> None:
    grants = [QueueGrant.objects.create(user=user_create(name), policy=policy) for name in ("ann", "bob")]

    response = admin_client.post(
        "/admin/reviews/queuegrant/",
        {"action": "delete_selected", "_selected_action": [g.pk for g in grants], "post": "yes"},
    )

    assert response.status_code == 302
    assert not QueueGrant.objects.exists()
    assert sorted(e.object_id for e in events("queue_grant.deleted")) == sorted(str(g.pk) for g in grants)


def test_changing_a_users_groups_and_flags_is_audited(admin_client: Client, db: None) -> None:
    mona = user_create("mona", Role.MODERATOR)
    # The admin's date widgets drop microseconds, which would be a (true) change of its own.
    mona.date_joined = mona.date_joined.replace(microsecond=0)
    mona.save()
    senior, _ = Group.objects.get_or_create(name=Role.SENIOR_MODERATOR)
    moderators = Group.objects.get(name=Role.MODERATOR)

    response = admin_client.post(
        f"/admin/auth/user/{mona.pk}/change/",
        user_form(mona, groups=[moderators.pk, senior.pk], is_staff="on"),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    [event] = events("user.changed")
    assert event.object_id == str(mona.pk)
    assert event.payload["changes"] == {
        "is_staff": [False, True],
        "groups": [[Role.MODERATOR.value], sorted([Role.MODERATOR.value, Role.SENIOR_MODERATOR.value])],
    }
    assert mona.password not in everything_logged()


def test_changing_a_password_is_audited_without_the_hash(admin_client: Client, db: None) -> None:
    mona = user_create("mona", Role.MODERATOR)
    old_hash = mona.password

    response = admin_client.post(
        f"/admin/auth/user/{mona.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    mona.refresh_from_db()
    assert mona.check_password(NEW_PASSWORD)
    [event] = events("user.password_changed")
    assert event.object_id == str(mona.pk)
    assert event.payload["password"] == "changed"
    logged = everything_logged()
    assert old_hash not in logged and mona.password not in logged and NEW_PASSWORD not in logged


def test_adding_a_user_says_a_password_was_set_and_never_logs_it(admin_client: Client, db: None) -> None:
    response = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "newbie",
            "password1": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "usable_password": "true",
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    newbie = User.objects.get(username="newbie")
    [event] = events("user.created")
    assert event.payload["fields"]["password"] == "set"
    assert event.payload["fields"]["username"] == "newbie"
    logged = everything_logged()
    assert newbie.password not in logged and NEW_PASSWORD not in logged


def test_deleting_a_user_is_audited(admin_client: Client, db: None) -> None:
    mona = user_create("mona", Role.MODERATOR)

    response = admin_client.post(f"/admin/auth/user/{mona.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    [event] = events("user.deleted")
    assert event.object_id == str(mona.pk)
    assert event.payload["fields"]["groups"] == [Role.MODERATOR.value]
    assert event.payload["fields"]["password"] == "set"


def test_changing_a_groups_permissions_is_audited(admin_client: Client, db: None) -> None:
    group, _ = Group.objects.get_or_create(name=Role.AUDITOR)
    group.permissions.clear()
    permission = Permission.objects.get(codename="view_decision", content_type__app_label="reviews")

    response = admin_client.post(
        f"/admin/auth/group/{group.pk}/change/", {"name": group.name, "permissions": [permission.pk]}
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    [event] = events("group.changed")
    assert event.payload["changes"] == {"permissions": [[], ["reviews.view_decision"]]}
