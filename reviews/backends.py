"""The authentication backend: Django's, with what every review request checks loaded in the same query."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.contrib.postgres.aggregates import ArrayAgg

from accounts.roles import roles_cache


class ReviewerModelBackend(ModelBackend):
    """Every request loads its user through get_user: the user's roles and queue grants come with it (one
    statement, not three), so the permission checks and queue filters of the request read no more rows."""

    def get_user(self, user_id: Any) -> User | None:
        user = (
            User._default_manager.annotate(
                group_names=ArrayAgg("groups__name", distinct=True, default=[]),
                granted_policy_ids=ArrayAgg("queue_grants__policy_id", distinct=True, default=[]),
            )
            .filter(pk=user_id)
            .first()
        )
        if user is None or not self.user_can_authenticate(user):
            return None
        roles_cache(user, [name for name in user.group_names if name])
        user.granted_policy_ids = [pk for pk in user.granted_policy_ids if pk is not None]
        return user
