"""Give a policy version the evaluation-run proof its reasoner needs before it may auto-clear."""

from __future__ import annotations

from django.utils import timezone

from inference_worker import autoclear, guarantee
from policies.models import EvaluationResult, EvaluationRun, Policy, PolicyVersion
from reviews.models import Decision

TEST_MODEL = "openai/gpt-oss-safeguard-20b"


def reasoner_proven(
    policy: Policy, *, missed: int = 0, confidence: str = "high", model: str = TEST_MODEL
) -> EvaluationRun:
    """A finished golden-set run of the active version in which the model caught every labelled violation
    (but `missed` of them, called safe at `confidence`): as many as the policy's guarantee needs."""
    version = policy.versions.get(status=PolicyVersion.Status.ACTIVE)
    needed = guarantee.violations_needed(autoclear.target_recall_for(policy), policy.recall_confidence)
    run = EvaluationRun.objects.create(
        policy=policy,
        policy_version=version,
        policy_text=version.text,
        policy_text_hash=version.content_hash,
        transport="completions",
        model=model,
        effort="low",
        status=EvaluationRun.Status.FINISHED,
        total=needed,
        done=needed,
        finished_at=timezone.now(),
    )
    EvaluationResult.objects.bulk_create(
        EvaluationResult(
            run=run,
            position=n,
            text=f"violation {n}",
            text_hash=f"{n:064d}",
            expected_label=Decision.Label.VIOLATES,
            status=EvaluationResult.Status.DONE,
            verdict="safe" if n < missed else "violates",
            confidence=confidence,
        )
        for n in range(needed)
    )
    return run
