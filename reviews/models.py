from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from moderation.models import Case, Policy, PolicyVersion


class AuditEvent(models.Model):
    """Append-only record of everything that happened. PostgreSQL refuses UPDATE and DELETE.

    A hash chain (reviews/chain.py): `hash` covers this event's content and `prev_hash`, the hash of
    the event with the previous `seq`. Write through reviews/audit.py only: it takes the chain's lock.
    """

    class ActorKind(models.TextChoices):
        USER = "user"
        SOURCE = "source"
        SYSTEM = "system"

    # Position in the chain: 1, 2, 3... without gaps (appends are serialised, see reviews/audit.py).
    seq = models.BigIntegerField(unique=True)
    # Set in Python before hashing (not auto_now_add) so the stored value is the hashed value.
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
        # A label where the model gave none (undetermined, not triaged): nothing to confirm or overturn.
        DECIDED = "decided"
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
        permissions: ClassVar = [
            ("export_reasoning", "Can export the model's chain of thought with decisions"),
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

    @property
    def is_accepted(self) -> bool:
        return self.status == self.Status.ACCEPTED

    @property
    def is_rejected(self) -> bool:
        return self.status == self.Status.REJECTED


class EvaluationRun(models.Model):
    """A policy version judged over a frozen snapshot of examples (the golden set, or a file)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CANCELLED = "cancelled"

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
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancelled_by = models.ForeignKey(
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
        return self.status in (self.Status.FINISHED, self.Status.FAILED, self.Status.CANCELLED)

    @property
    def is_complete(self) -> bool:
        """Finished every example (neither failed nor cancelled): its metrics are the run's results."""
        return self.status == self.Status.FINISHED

    @property
    def is_cancelled(self) -> bool:
        return self.status == self.Status.CANCELLED

    @property
    def is_on_golden_set(self) -> bool:
        return self.dataset == self.Dataset.GOLDEN

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


API_TOKEN_PREFIX = "sgu"  # noqa: S105 - a public prefix, not a secret


def api_token_hash(token: str) -> str:
    # Tokens are 256-bit random strings: a fast hash is enough (nothing to brute-force from a dictionary).
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A person's token for the export API (`Authorization: Bearer sgu_<id>_<secret>`); stored hashed."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    def issue(self) -> str:
        """Set a new secret; returns the token, which is never stored in clear."""
        self.key_id = secrets.token_hex(6)
        token = f"{API_TOKEN_PREFIX}_{self.key_id}_{secrets.token_urlsafe(32)}"
        self.key_hash = api_token_hash(token)
        return token

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.key_hash, api_token_hash(token))

    @staticmethod
    def key_id_of(token: str) -> str | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != API_TOKEN_PREFIX:
            return None
        return parts[1]


