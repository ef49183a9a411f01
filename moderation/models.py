from __future__ import annotations

import secrets
from typing import ClassVar

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone

from audit import keys
from policies.models import Confidence, PolicyVersion, Verdict

API_KEY_PREFIX = "sgq"


class Source(models.Model):
    """A platform that sends content and receives decision callbacks."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    api_key_id = models.CharField(max_length=16, unique=True, editable=False)
    api_key_hash = models.CharField(max_length=64, editable=False)
    hmac_secret = models.CharField(max_length=128, editable=False)
    require_signature = models.BooleanField(
        default=False, help_text="Refuse requests without a valid X-Signature header."
    )
    callback_url = models.URLField(blank=True)
    policies = models.ManyToManyField("policies.Policy", related_name="sources", blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        default=120_000, help_text="Items accepted per minute; 0 means unlimited."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def api_key_issue(self) -> str:
        """Set a new API key and HMAC secret; returns the key, which is never stored in clear."""
        issued = keys.key_issue(API_KEY_PREFIX)
        self.api_key_id, self.api_key_hash = issued.key_id, issued.key_hash
        self.hmac_secret = secrets.token_urlsafe(32)
        return issued.key

    def api_key_matches(self, key: str) -> bool:
        return keys.key_matches(self.api_key_hash, key)

    @staticmethod
    def api_key_id_of(key: str) -> str | None:
        return keys.key_id_of(API_KEY_PREFIX, key)


class ContentItem(models.Model):
    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="items")
    external_id = models.CharField(max_length=255)
    # For chat transcripts, text holds the rendered transcript and transcript the original turns.
    text = models.TextField()
    transcript = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # Why the content looks like an attempt to steer the model (moderation/injection.py); empty: it does not.
    injection_signals = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["source", "external_id"], name="item_external_id_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.source_id}:{self.external_id}"


class Case(models.Model):
    """One item judged under one policy version."""

    class State(models.TextChoices):
        PENDING_TRIAGE = "pending_triage"
        TRIAGING = "triaging"
        QUEUED = "queued"
        CLAIMED = "claimed"
        DECIDED = "decided"
        AUTO_CLEARED = "auto_cleared"
        AUTO_ACTIONED = "auto_actioned"
        ESCALATED = "escalated"
        APPEALED = "appealed"

    item = models.ForeignKey(ContentItem, on_delete=models.PROTECT, related_name="cases")
    policy_version = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="cases")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING_TRIAGE)
    # An appeal re-judges a decided case: at escalation effort, by a senior moderator.
    appeal_of = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="appeal"
    )
    # What the platform said when it asked for the appeal (shown to the senior moderator who decides it).
    appeal_reason = models.TextField(blank=True, default="", db_default="")
    # Escalated by a moderator: only senior moderators may claim it from then on.
    needs_senior = models.BooleanField(default=False)
    # A second, independent review of another case's decision (QA sampling).
    qa_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="qa_reviews"
    )
    priority = models.SmallIntegerField(default=0)
    # Latest verdict, denormalised from TriageResult so the queue can filter without a join.
    verdict = models.CharField(max_length=16, choices=Verdict.choices, blank=True)
    confidence = models.CharField(max_length=8, choices=Confidence.choices, blank=True)
    # p(violation) as triage last saw it (the queue reads the riskiest first within a priority): the
    # model's verdict and confidence mapped by inference_worker.outcomes.case_risk, else the funnel's
    # score, else 0.5 (nothing known). A database default too: ingestion and benchmarks insert set-based.
    risk = models.FloatField(default=0.5, db_default=0.5)
    route_reason = models.CharField(max_length=200, blank=True)
    triage_attempts = models.PositiveSmallIntegerField(default=0)
    triage_not_before = models.DateTimeField(null=True, blank=True)
    lease_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    sla_due_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    # The tier that auto-cleared the case, or would have for a QA sample: QA decisions on these measure
    # each tier's live miss rate (inference_worker/autoclear.py).
    # (A database default too: ingestion and benchmarks insert cases set-based.)
    cleared_by = models.CharField(max_length=16, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["item", "policy_version"],
                condition=Q(appeal_of__isnull=True, qa_of__isnull=True),
                name="case_one_per_item_and_version",
            ),
        ]
        indexes: ClassVar = [
            # The human queue, read in order: highest priority first, riskiest first within a priority, then
            # oldest (reviews.selectors.queue_order; claims and keyset pages walk it).
            models.Index(
                models.F("priority").desc(),
                models.F("risk").desc(),
                "queued_at",
                "id",
                name="case_queue_idx",
                condition=Q(state__in=["queued", "escalated", "appealed"]),
            ),
            # The same queue oldest-first within a priority (SAFEGUARD_QUEUE_ORDER=oldest).
            models.Index(
                models.F("priority").desc(),
                "queued_at",
                "id",
                name="case_queue_age_idx",
                condition=Q(state__in=["queued", "escalated", "appealed"]),
            ),
            # Counts of open cases per policy version and state, and the oldest waiting one (queue counts,
            # polled by every open queue page, and the metrics backlog): an index-only read of what is open.
            models.Index(
                fields=["policy_version", "state"],
                include=["queued_at"],
                name="case_open_idx",
                condition=Q(state__in=["queued", "escalated", "appealed", "claimed"]),
            ),
            # The metrics page's auto-clear and auto-action counts of the last day: a range, not the history.
            models.Index(
                fields=["updated_at"],
                name="case_auto_recent_idx",
                condition=Q(state__in=["auto_cleared", "auto_actioned"]),
            ),
            # Triage claims walk pending cases in id order; without this they would scan every settled case.
            models.Index(fields=["id"], name="case_pending_idx", condition=Q(state="pending_triage")),
            # The stuck-case sweep.
            models.Index(
                fields=["state", "updated_at"],
                name="case_triage_idx",
                condition=Q(state__in=["pending_triage", "triaging"]),
            ),
            models.Index(fields=["lease_expires_at"], name="case_lease_idx", condition=Q(state="claimed")),
            # A moderator's held case (every decide and claim asks). Without it PostgreSQL took case_lease_idx
            # and checked the holder on every claimed row: O(moderators online) heap reads per request.
            models.Index(
                fields=["lease_owner", "lease_expires_at"],
                name="case_holder_idx",
                condition=Q(state="claimed"),
            ),
            # QA monitoring of auto-clears counts only these (a small share of all cases).
            models.Index(
                fields=["policy_version", "cleared_by"],
                name="case_cleared_by_idx",
                condition=~Q(cleared_by=""),
            ),
        ]

    def __str__(self) -> str:
        return f"case {self.pk} ({self.state})"

    @property
    def is_appeal(self) -> bool:
        return self.appeal_of_id is not None

    @property
    def is_claimed(self) -> bool:
        return self.state == self.State.CLAIMED

    def is_held_by(self, user_id: int) -> bool:
        """Claimed by this user under a lease that still runs (one that ran out is lost before the sweep)."""
        return (
            self.is_claimed
            and self.lease_owner_id == user_id
            and self.lease_expires_at is not None
            and self.lease_expires_at > timezone.now()
        )


class TriageResult(models.Model):
    """One engine call (or one funnel score) for a case."""

    class Tier(models.TextChoices):
        FUNNEL = "funnel"
        SAFEGUARD = "safeguard"
        ESCALATION = "escalation"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="triage_results")
    tier = models.CharField(max_length=16, choices=Tier.choices)
    engine = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    reasoning_effort = models.CharField(max_length=8, blank=True)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    policy_category = models.CharField(max_length=200, blank=True)
    rule_ids = ArrayField(models.CharField(max_length=32), default=list, blank=True)
    hallucinated_rule_ids = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    confidence = models.CharField(max_length=8, choices=Confidence.choices, blank=True)
    rationale = models.TextField(blank=True)
    chain_of_thought = models.TextField(blank=True)
    raw_final_text = models.TextField(blank=True)
    parse_path = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.CharField(max_length=500, blank=True)
    # Funnel tier only: p(violation), the threshold, the calibration and the nearest labelled examples.
    funnel = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.tier} {self.verdict} for case {self.case_id}"

    @property
    def is_funnel(self) -> bool:
        return self.tier == self.Tier.FUNNEL

    @property
    def is_safe(self) -> bool:
        return self.verdict == Verdict.SAFE


class AutoClearSuspension(models.Model):
    """Auto-clear of one tier turned off for one policy version because QA samples found too many misses.

    Open while `resumed_at` is empty; only an explicit, audited action (with a reason) resumes it, and QA
    monitoring then counts afresh from that moment.
    """

    class Tier(models.TextChoices):
        FUNNEL = "funnel", "funnel tier"
        SAFEGUARD = "safeguard", "reasoner"

    policy_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, related_name="auto_clear_suspensions"
    )
    tier = models.CharField(max_length=16, choices=Tier.choices)
    reason = models.CharField(max_length=300)
    qa_samples = models.PositiveIntegerField()
    qa_misses = models.PositiveIntegerField()
    miss_rate_upper_bound = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)
    resumed_at = models.DateTimeField(null=True, blank=True)
    resumed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resume_reason = models.TextField(blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["policy_version", "tier"],
                condition=Q(resumed_at__isnull=True),
                name="auto_clear_one_open_suspension",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_tier_display()} auto-clear suspended for policy version {self.policy_version_id}"
