"""Evaluation runs: a policy version judged by the engine over a frozen snapshot of labelled examples.

A run copies its examples (text, expected label, rule ids) into result rows when it is made, so later
curation never changes it. It runs in Celery (``reviews.evaluation_run``) on the engine harness triage uses
(``inference_worker.runner``): up to SAFEGUARD_MAX_IN_FLIGHT items in flight on the runner's loop, each
retried with its backoff while the engine is unavailable, results saved in batches on the task's thread
(the only one that touches the database). A re-delivered task resumes: only pending rows are judged.
A policy editor may cancel a queued or running run: the worker notices at its next save and stops the
requests still in flight. The activation gate (``activation_gate``) reads finished runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit import services as audit
from config import publish
from policies import evaluation_metrics
from policies.golden import text_hash
from policies.models import EvaluationResult, EvaluationRun, GoldenExample, Policy, PolicyVersion
from policies.rules import policy_rule_ids_parse

NO_ENGINE = "no reasoning engine configured: set SAFEGUARD_BASE_URL (see README)"
# An item retried in place waits at most this long between attempts (triage reschedules instead).
# A running run whose worker has not saved anything for this long is taken over by a re-delivered task.
STALE_AFTER_SECONDS = 600
EFFORTS = ("low", "medium", "high")


class EvaluationRefused(Exception):
    """The run cannot be made (no engine, nothing to judge), or cancelled (it is over)."""


@dataclass(frozen=True)
class ExampleIn:
    text: str
    expected_label: str
    rule_ids: Sequence[str] = ()
    category: str = ""
    example_id: int | None = None


# --- the golden set as it is now -------------------------------------------------------------------


def golden_set_accepted(policy: Policy) -> QuerySet[GoldenExample]:
    return GoldenExample.objects.filter(policy=policy, status=GoldenExample.Status.ACCEPTED).order_by("id")


def _rows_hash(rows: Sequence[tuple[int, str, str, Sequence[str]]]) -> str:
    canonical = sorted((pk, digest, label, sorted(rule_ids)) for pk, digest, label, rule_ids in rows)
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def golden_set_hash(examples: Sequence[ExampleIn]) -> str:
    """Identifies a set of examples: a run made on it measured exactly these ids, texts and labels."""
    return _rows_hash(
        [(e.example_id or 0, text_hash(e.text), e.expected_label, e.rule_ids) for e in examples]
    )


EMPTY_GOLDEN_SET_HASH = _rows_hash([])


def golden_set_snapshot(policy: Policy) -> list[ExampleIn]:
    return [
        ExampleIn(
            text=e.text,
            expected_label=e.expected_label,
            rule_ids=list(e.rule_ids),
            category=e.category,
            example_id=e.pk,
        )
        for e in golden_set_accepted(policy)
    ]


def golden_set_hash_now(policy: Policy) -> str:
    """The same as golden_set_hash of the snapshot, from the stored text hashes (without loading texts)."""
    return _rows_hash(
        list(golden_set_accepted(policy).values_list("pk", "text_hash", "expected_label", "rule_ids"))
    )


# --- making a run ----------------------------------------------------------------------------------


class RunEngine(Protocol):
    """The engine a run is made for (inference_worker.runner.EngineConfig is one); the run records it."""

    @property
    def base_url(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def effort(self) -> str: ...


def evaluation_run_create(
    *,
    version: PolicyVersion,
    actor: User | None,
    config: RunEngine,
    examples: Sequence[ExampleIn] | None = None,
    dataset_label: str = "",
    model: str = "",
    effort: str = "",
    enqueue: bool = True,
) -> EvaluationRun:
    """A queued run of ``version`` over the policy's accepted golden set (or ``examples``, e.g. a file).

    With ``enqueue`` the Celery task is published after commit; the command line runs it in-process.
    """
    if not config.base_url:
        raise EvaluationRefused(NO_ENGINE)
    if effort and effort not in EFFORTS:
        raise EvaluationRefused(f"unknown reasoning effort {effort!r}")
    from_golden_set = examples is None
    snapshot = golden_set_snapshot(version.policy) if examples is None else list(examples)
    if not snapshot:
        raise EvaluationRefused(
            "the golden set has no accepted examples yet" if from_golden_set else "no examples to judge"
        )
    with transaction.atomic():
        run = EvaluationRun.objects.create(
            policy=version.policy,
            policy_version=version,
            dataset=EvaluationRun.Dataset.GOLDEN if from_golden_set else EvaluationRun.Dataset.FILE,
            dataset_label=dataset_label or ("golden set" if from_golden_set else "file"),
            golden_set_hash=golden_set_hash(snapshot) if from_golden_set else "",
            policy_text=version.text,
            policy_text_hash=version.content_hash,
            transport=config.transport,
            model=model or config.model,
            effort=effort or config.effort,
            total=len(snapshot),
            created_by=actor if actor is not None and actor.pk else None,
        )
        _run_items_create(run, snapshot)
        _run_started_audit(run, actor)
        if enqueue:
            transaction.on_commit(partial(publish.evaluation_run_enqueue, run_id=run.pk))
    return run


def _run_items_create(run: EvaluationRun, snapshot: Sequence[ExampleIn]) -> None:
    """The run's frozen copy of every example, pending."""
    EvaluationResult.objects.bulk_create(
        [
            EvaluationResult(
                run=run,
                position=n,
                example_id=e.example_id,
                text=e.text,
                text_hash=text_hash(e.text),
                expected_label=e.expected_label,
                expected_rule_ids=list(e.rule_ids),
                category=e.category,
            )
            for n, e in enumerate(snapshot)
        ],
        batch_size=1000,
    )


