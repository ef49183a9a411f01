"""The policy domain: policies, their versions, golden sets, evaluation runs, DSA mappings.

The tables keep their first apps' names (moderation_*, reviews_*): the models moved here without copying
rows (migrations policies 0001 and its state-only counterparts).
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Confidence(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Verdict(models.TextChoices):
    VIOLATES = "violates"
    SAFE = "safe"
    UNDETERMINED = "undetermined"


class Label(models.TextChoices):
    """What a person (or a golden example) says of a text under a policy."""

    VIOLATES = "violates"
    SAFE = "safe"


class Policy(models.Model):
    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "moderation.policy"

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    # Routing. Violations always go to a human unless the policy team opts into auto-action.
    auto_action_violations = models.BooleanField(default=False)
    auto_clear_min_confidence = models.CharField(
        max_length=8, choices=Confidence.choices, default=Confidence.HIGH
    )
    escalate_below_confidence = models.CharField(
        max_length=8,
        choices=Confidence.choices,
        default=Confidence.MEDIUM,
        help_text="Verdicts less confident than this are re-judged at escalation effort / model.",
    )
    qa_sample_rate = models.FloatField(
        default=0.05, help_text="Share of auto-cleared items that still go to a human for QA."
    )
    activation_tolerance = models.FloatField(
        default=0.02,
        help_text="How far F1 or accuracy on the golden set may drop below the active version's "
        "before activating a new version needs an override.",
    )
    funnel_target_recall = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Share of violations the funnel tier must pass on; empty: SAFEGUARD_FUNNEL_TARGET_RECALL.",
    )
    # How sure the product must be that an auto-clear meets its recall target (inference_worker/guarantee).
    recall_confidence = models.FloatField(
        default=0.95,
        validators=[MinValueValidator(0.5), MaxValueValidator(0.999)],
        help_text="Probability that recall on new items meets the target before any tier may auto-clear.",
    )
    # Per-tier switches. On means "may clear while its guarantee holds": a tier without a proven threshold,
    # or suspended by QA monitoring, clears nothing either way.
    funnel_auto_clear = models.BooleanField(
        default=True, help_text="The funnel tier may clear items below its proven threshold."
    )
    reasoner_auto_clear = models.BooleanField(
        default=True, help_text="Safe verdicts at a proven confidence may be cleared without a human."
    )
    # Deciding "violates" names at least one rule of the policy (the form and the service both ask).
    rules_required = models.BooleanField(
        default=True,
        db_default=True,
        help_text='A moderator who decides "violates" must tick at least one rule.',
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "moderation_policy"
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name


class PolicyVersion(models.Model):
    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "moderation.policyversion"

    class Status(models.TextChoices):
        DRAFT = "draft"
        PUBLISHED = "published"
        ACTIVE = "active"
        RETIRED = "retired"

    # A draft's text may change; once published it never does (cases and evaluation runs point here
    # forever). PostgreSQL refuses the change too (migration 0004).
    IMMUTABLE_FIELDS: ClassVar[tuple[str, ...]] = (
        "policy_id",
        "number",
        "text",
        "content_hash",
        "rule_ids",
        "token_count",
    )

    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    text = models.TextField()
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    token_count = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.DRAFT)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "moderation_policyversion"
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["policy", "number"], name="policy_version_number_unique"),
            models.UniqueConstraint(
                fields=["policy"], condition=Q(status="active"), name="policy_one_active_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.policy.slug} v{self.number}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            stored = PolicyVersion.objects.filter(pk=self.pk).values("status", *self.IMMUTABLE_FIELDS).first()
            frozen = stored is not None and stored["status"] != self.Status.DRAFT
            if frozen and (
                self.status == self.Status.DRAFT
                or any(stored[f] != getattr(self, f) for f in self.IMMUTABLE_FIELDS)
            ):
                raise ValidationError("A published policy version is immutable; create a new draft instead.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT


class GoldenExample(models.Model):
    """A labelled example for a policy's golden set; moderator decisions arrive as candidates."""

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.goldenexample"

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
    expected_label = models.CharField(max_length=8, choices=Label.choices)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    # Free-form grouping for the per-category breakdown (e.g. a data set's "type" column).
    category = models.CharField(max_length=100, blank=True)
    origin = models.CharField(max_length=8, choices=Origin.choices)
    # No database constraint: decisions are partitioned by month and have no unique index on id alone; they
    # are never deleted, and a month cited by golden examples is not archived (reviews/history.py).
    decision = models.OneToOneField(
        "reviews.Decision",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="golden_example",
        db_constraint=False,
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
        db_table = "reviews_goldenexample"
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

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.evaluationrun"

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

    class Meta:
        db_table = "reviews_evaluationrun"

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

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.evaluationresult"

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
    expected_label = models.CharField(max_length=8, choices=Label.choices)
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
        db_table = "reviews_evaluationresult"
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["run", "position"], name="evaluation_result_position_unique"),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.position}: {self.verdict or self.status}"


class StatementOfReasonsMapping(models.Model):
    """How a policy's restricting decisions read as EU DSA statements of reasons (Transparency Database).

    Without one, a policy maps to the defaults below: terms-of-service ground, content removed, EEA-wide.
    """

    # Audit events name it as they did before it moved here (one history per object).
    audit_object_type: ClassVar[str] = "reviews.statementofreasonsmapping"

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
        db_table = "reviews_statementofreasonsmapping"
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