class StatementOfReasonsMapping(models.Model):
    """How a policy's restricting decisions read as EU DSA statements of reasons (Transparency Database).

    Without one, a policy maps to the defaults below: terms-of-service ground, content removed, EEA-wide.
    """

    class Ground(models.TextChoices):
        ILLEGAL_CONTENT = "DECISION_GROUND_ILLEGAL_CONTENT"
        INCOMPATIBLE_CONTENT = "DECISION_GROUND_INCOMPATIBLE_CONTENT"

    class Category(models.TextChoices):
        ANIMAL_WELFARE = "STATEMENT_CATEGORY_ANIMAL_WELFARE"
        DATA_PROTECTION_AND_PRIVACY_VIOLATIONS = "STATEMENT_CATEGORY_DATA_PROTECTION_AND_PRIVACY_VIOLATIONS"
        ILLEGAL_OR_HARMFUL_SPEECH = "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH"
        INTELLECTUAL_PROPERTY_INFRINGEMENTS = "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS"
        NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS = (
            "STATEMENT_CATEGORY_NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS"
        )
        NON_CONSENSUAL_BEHAVIOUR = "STATEMENT_CATEGORY_NON_CONSENSUAL_BEHAVIOUR"
        PORNOGRAPHY_OR_SEXUALIZED_CONTENT = "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"
        PROTECTION_OF_MINORS = "STATEMENT_CATEGORY_PROTECTION_OF_MINORS"
        RISK_FOR_PUBLIC_SECURITY = "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY"
        SCAMS_AND_FRAUD = "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"
        SELF_HARM = "STATEMENT_CATEGORY_SELF_HARM"
        SCOPE_OF_PLATFORM_SERVICE = "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"
        UNSAFE_AND_ILLEGAL_PRODUCTS = "STATEMENT_CATEGORY_UNSAFE_AND_ILLEGAL_PRODUCTS"
        VIOLENCE = "STATEMENT_CATEGORY_VIOLENCE"

    class Visibility(models.TextChoices):
        CONTENT_REMOVED = "DECISION_VISIBILITY_CONTENT_REMOVED"
        CONTENT_DISABLED = "DECISION_VISIBILITY_CONTENT_DISABLED"
        CONTENT_DEMOTED = "DECISION_VISIBILITY_CONTENT_DEMOTED"
        CONTENT_AGE_RESTRICTED = "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED"
        CONTENT_INTERACTION_RESTRICTED = "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED"
        CONTENT_LABELLED = "DECISION_VISIBILITY_CONTENT_LABELLED"
        OTHER = "DECISION_VISIBILITY_OTHER"

    class SourceType(models.TextChoices):
        ARTICLE_16 = "SOURCE_ARTICLE_16"
        TRUSTED_FLAGGER = "SOURCE_TRUSTED_FLAGGER"
        OTHER_NOTIFICATION = "SOURCE_TYPE_OTHER_NOTIFICATION"
        VOLUNTARY = "SOURCE_VOLUNTARY"

    class ContentType(models.TextChoices):
        TEXT = "CONTENT_TYPE_TEXT"
        IMAGE = "CONTENT_TYPE_IMAGE"
        VIDEO = "CONTENT_TYPE_VIDEO"
        AUDIO = "CONTENT_TYPE_AUDIO"
        SYNTHETIC_MEDIA = "CONTENT_TYPE_SYNTHETIC_MEDIA"
        PRODUCT = "CONTENT_TYPE_PRODUCT"
        APP = "CONTENT_TYPE_APP"
        OTHER = "CONTENT_TYPE_OTHER"

    DEFAULT_TERRITORIAL_SCOPE: ClassVar[list[str]] = ["EEA"]
    # The Transparency Database's territorial scopes: EU / EEA shorthands and the EEA's country codes.
    TERRITORIES: ClassVar[frozenset[str]] = frozenset(
        {
            "EU",
            "EEA",
            "EEA_no_IS",
            "AT",
            "BE",
            "BG",
            "CY",
            "CZ",
            "DE",
            "DK",
            "EE",
            "ES",
            "FI",
            "FR",
            "GR",
            "HR",
            "HU",
            "IE",
            "IS",
            "IT",
            "LI",
            "LT",
            "LU",
            "LV",
            "MT",
            "NL",
            "NO",
            "PL",
            "PT",
            "RO",
            "SE",
            "SI",
            "SK",
        }
    )

    policy = models.OneToOneField(Policy, on_delete=models.CASCADE, related_name="statement_mapping")
    decision_ground = models.CharField(
        max_length=40, choices=Ground.choices, default=Ground.INCOMPATIBLE_CONTENT
    )
    # Terms-of-service ground: the clause of the platform's terms the policy enforces.
    incompatible_content_ground = models.CharField(
        max_length=500, blank=True, help_text="The terms-of-service clause, e.g. 'Community rules §4 (spam)'."
    )
    incompatible_content_explanation = models.TextField(blank=True)
    decision_ground_reference_url = models.URLField(blank=True)
    # Legal ground, for policies that enforce the law.
    illegal_content_legal_ground = models.CharField(max_length=500, blank=True)
    illegal_content_explanation = models.TextField(blank=True)
    category = models.CharField(
        max_length=80, choices=Category.choices, default=Category.SCOPE_OF_PLATFORM_SERVICE
    )
    category_by_rule = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Rule id -> category for decisions citing that rule, "
            'e.g. {"SP2": "STATEMENT_CATEGORY_SCAMS_AND_FRAUD"}.'
        ),
    )
    decision_visibility = ArrayField(
        models.CharField(max_length=60, choices=Visibility.choices),
        default=list,
        blank=True,
        help_text="Empty means content removed.",
    )
    territorial_scope = ArrayField(
        models.CharField(max_length=10),
        default=list,
        blank=True,
        help_text="Country codes, EU or EEA; empty means EEA.",
    )
    content_type = models.CharField(max_length=40, choices=ContentType.choices, default=ContentType.TEXT)
    source_type = models.CharField(max_length=40, choices=SourceType.choices, default=SourceType.VOLUNTARY)

    class Meta:
        verbose_name = "statement-of-reasons mapping"

    def __str__(self) -> str:
        return f"statement-of-reasons mapping for {self.policy}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        by_rule = self.category_by_rule
        if not isinstance(by_rule, dict) or any(
            not isinstance(v, str) or v not in self.Category.values for v in by_rule.values()
        ):
            errors["category_by_rule"] = "A JSON object: rule id -> a STATEMENT_CATEGORY_... value."
        unknown = sorted(set(self.territorial_scope) - self.TERRITORIES)
        if unknown:
            errors["territorial_scope"] = f"Unknown territories: {', '.join(unknown)}."
        if self.decision_ground == self.Ground.ILLEGAL_CONTENT and not self.illegal_content_legal_ground:
            errors["illegal_content_legal_ground"] = "Name the law the content breaks."
        if errors:
            raise ValidationError(errors)
