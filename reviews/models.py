from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from moderation.models import Case, Policy


class AuditEvent(models.Model):
    """Append-only record of everything that happened. PostgreSQL refuses UPDATE and DELETE."""

    class ActorKind(models.TextChoices):
        USER = "user"
        SOURCE = "source"
        SYSTEM = "system"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_label = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["action", "created_at"], name="audit_action_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id}"


class Role(models.TextChoices):
    """Django groups; a user's role is the set of groups they belong to."""

    MODERATOR = "moderator"
    SENIOR_MODERATOR = "senior moderator"
    POLICY_EDITOR = "policy editor"
    AUDITOR = "auditor"
    ADMIN = "admin"


class QueueGrant(models.Model):
    """A moderator may review the cases of this policy (admins see every queue)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queue_grants")
    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="queue_grants")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["user", "policy"], name="queue_grant_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} -> {self.policy}"


class Decision(models.Model):
    """A moderator's call on a case. Immutable: PostgreSQL refuses UPDATE and DELETE."""

    class Action(models.TextChoices):
        CONFIRM = "confirm"
        OVERTURN = "overturn"
        ESCALATE = "escalate"

    class Label(models.TextChoices):
        VIOLATES = "violates"
        SAFE = "safe"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="decisions")
    moderator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    action = models.CharField(max_length=8, choices=Action.choices)
    # Empty for an escalation: it hands the case on without a label.
    final_label = models.CharField(max_length=8, choices=Label.choices, blank=True)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    note = models.TextField(blank=True)
    seconds_spent = models.PositiveIntegerField(default=0)
    # What the model said when the moderator decided (the case's verdict may be "undetermined").
    model_verdict = models.CharField(max_length=16, blank=True)
    # For a QA review: whether it agrees with the decision it double-checks.
    agrees_with_reviewed = models.BooleanField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["case"], condition=~Q(action="escalate"), name="decision_one_final_per_case"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.final_label} on case {self.case_id}"


class GoldenExample(models.Model):
    """A labelled example for a policy's golden set; moderator decisions arrive as candidates."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate"
        ACCEPTED = "accepted"
        REJECTED = "rejected"

    class Origin(models.TextChoices):
        DECISION = "decision"
        IMPORT = "import"

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="golden_examples")
    text = models.TextField()
    text_hash = models.CharField(max_length=64, db_index=True)
    expected_label = models.CharField(max_length=8, choices=Decision.Label.choices)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    origin = models.CharField(max_length=8, choices=Origin.choices)
    decision = models.OneToOneField(
        Decision, null=True, blank=True, on_delete=models.PROTECT, related_name="golden_example"
    )
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.CANDIDATE)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.policy.slug}: {self.expected_label}"


class CallbackDelivery(models.Model):
    """One attempt to tell the platform about a decision."""

    decision = models.ForeignKey(Decision, on_delete=models.PROTECT, related_name="callback_deliveries")
    url = models.URLField()
    attempt = models.PositiveSmallIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    error = models.CharField(max_length=300, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "callback deliveries"

    def __str__(self) -> str:
        return f"callback for decision {self.decision_id}, attempt {self.attempt}"