def _run_started_audit(run: EvaluationRun, actor: User | None) -> None:
    audit.record(
        "evaluation.started",
        actor=actor,
        obj=run,
        payload={
            "policy": run.policy.slug,
            "version": run.policy_version.number,
            "dataset": run.dataset_label,
            "examples": run.total,
            "model": run.model,
            "effort": run.effort,
            "transport": run.transport,
        },
    )


def evaluation_runs_stuck() -> list[int]:
    """Runs a lost broker message or a dead worker left behind: queued, or running without a heartbeat."""
    cutoff = timezone.now() - timedelta(seconds=STALE_AFTER_SECONDS)
    return list(
        EvaluationRun.objects.filter(
            Q(status=EvaluationRun.Status.QUEUED, created_at__lt=cutoff)
            | Q(status=EvaluationRun.Status.RUNNING, heartbeat_at__lt=cutoff)
        ).values_list("pk", flat=True)
    )


def evaluation_run_cancel(*, run: EvaluationRun, actor: User) -> EvaluationRun:
    """Stop a queued or running run. Judged items stay; the run never counts for the activation gate."""
    with transaction.atomic():
        cancelled = EvaluationRun.objects.filter(
            pk=run.pk, status__in=[EvaluationRun.Status.QUEUED, EvaluationRun.Status.RUNNING]
        ).update(status=EvaluationRun.Status.CANCELLED, cancelled_by=actor, finished_at=timezone.now())
        run.refresh_from_db()
        if not cancelled:
            raise EvaluationRefused(f"run #{run.pk} is already {run.status}")
        audit.record(
            "evaluation.cancelled",
            actor=actor,
            obj=run,
            payload={"policy": run.policy.slug, "done": run.done, "failed": run.failed, "total": run.total},
        )
    return run


def item_results_of(run: EvaluationRun) -> list[evaluation_metrics.ItemResult]:
    return [
        evaluation_metrics.ItemResult(
            expected=r.expected_label,
            verdict=r.verdict,
            expected_rule_ids=list(r.expected_rule_ids),
            rule_ids=list(r.rule_ids),
            hallucinated_rule_ids=list(r.hallucinated_rule_ids),
            category=r.category,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            latency_ms=r.latency_ms,
        )
        for r in run.results.exclude(status=EvaluationResult.Status.PENDING).order_by("position")
    ]


