"""Reads for the funnel tier's pages. Callers pass policies the user may already see."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inference_worker import embeddings, funnel
from inference_worker.models import FunnelCalibration
from moderation.models import Policy, PolicyVersion


@dataclass(frozen=True)
class FunnelCalibrationView:
    policy: Policy
    version: PolicyVersion | None
    calibration: FunnelCalibration | None
    target_recall: float
    # False when the golden set (or the target) changed since: the next triage recalibrates.
    current: bool
    model_available: bool


def funnel_calibrations_for_policies(policies: Iterable[Policy]) -> list[FunnelCalibrationView]:
    """The active version's latest calibration per policy, and whether it matches today's golden set."""
    policies = list(policies)
    versions = {
        v.policy_id: v
        for v in PolicyVersion.objects.filter(
            policy__in=policies, status=PolicyVersion.Status.ACTIVE
        ).select_related("policy")
    }
    latest: dict[int, FunnelCalibration] = {}
    for row in FunnelCalibration.objects.filter(
        policy_version__in=list(versions.values()), embedding_model=embeddings.model_name()
    ).order_by("policy_version_id", "-created_at", "-id"):
        latest.setdefault(row.policy_version_id, row)
    fingerprints = funnel.golden_fingerprints([p.pk for p in policies]) if policies else {}
    views = []
    for policy in policies:
        version = versions.get(policy.pk)
        calibration = latest.get(version.pk) if version else None
        target = funnel.target_recall_for(policy)
        views.append(
            FunnelCalibrationView(
                policy=policy,
                version=version,
                calibration=calibration,
                target_recall=target,
                current=calibration is not None
                and calibration.golden_fingerprint == fingerprints[policy.pk]
                and calibration.target_recall == target,
                model_available=embeddings.model_available(),
            )
        )
    return views


def funnel_calibration_for_policy(policy: Policy) -> FunnelCalibrationView:
    [view] = funnel_calibrations_for_policies([policy])
    return view
