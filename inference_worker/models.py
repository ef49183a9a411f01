from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from policies.models import PolicyVersion


class FunnelCalibration(models.Model):
    """The funnel's threshold for one policy version and one state of its golden set.

    The classifier trains on the policy's examples and part of the accepted golden set; the rest of the
    golden violations (never trained on) prove the threshold: with probability `confidence`, recall on new
    items is at least `recall_lower_bound` (inference_worker/guarantee.py). Without enough of them the
    threshold is empty and the funnel runs in shadow mode: it scores, clears nothing. A new row appears
    whenever the golden set, the target or the confidence changes.
    """

    class Method(models.TextChoices):
        LOGISTIC_REGRESSION = "logistic_regression", "logistic regression"
        NEAREST_NEIGHBOURS = "nearest_neighbours", "nearest neighbours"
        # Too few labels of one class: the funnel clears nothing and passes everything on.
        UNCALIBRATED = "uncalibrated", "not calibrated"

    policy_version = models.ForeignKey(
        PolicyVersion, on_delete=models.CASCADE, related_name="funnel_calibrations"
    )
    # sha256 over the accepted golden examples' (id, text_hash, expected_label): edits, accepts and
    # rejects all change it.
    golden_fingerprint = models.CharField(max_length=64)
    target_recall = models.FloatField()
    confidence = models.FloatField(default=0.95)
    embedding_model = models.CharField(max_length=200)
    method = models.CharField(max_length=24, choices=Method.choices)
    # Empty: shadow mode (no proven threshold).
    threshold = models.FloatField(null=True, blank=True)
    # On the held-out violations: share passed on (misses / held_out_violations), and its lower bound.
    measured_recall = models.FloatField(null=True, blank=True)
    recall_lower_bound = models.FloatField(null=True, blank=True)
    held_out_violations = models.PositiveIntegerField(default=0)
    held_out_misses = models.PositiveIntegerField(default=0)
    # Held-out violations a threshold needs at this target and confidence (149 at 0.98 / 0.95).
    violations_needed = models.PositiveIntegerField(default=0)
    # Share of held-out safe examples below the threshold.
    clear_rate = models.FloatField(null=True, blank=True)
    held_out_safe = models.PositiveIntegerField(default=0)
    policy_examples = models.PositiveIntegerField(default=0)
    golden_examples = models.PositiveIntegerField(default=0)
    violations = models.PositiveIntegerField(default=0)
    safe = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=[
                    "policy_version",
                    "golden_fingerprint",
                    "target_recall",
                    "confidence",
                    "embedding_model",
                ],
                name="funnel_calibration_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"funnel calibration {self.pk} for policy version {self.policy_version_id}"

    @property
    def examples(self) -> int:
        return self.violations + self.safe

    @property
    def guaranteed(self) -> bool:
        return self.threshold is not None

    @property
    def held_out_safe_cleared(self) -> int:
        return round((self.clear_rate or 0) * self.held_out_safe)

    @property
    def violations_missing(self) -> int:
        """More held-out violations the guarantee needs (0 once it holds)."""
        return max(0, self.violations_needed - self.held_out_violations)


class EngineSettings(models.Model):
    """The reasoning engine as an admin set it on /settings/engine: one row (pk 1), or none.

    Empty text and null numbers mean "not set here": the environment variable, else the built-in default,
    applies (inference_worker/engine_settings.py). An environment variable that is set always wins over
    this row. The API key is stored in this table as it was typed (not encrypted): anyone who can read the
    database can read it.
    """

    SINGLETON_PK = 1

    class Transport(models.TextChoices):
        COMPLETIONS = "completions", "completions (vLLM: harmony token ids)"
        CHAT = "chat", "chat (Ollama, LM Studio, llama.cpp, hosted)"

    class Effort(models.TextChoices):
        LOW = "low", "low"
        MEDIUM = "medium", "medium"
        HIGH = "high", "high"

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_PK, editable=False)
    base_url = models.CharField(max_length=500, blank=True)
    transport = models.CharField(max_length=16, choices=Transport.choices, blank=True)
    model = models.CharField(max_length=200, blank=True)
    effort = models.CharField(max_length=8, choices=Effort.choices, blank=True)
    escalation_model = models.CharField(max_length=200, blank=True)
    escalation_effort = models.CharField(max_length=8, choices=Effort.choices, blank=True)
    api_key = models.CharField(max_length=1000, blank=True)
    timeout_seconds = models.FloatField(null=True, blank=True)
    give_up_after_seconds = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        verbose_name = "engine settings"
        verbose_name_plural = "engine settings"
        constraints: ClassVar = [
            models.CheckConstraint(condition=models.Q(id=1), name="engine_settings_singleton"),
        ]

    def __str__(self) -> str:
        return "engine settings"


class EngineLatencyHour(models.Model):
    """Answered engine calls per policy version, hour and latency bucket (inference_worker/latency.py): the
    metrics page's latency percentiles sum these rows instead of sorting the last day's calls. A row per
    triage batch (no row is updated), compacted every minute."""

    policy_version = models.ForeignKey(PolicyVersion, on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField()
    # Latencies grow by 10% from one bucket to the next: bucket b holds [1.1^b - 1, 1.1^(b+1) - 1) ms.
    bucket = models.PositiveSmallIntegerField()
    calls = models.PositiveIntegerField()

    class Meta:
        indexes: ClassVar = [models.Index(fields=["hour", "policy_version"], name="engine_latency_hour_idx")]

    def __str__(self) -> str:
        return f"{self.calls} calls in bucket {self.bucket} of version {self.policy_version_id}"
