"""Reads for the policy team's screens: policies, versions, diffs, runs. Policy editors and admins only."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from accounts.roles import Role, user_roles
from policies import evaluations, golden
from policies.models import EvaluationResult, EvaluationRun, Policy, PolicyVersion

POLICY_TEAM_ROLES = {Role.POLICY_EDITOR, Role.ADMIN}
RESULTS_SHOWN = 1000


def user_is_policy_editor(user: User | AnonymousUser) -> bool:
    return bool(user_roles(user) & POLICY_TEAM_ROLES)


def policies_editable_by(user: User) -> QuerySet[Policy]:
    return Policy.objects.all() if user_is_policy_editor(user) else Policy.objects.none()


def evaluation_runs_visible_to(user: User) -> QuerySet[EvaluationRun]:
    return EvaluationRun.objects.filter(policy__in=policies_editable_by(user)).select_related(
        "policy", "policy_version", "created_by"
    )


def policy_overview(policy: Policy) -> dict[str, Any]:
    versions = list(policy.versions.select_related("author").order_by("-number"))
    runs = list(
        policy.evaluation_runs.select_related("policy_version", "created_by").order_by("-created_at")[:50]
    )
    golden_hash = evaluations.golden_set_hash_now(policy)
    gates = {
        v.pk: evaluations.activation_gate(v, golden_hash=golden_hash)
        for v in versions
        if v.status in (PolicyVersion.Status.PUBLISHED, PolicyVersion.Status.RETIRED)
    }
    return {
        "policy": policy,
        "sources": list(policy.sources.order_by("name").values_list("name", flat=True)),
        "versions": versions,
        "active": next((v for v in versions if v.status == PolicyVersion.Status.ACTIVE), None),
        "runs": runs,
        "golden_counts": golden.golden_counts(policy),
        "golden_hash": golden_hash,
        "gates": [(v, gates[v.pk]) for v in versions if v.pk in gates],
    }


@dataclass(frozen=True)
class DiffRow:
    kind: str  # equal | replace | delete | insert
    left_number: int | None
    left: str
    right_number: int | None
    right: str


def version_diff(a: PolicyVersion, b: PolicyVersion) -> list[DiffRow]:
    """Side-by-side rows of the two texts, line by line; the template escapes every cell."""
    left, right = a.text.splitlines(), b.text.splitlines()
    rows = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=left, b=right, autojunk=False).get_opcodes():
        span = max(i2 - i1, j2 - j1)
        for k in range(span):
            li, rj = i1 + k, j1 + k
            rows.append(
                DiffRow(
                    kind=tag,
                    left_number=li + 1 if li < i2 else None,
                    left=left[li] if li < i2 else "",
                    right_number=rj + 1 if rj < j2 else None,
                    right=right[rj] if rj < j2 else "",
                )
            )
    return rows


def run_results(run: EvaluationRun) -> list[EvaluationResult]:
    """The judged items (a cancelled run leaves some unjudged), first RESULTS_SHOWN."""
    judged = run.results.exclude(status=EvaluationResult.Status.PENDING)
    return list(judged.order_by("position")[:RESULTS_SHOWN])
