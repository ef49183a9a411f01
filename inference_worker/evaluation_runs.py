"""Running an evaluation run on the engine harness triage uses: claim the run, judge its pending items
concurrently (runner.py's in-flight window and retries), save them in batches, finish with its metrics.

A cancel (policies.evaluations.evaluation_run_cancel) is seen at the next save: the stream is closed, which
cancels the requests still in flight. Safe to run twice: a run is claimed by a conditional UPDATE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import aiohttp
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit import services as audit
from inference_worker import verdicts
from inference_worker.engine import EngineRequest, Transport
from inference_worker.runner import EngineConfig, engine_judge_retrying, engine_runner
from policies import evaluation_metrics
from policies.evaluations import NO_ENGINE, STALE_AFTER_SECONDS, run_metrics
from policies.models import EvaluationResult, EvaluationRun
from policies.rules import policy_rule_ids_parse

RETRY_MAX_DELAY_SECONDS = 30.0
SAVE_BATCH = 200


@dataclass(frozen=True)
class ItemOutcome:
    result_id: int
    attempts: int
    verdict: verdicts.Verdict | None = None
    reasoning: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    error: str = ""


async def _item_judge(
    config: EngineConfig,
    result_id: int,
    request: EngineRequest,
    rule_ids: Sequence[str],
    transport: Transport,
    session: aiohttp.ClientSession,
) -> ItemOutcome:
    retried = await engine_judge_retrying(
        transport, session, request, config=config, max_delay_seconds=RETRY_MAX_DELAY_SECONDS
    )
    reply = retried.reply
    if reply is None:
        return ItemOutcome(result_id, retried.attempts, error=retried.error)
    return ItemOutcome(
        result_id,
        retried.attempts,
        verdict=verdicts.verdict_parse(reply.final_text, policy_rule_ids=rule_ids),
        reasoning=reply.reasoning,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=reply.latency_ms,
    )


def _run_claim(run_id: int) -> bool:
    """Queued, or running with a silent worker (a re-delivered task): this caller runs it now."""
    now = timezone.now()
    claimed = (
        EvaluationRun.objects.filter(pk=run_id)
        .filter(
            Q(status=EvaluationRun.Status.QUEUED)
            | Q(
                status=EvaluationRun.Status.RUNNING,
                heartbeat_at__lt=now - timedelta(seconds=STALE_AFTER_SECONDS),
            )
        )
        .update(status=EvaluationRun.Status.RUNNING, started_at=Coalesce("started_at", now), heartbeat_at=now)
    )
    return claimed == 1


def _outcomes_save(run: EvaluationRun, outcomes: list[ItemOutcome]) -> bool:
    """Save a batch; False when the run was cancelled meanwhile (what landed is kept)."""
    rows = {r.pk: r for r in EvaluationResult.objects.filter(pk__in=[o.result_id for o in outcomes])}
    for outcome in outcomes:
        row = rows[outcome.result_id]
        row.attempts = outcome.attempts
        if outcome.verdict is None:
            row.status = EvaluationResult.Status.FAILED
            row.verdict = evaluation_metrics.UNDETERMINED
            row.error = outcome.error[:500]
            continue
        v = outcome.verdict
        row.status = EvaluationResult.Status.DONE
        row.verdict = v.label
        row.rule_ids = list(v.rule_ids)
        row.hallucinated_rule_ids = list(v.hallucinated_rule_ids)
        row.policy_category = (v.policy_category or "")[:200]
        row.confidence = v.confidence or ""
        row.rationale = v.rationale
        row.chain_of_thought = outcome.reasoning
        row.prompt_tokens = outcome.prompt_tokens
        row.completion_tokens = outcome.completion_tokens
        row.latency_ms = outcome.latency_ms
        row.error = ""
    with transaction.atomic():
        EvaluationResult.objects.bulk_update(
            rows.values(),
            [
                "status",
                "attempts",
                "verdict",
                "rule_ids",
                "hallucinated_rule_ids",
                "policy_category",
                "confidence",
                "rationale",
                "chain_of_thought",
                "prompt_tokens",
                "completion_tokens",
                "latency_ms",
                "error",
            ],
        )
        return _run_counters_update(run)


def _run_counters_update(run: EvaluationRun) -> bool:
    """Counters and heartbeat; False when the run is no longer running (cancelled meanwhile)."""
    counts = run.results.aggregate(
        done=Count("id", filter=Q(status=EvaluationResult.Status.DONE)),
        failed=Count("id", filter=Q(status=EvaluationResult.Status.FAILED)),
    )
    EvaluationRun.objects.filter(pk=run.pk).update(done=counts["done"], failed=counts["failed"])
    still_running = EvaluationRun.objects.filter(pk=run.pk, status=EvaluationRun.Status.RUNNING).update(
        heartbeat_at=timezone.now()
    )
    return still_running == 1


def evaluation_run_execute(*, run_id: int, config: EngineConfig | None = None) -> EvaluationRun | None:
    """Judge the run's pending items and finish it; None when another worker has it, it is over, or it
    was cancelled while it ran."""
    if not _run_claim(run_id):
        return None
    run = EvaluationRun.objects.select_related("policy", "policy_version").get(pk=run_id)
    config = config or EngineConfig.from_settings()
    if not config.base_url:
        return _run_end(run, status=EvaluationRun.Status.FAILED, error=NO_ENGINE)
    config = dataclasses.replace(config, transport=run.transport)
    rule_ids = policy_rule_ids_parse(run.policy_text)
    pending = run.results.filter(status=EvaluationResult.Status.PENDING).order_by("position")
    requests = [
        (
            row.pk,
            EngineRequest(
                policy_text=run.policy_text,
                content=row.text,
                effort=run.effort,
                model=run.model,
                max_tokens=config.max_tokens,
            ),
        )
        for row in pending.only("id", "text")
    ]
    if requests:
        stream = engine_runner(config).results_stream(
            (partial(_item_judge, config, result_id, request, rule_ids) for result_id, request in requests),
            batch_size=SAVE_BATCH,
        )
        for batch in stream:
            if not _outcomes_save(run, batch):
                stream.close()  # cancels the requests still in flight
                return None
    return _run_end(run, status=EvaluationRun.Status.FINISHED)


def _run_end(run: EvaluationRun, *, status: str, error: str = "") -> EvaluationRun | None:
    with transaction.atomic():
        # Locked, so a cancel either lands before (and wins) or waits for the run to be over.
        running = EvaluationRun.objects.select_for_update().filter(
            pk=run.pk, status=EvaluationRun.Status.RUNNING
        )
        if not list(running.values_list("pk", flat=True)):
            return None
        _run_counters_update(run)
        run.refresh_from_db()
        run.metrics = run_metrics(run) if status == EvaluationRun.Status.FINISHED else {}
        run.status = status
        run.error = error
        run.finished_at = timezone.now()
        run.save(update_fields=["metrics", "status", "error", "finished_at"])
        audit.record(
            "evaluation.finished",
            actor=None,
            obj=run,
            payload={
                "status": status,
                "error": error,
                "done": run.done,
                "failed": run.failed,
                **{k: run.metrics.get(k) for k in ("accuracy", "precision", "recall", "f1", "kappa")},
            },
        )
    return run
