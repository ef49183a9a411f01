"""Users and their roles: made here (the createuser command, the demo data), never by hand in a view."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.roles import Role
from audit import services as audit
from policies.models import Policy
from reviews.models import QueueGrant

# Roles that review queues; a queue grant given to anyone else would do nothing.
QUEUE_ROLES = {Role.MODERATOR, Role.SENIOR_MODERATOR}


class UserRefused(Exception):
    """The user cannot be made as asked; the message says why, in words for the person running it."""


def role_parse(name: str) -> Role:
    try:
        return Role(name)
    except ValueError:
        choices = ", ".join(f"'{r.value}'" for r in Role)
        raise UserRefused(f"unknown role '{name}': choose one of {choices}") from None


def policies_parse(slugs: Sequence[str]) -> list[Policy]:
    policies = list(Policy.objects.filter(slug__in=slugs).order_by("slug"))
    missing = sorted(set(slugs) - {p.slug for p in policies})
    if missing:
        raise UserRefused(f"unknown queue (policy slug): {', '.join(missing)}")
    return policies


@transaction.atomic
def user_create(
    *,
    username: str,
    role: Role,
    password: str,
    policies: Sequence[Policy] = (),
    actor: User | None = None,
    via: str = "",
    validate: bool = True,
) -> User:
    """A user in one role group, granted the given queues (policies), audited as `user.created`."""
    if User.objects.filter(username=username).exists():
        raise UserRefused(f"a user named '{username}' already exists")
    if policies and role not in QUEUE_ROLES:
        raise UserRefused(f"queue grants are for moderators and senior moderators, not for the '{role}' role")
    # An admin manages queue grants, sources and tokens in /admin/: Django staff and superuser as well.
    is_admin = role == Role.ADMIN
    user = User(username=username, is_staff=is_admin, is_superuser=is_admin)
    try:
        user.full_clean(exclude=["password"])
        if validate:
            validate_password(password, user)
    except ValidationError as exc:
        raise UserRefused("; ".join(exc.messages)) from exc
    user.set_password(password)
    user.save()
    # get_or_create: the migration makes the groups, but a flushed test database has none.
    group, _ = Group.objects.get_or_create(name=role.value)
    user.groups.add(group)
    QueueGrant.objects.bulk_create([QueueGrant(user=user, policy=p) for p in policies])
    audit.record(
        "user.created",
        actor=actor,
        obj=user,
        payload={"username": username, "role": role.value, "queues": [p.slug for p in policies], "via": via},
    )
    return user
