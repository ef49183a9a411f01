from __future__ import annotations

from typing import ClassVar

from django.db import models

from moderation.models import PolicyVersion


class FunnelCalibration(models.Model):
    """The funnel's threshold for one policy version and one state of its golden set.

    Measured on cross-validated scores of the training data (the policy's examples plus the accepted golden
    set): below the threshold an item is auto-cleared. A new row appears whenever the golden set changes.
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
    embedding_model = models.CharField(max_length=200)
    method = models.CharField(max_length=24, choices=Method.choices)
    threshold = models.FloatField(null=True, blank=True)
    measured_recall = models.FloatField(null=True, blank=True)
    clear_rate = models.FloatField(null=True, blank=True)
    policy_examples = models.PositiveIntegerField(default=0)
    golden_examples = models.PositiveIntegerField(default=0)
    violations = models.PositiveIntegerField(default=0)
    safe = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["policy_version", "golden_fingerprint", "target_recall", "embedding_model"],
                name="funnel_calibration_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"funnel calibration {self.pk} for policy version {self.policy_version_id}"

    @property
    def examples(self) -> int:
        return self.violations + self.safe
