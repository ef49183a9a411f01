"""QA monitoring of auto-clears: decided QA samples of a tier's clears, and the suspension they may trip.

A QA decision on an auto-cleared case enqueues `autoclear_monitor_check` (reviews.tasks); the tier stays
suspended for that policy version until a person resumes it (inference_worker.autoclear.autoclear_resume).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q

from audit import services as audit
from inference_worker import guarantee
from inference_worker.autoclear import target_recall_for
from moderation.models import AutoClearSuspension, Case
from policies.models import PolicyVersion
from reviews.models import Decision

Tier = AutoClearSuspension.Tier


@dataclass(frozen=True)
class QaMonitor:
    """QA samples of one tier's auto-clears for one version since it was last (re)enabled."""

    tier: str
    samples: int
    misses: int
    target_recall: float
    confidence: float
    since: datetime | None

    @property
    def tier_label(self) -> str:
        return AutoClearSuspension.Tier(self.tier).label

    @property
    def miss_allowance(self) -> float:
        return 1 - self.target_recall

    @property
    def miss_rate_upper_bound(self) -> float:
        return guarantee.miss_rate_upper_bound(self.misses, self.samples, self.confidence)

    @property
    def miss_rate_lower_bound(self) -> float:
        return guarantee.miss_rate_lower_bound(self.misses, self.samples, self.confidence)

    @property
    def samples_needed(self) -> int:
        """From this many samples the upper bound can show the target; below, only misses count."""
        return guarantee.violations_needed(self.target_recall, self.confidence)

    @property
    def tripped(self) -> bool:
        """The bound passed 1 - target: once there are samples enough for it to be informative, or at
        any count when the misses alone prove the target broken (lower bound above it)."""
        allowed = 1 - self.target_recall
        if self.miss_rate_lower_bound > allowed:
            return True
        return self.samples >= self.samples_needed and self.miss_rate_upper_bound > allowed


def qa_monitors(versions: Iterable[PolicyVersion]) -> dict[tuple[int, str], QaMonitor]:
    """Per version and tier: its decided QA samples since the tier was last resumed. Two queries in all."""
    versions = list(versions)
    if not versions:
        return {}
    since = {
        (row["policy_version_id"], row["tier"]): row["at"]
        for row in AutoClearSuspension.objects.filter(policy_version__in=versions)
        .values("policy_version_id", "tier")
        .annotate(at=Max("resumed_at"))
    }
    windows = Q()
    for version in versions:
        for tier in Tier.values:
            window = Q(case__policy_version_id=version.pk, case__cleared_by=tier)
            if since.get((version.pk, tier)) is not None:
                window &= Q(created_at__gt=since[version.pk, tier])
            windows |= window
    counts = {
        (row["case__policy_version_id"], row["case__cleared_by"]): (row["samples"], row["misses"])
        for row in Decision.objects.filter(
            windows,
            case__state=Case.State.DECIDED,
            final_label__in=[Decision.Label.VIOLATES, Decision.Label.SAFE],
        )
        .values("case__policy_version_id", "case__cleared_by")
        .annotate(samples=Count("pk"), misses=Count("pk", filter=Q(final_label=Decision.Label.VIOLATES)))
    }
    return {
        (version.pk, tier): QaMonitor(
            tier=tier,
            samples=counts.get((version.pk, tier), (0, 0))[0],
            misses=counts.get((version.pk, tier), (0, 0))[1],
            target_recall=target_recall_for(version.policy),
            confidence=version.policy.recall_confidence,
            since=since.get((version.pk, tier)),
        )
        for version in versions
        for tier in Tier.values
    }


def qa_monitor(version: PolicyVersion, tier: str) -> QaMonitor:
    return qa_monitors([version])[version.pk, tier]


def autoclear_monitor_check(*, policy_version_id: int, tier: str) -> AutoClearSuspension | None:
    """After a QA decision on an auto-clear: suspend that tier for that version if QA shows it missing
    more than the target allows. Safe to run twice (one open suspension per version and tier)."""
    version = PolicyVersion.objects.select_related("policy").get(pk=policy_version_id)
    monitor = qa_monitor(version, tier)
    if not monitor.tripped:
        return None
    reason = (
        f"QA found {monitor.misses} violation{'s' if monitor.misses != 1 else ''} in {monitor.samples} "
        f"auto-cleared sample{'s' if monitor.samples != 1 else ''}: miss rate up to "
        f"{monitor.miss_rate_upper_bound:.3f} ({monitor.confidence:.0%} confidence), target at most "
        f"{1 - monitor.target_recall:.3f}"
    )
    try:
        with transaction.atomic():
            suspension = AutoClearSuspension.objects.create(
                policy_version=version,
                tier=tier,
                reason=reason[:300],
                qa_samples=monitor.samples,
                qa_misses=monitor.misses,
                miss_rate_upper_bound=monitor.miss_rate_upper_bound,
            )
            audit.record(
                "autoclear.suspended",
                actor=None,
                obj=suspension,
                payload={
                    "policy_version": version.pk,
                    "tier": tier,
                    "qa_samples": monitor.samples,
                    "qa_misses": monitor.misses,
                    "miss_rate_upper_bound": round(monitor.miss_rate_upper_bound, 4),
                    "target_recall": monitor.target_recall,
                    "confidence": monitor.confidence,
                },
            )
    except IntegrityError:  # already suspended
        return None
    return suspension
