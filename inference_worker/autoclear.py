"""Whether each tier may clear items unseen, per policy version, and the QA monitoring that revokes it.

A tier clears only while three things hold: the policy's switch for it is on, its threshold is proven on
labelled violations it never trained on (inference_worker/guarantee.py; the funnel's in funnel.py, the
reasoner's from evaluation runs here), and QA samples of its auto-clears have not shown it missing more
than the target allows. When they do, an AutoClearSuspension opens (audited) and only an explicit, audited
resume with a reason closes it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit import services as audit
from inference_worker import guarantee
from moderation.models import AutoClearSuspension
from moderation.routing import AutoClear
from policies.models import EvaluationResult, EvaluationRun, Label, Policy, PolicyVersion

Tier = AutoClearSuspension.Tier


def target_recall_for(policy: Policy) -> float:
    if policy.funnel_target_recall is not None:
        return policy.funnel_target_recall
    return float(settings.SAFEGUARD_FUNNEL_TARGET_RECALL)


# --- the reasoner's proven confidence cut-off ------------------------------------------------------------


@dataclass(frozen=True)
class ReasonerGuarantee:
    """What the latest evaluation run of a version proves about clearing its "safe" verdicts."""

    run: EvaluationRun | None
    cutoff: guarantee.ConfidenceCutoff | None
    target_recall: float
    confidence: float
    violations_needed: int

    @property
    def proven(self) -> bool:
        return self.cutoff is not None and bool(self.cutoff.min_confidence)

    @property
    def violations_missing(self) -> int:
        n = self.cutoff.n if self.cutoff is not None else 0
        return max(0, self.violations_needed - n)

    @property
    def summary(self) -> str:
        """One line for route reasons and pages."""
        if self.run is None:
            return (
                "reasoner auto-clear not proven: no finished evaluation run of this version on the golden set"
            )
        assert self.cutoff is not None
        if self.proven:
            return (
                f"safe at {self.cutoff.min_confidence} confidence or above is cleared: recall >= "
                f"{self.cutoff.recall_lower_bound:.3f} ({self.confidence:.0%} confidence, "
                f"{self.cutoff.n} labelled violations)"
            )
        if self.violations_missing:
            return (
                f"reasoner auto-clear not proven: run {self.run.pk} had {self.cutoff.n} labelled violations, "
                f"needs {self.violations_needed}"
            )
        return f"reasoner auto-clear not proven: it called too many of run {self.run.pk}'s violations safe"


def _latest_golden_run(version: PolicyVersion, model: str) -> EvaluationRun | None:
    return (
        EvaluationRun.objects.filter(
            policy_version=version,
            dataset=EvaluationRun.Dataset.GOLDEN,
            policy_text_hash=version.content_hash,
            status=EvaluationRun.Status.FINISHED,
            model=model,
        )
        .order_by("-finished_at", "-pk")
        .first()
    )


def reasoner_guarantee(version: PolicyVersion, *, model: str | None = None) -> ReasonerGuarantee:
    """From the latest finished golden-set run of this exact text with the configured model."""
    policy = version.policy
    target, confidence = target_recall_for(policy), policy.recall_confidence
    needed = guarantee.violations_needed(target, confidence)
    run = _latest_golden_run(version, model if model is not None else settings.SAFEGUARD_MODEL)
    if run is None:
        return ReasonerGuarantee(None, None, target, confidence, needed)
    return ReasonerGuarantee(run, _run_cutoff(run.pk, target, confidence), target, confidence, needed)


@functools.lru_cache(maxsize=256)
def _run_cutoff(run_id: int, target: float, confidence: float) -> guarantee.ConfidenceCutoff:
    """A finished run's results never change: each triage batch reads only which run is the latest."""
    rows = EvaluationResult.objects.filter(run_id=run_id, expected_label=Label.VIOLATES).values_list(
        "verdict", "confidence", "hallucinated_rule_ids"
    )
    # A verdict citing invented rules is never cleared (moderation/routing.case_route), so it is no miss.
    pairs = [(verdict, conf) for verdict, conf, invented in rows if not invented]
    pairs += [("violates", "") for _, _, invented in rows if invented]
    return guarantee.confidence_cutoff_with_guarantee(pairs, target, confidence)


# --- suspensions (QA monitoring) ------------------------------------------------------------------------


def suspensions_open(version_ids: Iterable[int]) -> dict[tuple[int, str], AutoClearSuspension]:
    return {
        (s.policy_version_id, s.tier): s
        for s in AutoClearSuspension.objects.filter(
            policy_version_id__in=list(version_ids), resumed_at__isnull=True
        )
    }


def reasoner_clearances(versions: dict[int, Policy], *, model: str) -> dict[int, AutoClear]:
    """Per policy version in a triage batch: may the reasoner clear, and from which confidence."""
    suspended = suspensions_open(versions)
    by_id = PolicyVersion.objects.select_related("policy").in_bulk(list(versions))
    clearances = {}
    for version_id, policy in versions.items():
        if not policy.reasoner_auto_clear:
            clearances[version_id] = AutoClear(False, "reasoner auto-clear is off for this policy")
        elif (version_id, Tier.SAFEGUARD) in suspended:
            clearances[version_id] = AutoClear(
                False, "reasoner auto-clear suspended: QA samples found misses"
            )
        else:
            proof = reasoner_guarantee(by_id[version_id], model=model)
            clearances[version_id] = (
                AutoClear(True, "", proof.cutoff.min_confidence)
                if proof.proven and proof.cutoff is not None
                else AutoClear(False, proof.summary)
            )
    return clearances


def funnel_blocks(versions: dict[int, Policy]) -> dict[int, str]:
    """Why the funnel may not clear for a version now, beyond its own calibration ("" where it may)."""
    suspended = suspensions_open(versions)
    blocks = {}
    for version_id, policy in versions.items():
        if not policy.funnel_auto_clear:
            blocks[version_id] = "funnel auto-clear is off for this policy"
        elif (version_id, Tier.FUNNEL) in suspended:
            blocks[version_id] = "funnel auto-clear suspended: QA samples found misses"
        else:
            blocks[version_id] = ""
    return blocks


class ResumeRefused(Exception):
    pass


def autoclear_resume(*, suspension: AutoClearSuspension, actor: User, reason: str) -> AutoClearSuspension:
    """Turn a suspended tier back on for its version, on a person's word; QA monitoring restarts."""
    reason = reason.strip()
    if not reason:
        raise ResumeRefused("a reason is required to turn auto-clear back on")
    with transaction.atomic():
        updated = AutoClearSuspension.objects.filter(pk=suspension.pk, resumed_at__isnull=True).update(
            resumed_at=timezone.now(), resumed_by=actor, resume_reason=reason
        )
        if updated != 1:
            raise ResumeRefused("this suspension was already lifted")
        audit.record(
            "autoclear.resumed",
            actor=actor,
            obj=suspension,
            payload={
                "policy_version": suspension.policy_version_id,
                "tier": suspension.tier,
                "reason": reason,
            },
        )
    suspension.refresh_from_db()
    return suspension
