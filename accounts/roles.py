"""Roles: Django groups of these names (a superuser is an admin). Every app's permission checks start here."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AnonymousUser, User
from django.db import models


class Role(models.TextChoices):
    """Django groups; a user's role is the set of groups they belong to."""

    MODERATOR = "moderator"
    SENIOR_MODERATOR = "senior moderator"
    POLICY_EDITOR = "policy editor"
    AUDITOR = "auditor"
    ADMIN = "admin"


def user_roles(user: User | AnonymousUser) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached: set[str] | None = getattr(user, "_roles", None)
    if cached is None:
        cached = roles_cache(user, user.groups.values_list("name", flat=True))
    return cached


def roles_cache(user: User, group_names: Iterable[str]) -> set[str]:
    """The user's roles, kept on the user object for the rest of the request (see reviews/backends.py)."""
    roles = set(group_names)
    if user.is_superuser:
        roles.add(Role.ADMIN)
    user._roles = roles  # type: ignore[attr-defined]
    return roles
