"""Plain helpers for golden-set and evaluation tests (tests of several apps use them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.utils import timezone

from policies import evaluations
from policies.golden import text_hash
from policies.models import EvaluationRun, GoldenExample, Policy, PolicyVersion


def golden_accepted(
    policy: Policy, text: str, label: str = "violates", rule_ids: Sequence[str] = ()
) -> GoldenExample:
    return GoldenExample.objects.create(
        policy=policy,
        text=text,
        text_hash=text_hash(text),
        expected_label=label,
        rule_ids=list(rule_ids),
        origin=GoldenExample.Origin.IMPORT,
        status=GoldenExample.Status.ACCEPTED,
    )


def golden_set_small(policy: Policy) -> list[GoldenExample]:
    """Two violations (the simulator flags "zorblax"), two safe texts."""
    return [
        golden_accepted(policy, "buy zorblax now, cheap", "violates", ["SP1"]),
        golden_accepted(policy, "zorblax zorblax limited offer", "violates", ["SP1"]),
        golden_accepted(policy, "has anyone read a good book lately?", "safe"),
        golden_accepted(policy, "the meeting moved to Tuesday", "safe"),
    ]


def finished_run(version: PolicyVersion, **metrics: Any) -> EvaluationRun:
    """A finished run of ``version`` on the policy's golden set as it is now, with the given metrics."""
    return EvaluationRun.objects.create(
        policy=version.policy,
        policy_version=version,
        golden_set_hash=evaluations.golden_set_hash_now(version.policy),
        policy_text=version.text,
        policy_text_hash=version.content_hash,
        transport="completions",
        model="m",
        effort="low",
        status=EvaluationRun.Status.FINISHED,
        finished_at=timezone.now(),
        metrics=metrics,
    )
