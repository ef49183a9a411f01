"""Auto-clear status for the policy and queue pages: the funnel's calibration, the reasoner's proof, open
suspensions and QA monitors, per policy. Callers pass policies the user may already see."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inference_worker import autoclear, embeddings, funnel
from inference_worker.models import FunnelCalibration
from moderation.models import AutoClearSuspension
from policies.models import Policy, PolicyVersion
from reviews import qa


@dataclass(frozen=True)
class FunnelCalibrationView:
    policy: Policy
    version: PolicyVersion | None
    calibration: FunnelCalibration | None
    target_recall: float
    # False when the golden set (or the target) changed since: the next triage recalibrates.
    current: bool
    model_available: bool
    confidence: float = 0.95
    # Per tier: the reasoner's proof, the open suspensions and the QA monitors of the active version.
    reasoner: autoclear.ReasonerGuarantee | None = None
    suspensions: tuple[AutoClearSuspension, ...] = ()
    monitors: tuple[qa.QaMonitor, ...] = ()

    @property
    def funnel_suspension(self) -> AutoClearSuspension | None:
        return next((s for s in self.suspensions if s.tier == AutoClearSuspension.Tier.FUNNEL), None)

    @property
    def reasoner_suspension(self) -> AutoClearSuspension | None:
        return next((s for s in self.suspensions if s.tier == AutoClearSuspension.Tier.SAFEGUARD), None)

    @property
    def funnel_clearing(self) -> bool:
        """The funnel clears items right now: proven, switched on, not suspended."""
        return bool(
            self.calibration is not None
            and self.current
            and self.calibration.guaranteed
            and self.policy.funnel_auto_clear
            and self.funnel_suspension is None
        )

    @property
    def reasoner_clearing(self) -> bool:
        return bool(
            self.reasoner is not None
            and self.reasoner.proven
            and self.policy.reasoner_auto_clear
            and self.reasoner_suspension is None
        )


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
    open_suspensions = autoclear.suspensions_open(v.pk for v in versions.values())
    monitors = qa.qa_monitors(versions.values())
    views = []
    for policy in policies:
        version = versions.get(policy.pk)
        calibration = latest.get(version.pk) if version else None
        target = autoclear.target_recall_for(policy)
        suspensions = tuple(
            s
            for (version_id, _), s in open_suspensions.items()
            if version is not None and version_id == version.pk
        )
        views.append(
            FunnelCalibrationView(
                policy=policy,
                version=version,
                calibration=calibration,
                target_recall=target,
                current=calibration is not None
                and calibration.golden_fingerprint == fingerprints[policy.pk]
                and calibration.target_recall == target
                and calibration.confidence == policy.recall_confidence,
                model_available=embeddings.model_available(),
                confidence=policy.recall_confidence,
                reasoner=autoclear.reasoner_guarantee(version) if version is not None else None,
                suspensions=suspensions,
                monitors=tuple(monitors[version.pk, tier] for tier in AutoClearSuspension.Tier.values)
                if version is not None
                else (),
            )
        )
    return views


def suspensions_open_for_policies(policies: Iterable[Policy]) -> list[AutoClearSuspension]:
    """Open auto-clear suspensions of these policies' versions, newest first (banners)."""
    return list(
        AutoClearSuspension.objects.filter(policy_version__policy__in=list(policies), resumed_at__isnull=True)
        .select_related("policy_version__policy")
        .order_by("-created_at")
    )


def funnel_calibration_for_policy(policy: Policy) -> FunnelCalibrationView:
    [view] = funnel_calibrations_for_policies([policy])
    return view