def run_metrics(run: EvaluationRun) -> dict[str, Any]:
    return evaluation_metrics.evaluation_metrics(
        item_results_of(run), policy_rule_ids=policy_rule_ids_parse(run.policy_text)
    )


# --- comparing two runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlippedItem:
    text: str
    expected_label: str
    before: EvaluationResult
    after: EvaluationResult


@dataclass(frozen=True)
class RunComparison:
    before: EvaluationRun
    after: EvaluationRun
    deltas: list[evaluation_metrics.MetricDelta]
    flipped: list[FlippedItem]
    matched: int


def runs_compare(before: EvaluationRun, after: EvaluationRun) -> RunComparison:
    """Metric deltas, and the items (matched by golden example, else by text) whose verdict changed."""

    def key(r: EvaluationResult) -> tuple[str, str]:
        return ("example", str(r.example_id)) if r.example_id else ("text", r.text_hash)

    earlier = {key(r): r for r in before.results.order_by("position")}
    flipped = []
    matched = 0
    for row in after.results.order_by("position"):
        other = earlier.get(key(row))
        if other is None:
            continue
        matched += 1
        if (other.verdict or "") != (row.verdict or ""):
            flipped.append(FlippedItem(row.text, row.expected_label, other, row))
    return RunComparison(
        before=before,
        after=after,
        deltas=evaluation_metrics.metric_deltas(before.metrics, after.metrics),
        flipped=flipped,
        matched=matched,
    )


# --- the activation gate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationGate:
    passed: bool
    reasons: list[str]
    run: EvaluationRun | None
    baseline: EvaluationRun | None


def _latest_finished_run(version: PolicyVersion, golden_hash: str) -> EvaluationRun | None:
    return (
        EvaluationRun.objects.filter(
            policy_version=version,
            dataset=EvaluationRun.Dataset.GOLDEN,
            golden_set_hash=golden_hash,
            policy_text_hash=version.content_hash,
            status=EvaluationRun.Status.FINISHED,
        )
        .order_by("-finished_at", "-pk")
        .first()
    )


GATED_METRICS = ("f1", "accuracy")


def activation_gate(version: PolicyVersion, *, golden_hash: str | None = None) -> ActivationGate:
    """May ``version`` become active without an override?

    It needs a finished run on the golden set as it is now (same accepted examples) that does not fall
    more than the policy's tolerance below the active version's run on that same set, in F1 or accuracy.
    With no active version yet (the first one), the finished run alone is enough.
    """
    policy = version.policy
    golden_hash = golden_hash if golden_hash is not None else golden_set_hash_now(policy)
    if golden_hash == EMPTY_GOLDEN_SET_HASH:
        return ActivationGate(
            False, ["The golden set has no accepted examples: nothing to measure."], None, None
        )
    run = _latest_finished_run(version, golden_hash)
    if run is None:
        return ActivationGate(
            False,
            [f"v{version.number} has no finished evaluation run on the current golden set."],
            None,
            None,
        )
    active = policy.versions.filter(status=PolicyVersion.Status.ACTIVE).exclude(pk=version.pk).first()
    if active is None:
        return ActivationGate(True, [], run, None)
    baseline = _latest_finished_run(active, golden_hash)
    if baseline is None:
        return ActivationGate(
            False,
            [f"The active version v{active.number} has no finished run on the current golden set."],
            run,
            None,
        )
    tolerance = policy.activation_tolerance
    reasons = []
    for name in GATED_METRICS:
        new, old = run.metrics.get(name), baseline.metrics.get(name)
        if old is not None and (new is None or new < old - tolerance - 1e-9):
            reasons.append(
                f"{name} {_fmt(new)} is below the active version's {_fmt(old)} by more than {tolerance:.3f}."
            )
    return ActivationGate(not reasons, reasons, run, baseline)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
