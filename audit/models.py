"""The audit log (an append-only hash chain every app writes) and personal API tokens.

The tables keep their first app's names (reviews_*): the models moved here without copying rows.
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from audit import keys


class AuditEvent(models.Model):
    """Append-only record of everything that happened. PostgreSQL refuses UPDATE and DELETE.

    A hash chain (audit/chain.py): `hash` covers this event's content and `prev_hash`, the hash of
    the event with the previous `seq`. Write through audit/services.py only: it takes the chain's lock.
    """

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.auditevent"

    class ActorKind(models.TextChoices):
        USER = "user"
        SOURCE = "source"
        SYSTEM = "system"

    # Position in the chain: 1, 2, 3... without gaps. Unique because appends are serialised
    # (audit/services.py), and each month's partition has a unique index on it: the table is partitioned by
    # month of created_at (config/partitions.py), so no index over the whole table is unique on seq alone.
    seq = models.BigIntegerField()
    # Set in Python before hashing (not auto_now_add) so the stored value is the hashed value; never earlier
    # than the previous event's, so each month holds one unbroken stretch of the chain.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        db_table = "reviews_auditevent"
        indexes: ClassVar = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["action", "created_at"], name="audit_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id}"


class ArchivedPartition(models.Model):
    """A month of a history table exported to a file and detached (reviews/history.py). Append-only.

    For the audit log it is the chain's anchor: verification starts after `last_seq`, from `last_hash`.
    """

    table = models.CharField(max_length=63)
    partition = models.CharField(max_length=63, unique=True)
    range_start = models.DateTimeField()
    range_end = models.DateTimeField()
    rows = models.BigIntegerField()
    file = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    # Audit log months only: the chain stretch the file holds (empty month: both None).
    first_seq = models.BigIntegerField(null=True, blank=True)
    last_seq = models.BigIntegerField(null=True, blank=True)
    last_hash = models.CharField(max_length=64, blank=True)
    # The history.partition_archived event that carries this manifest in the chain.
    event_seq = models.BigIntegerField()
    archived_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.partition} ({self.rows} rows) in {self.file}"


API_TOKEN_PREFIX = "sgu"  # noqa: S105 - a public prefix, not a secret


class ApiToken(models.Model):
    """A person's token for the export API (`Authorization: Bearer sgu_<id>_<secret>`); stored hashed."""

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.apitoken"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "reviews_apitoken"

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    def issue(self) -> str:
        """Set a new secret; returns the token, which is never stored in clear."""
        issued = keys.key_issue(API_TOKEN_PREFIX)
        self.key_id, self.key_hash = issued.key_id, issued.key_hash
        return issued.key

    def matches(self, token: str) -> bool:
        return keys.key_matches(self.key_hash, token)

    @staticmethod
    def key_id_of(token: str) -> str | None:
        return keys.key_id_of(API_TOKEN_PREFIX, token)
