from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models

from moderation.models import Case
from policies.models import Label, Policy, PolicyVersion


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
        # A label where the model gave none (undetermined, not triaged): nothing to confirm or overturn.
        DECIDED = "decided"
        ESCALATE = "escalate"

    Label = Label  # the policy domain's labels

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
        # Partitioned by month of created_at (config/partitions.py): one final decision per case is a unique
        # index of each month's partition, and across months the case's lock and state (only a claimed case
        # is decided, and deciding settles it) -- docs/architecture.md, invariants.
        permissions: ClassVar = [
            ("export_reasoning", "Can export the model's chain of thought with decisions"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.final_label} on case {self.case_id}"


class CallbackDelivery(models.Model):
    """One attempt to tell the platform about a decision."""

    # No database constraint: a foreign key must reference a unique index, and the partitioned decisions have
    # none on id alone. Decisions are never deleted (a trigger refuses it); an archived month takes its
    # decisions out of reach (reviews/history.py).
    decision = models.ForeignKey(
        Decision, on_delete=models.PROTECT, related_name="callback_deliveries", db_constraint=False
    )
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


class DecisionHour(models.Model):
    """Decisions per policy version and hour (reviews/rollups.py): the metrics page sums these rows, never the
    decision history. Append-only per decision (no row is updated, so deciding never waits on a counter), then
    compacted to one row per version and hour every minute (older than a week: per day; older than 90 days:
    per month, `hour` being the row's start); a reconciliation recounts recent hours."""

    policy_version = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField()
    decisions = models.PositiveIntegerField(default=0)  # every decision, escalations included
    on_verdict = models.PositiveIntegerField(default=0)  # confirm or overturn: the model had a verdict
    overturns = models.PositiveIntegerField(default=0)
    # The model's verdict against the final label, first reviews only (a QA review repeats its case's).
    true_positives = models.PositiveIntegerField(default=0)
    false_positives = models.PositiveIntegerField(default=0)
    false_negatives = models.PositiveIntegerField(default=0)
    true_negatives = models.PositiveIntegerField(default=0)
    qa_reviews = models.PositiveIntegerField(default=0)
    qa_agreed = models.PositiveIntegerField(default=0)

    COUNTS: ClassVar[tuple[str, ...]] = (
        "decisions",
        "on_verdict",
        "overturns",
        "true_positives",
        "false_positives",
        "false_negatives",
        "true_negatives",
        "qa_reviews",
        "qa_agreed",
    )

    class Meta:
        indexes: ClassVar = [models.Index(fields=["policy_version", "hour"], name="decision_hour_idx")]

    def __str__(self) -> str:
        return f"{self.decisions} decisions of version {self.policy_version_id} at {self.hour:%Y-%m-%d %H}:00"
