from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from moderation.models import Case, Policy, PolicyVersion


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
    # Of the normalised text (whitespace collapsed, case folded): duplicates are found by it.
    text_hash = models.CharField(max_length=64, db_index=True)
    expected_label = models.CharField(max_length=8, choices=Decision.Label.choices)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    # Free-form grouping for the per-category breakdown (e.g. a data set's "type" column).
    category = models.CharField(max_length=100, blank=True)
    origin = models.CharField(max_length=8, choices=Origin.choices)
    decision = models.OneToOneField(
        Decision, null=True, blank=True, on_delete=models.PROTECT, related_name="golden_example"
    )
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.CANDIDATE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    curated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    curated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            # One accepted example per text and policy: a duplicate would count twice in every run.
            models.UniqueConstraint(
                fields=["policy", "text_hash"],
                condition=Q(status="accepted"),
                name="golden_accepted_text_unique",
            ),
        ]
        indexes: ClassVar = [models.Index(fields=["policy", "status", "id"], name="golden_policy_status_idx")]

    def __str__(self) -> str:
        return f"{self.policy.slug}: {self.expected_label}"


class EvaluationRun(models.Model):
    """A policy version judged over a frozen snapshot of examples (the golden set, or a file)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"

    class Dataset(models.TextChoices):
        GOLDEN = "golden"
        FILE = "file"

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="evaluation_runs")
    policy_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, related_name="evaluation_runs"
    )
    dataset = models.CharField(max_length=8, choices=Dataset.choices, default=Dataset.GOLDEN)
    dataset_label = models.CharField(max_length=300, blank=True)
    # Of the accepted examples at creation (ids, texts, labels, rule ids): the activation gate only
    # trusts runs made on the golden set as it is now.
    golden_set_hash = models.CharField(max_length=64, blank=True, db_index=True)
    # The version's text when the run was made (a draft may change after its run), and its hash.
    policy_text = models.TextField()
    policy_text_hash = models.CharField(max_length=64)
    transport = models.CharField(max_length=16)
    model = models.CharField(max_length=200)
    effort = models.CharField(max_length=8)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"run {self.pk} of {self.policy_version}"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.FINISHED, self.Status.FAILED)

    @property
    def progress_percent(self) -> int:
        return round(100 * (self.done + self.failed) / self.total) if self.total else 100


class EvaluationResult(models.Model):
    """One example of a run: a copy of what was expected, and what the engine answered."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="results")
    position = models.PositiveIntegerField()
    example = models.ForeignKey(
        GoldenExample, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    text = models.TextField()
    text_hash = models.CharField(max_length=64)
    expected_label = models.CharField(max_length=8, choices=Decision.Label.choices)
    expected_rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    category = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    verdict = models.CharField(max_length=16, blank=True)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    hallucinated_rule_ids = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    policy_category = models.CharField(max_length=200, blank=True)
    confidence = models.CharField(max_length=8, blank=True)
    rationale = models.TextField(blank=True)
    chain_of_thought = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["run", "position"], name="evaluation_result_position_unique"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.position}: {self.verdict or self.status}"


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
