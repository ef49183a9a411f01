from __future__ import annotations

from typing import ClassVar

from django.db import models

from moderation.models import PolicyVersion


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
