from __future__ import annotations

import logging
import math
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from config import publish
from inference_worker import evaluation_runs
from policies import evaluations
from reviews import callbacks, history, qa, rollups, services

logger = logging.getLogger(__name__)

# About 4.5 hours of retries, then it is left failed and visible on the callbacks page. With full jitter
# Celery waits a random time up to 1, 2, 4 ... 1800 s (CALLBACK_RETRY_BACKOFF_MAX_SECONDS): 28 retries
# take up to 9 hours, 4.5 on average.
CALLBACK_MAX_RETRIES = 28


@shared_task(
    name="reviews.callback_deliver",
    acks_late=True,
    autoretry_for=(callbacks.CallbackFailed, OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=settings.CALLBACK_RETRY_BACKOFF_MAX_SECONDS,
    retry_jitter=True,
    max_retries=CALLBACK_MAX_RETRIES,
    # Backstops: the client ends an attempt at CALLBACK_TOTAL_TIMEOUT_SECONDS, and an attempt cut by the soft
    # limit is still recorded and retried.
    soft_time_limit=math.ceil(settings.CALLBACK_TOTAL_TIMEOUT_SECONDS) + 45,
    time_limit=math.ceil(settings.CALLBACK_TOTAL_TIMEOUT_SECONDS) + 75,
)
def callback_deliver(*, decision_id: int, **_: object) -> None:
    callbacks.callback_deliver(decision_id=decision_id)


@shared_task(name="reviews.leases_expire", acks_late=True, soft_time_limit=60, time_limit=90)
def leases_expire(**_: object) -> None:
    services.leases_expire()


@shared_task(name="reviews.callbacks_sweep", acks_late=True, soft_time_limit=60, time_limit=90)
def callbacks_sweep(**_: object) -> None:
    for decision_id in callbacks.callbacks_lost(max_attempts=CALLBACK_MAX_RETRIES + 1):
        callback_enqueue(decision_id=decision_id)


def callback_enqueue(*, decision_id: int) -> None:
    """Publish a delivery. Never raises: if the broker is away, reviews.callbacks_sweep sends it later."""
    try:
        callback_deliver.delay(decision_id=decision_id)
    except BrokerError:
        logger.warning("broker unavailable; callback for decision %s waits for the sweep", decision_id)


@shared_task(
    name=publish.EVALUATION_RUN,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 60,
)
def evaluation_run(*, run_id: int, **_: object) -> None:
    evaluation_runs.evaluation_run_execute(run_id=run_id)


@shared_task(name="reviews.evaluation_runs_sweep", acks_late=True, soft_time_limit=60, time_limit=90)
def evaluation_runs_sweep(**_: object) -> None:
    for run_id in evaluations.evaluation_runs_stuck():
        publish.evaluation_run_enqueue(run_id=run_id)


@shared_task(
    name="inference_worker.autoclear_monitor",  # its first name: messages in flight keep working
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=60,
    time_limit=90,
)
def autoclear_monitor(*, policy_version_id: int, tier: str, **_: object) -> None:
    qa.autoclear_monitor_check(policy_version_id=policy_version_id, tier=tier)


def autoclear_monitor_enqueue(*, policy_version_id: int, tier: str) -> None:
    """After a QA decision on an auto-clear. If the broker is away, the next QA decision checks again."""
    try:
        autoclear_monitor.delay(policy_version_id=policy_version_id, tier=tier)
    except BrokerError:
        logger.warning("broker unavailable; auto-clear monitoring of version %d waits", policy_version_id)


# Recent hours are recounted; older ones only change if someone edits history (decisions are append-only).
ROLLUP_RECOUNT_HOURS = 48


@shared_task(name="reviews.decision_hours_compact", acks_late=True, soft_time_limit=60, time_limit=90)
def decision_hours_compact(**_: object) -> None:
    rollups.decision_hours_compact()


@shared_task(
    name="reviews.decision_hours_reconcile",
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),  # a serialization failure too: recount again
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=120,
    time_limit=180,
)
def decision_hours_reconcile(**_: object) -> None:
    rollups.decision_hours_reconcile(since=timezone.now() - timedelta(hours=ROLLUP_RECOUNT_HOURS))


@shared_task(name="reviews.history_partitions_ensure", acks_late=True, soft_time_limit=60, time_limit=90)
def history_partitions_ensure(**_: object) -> None:
    history.partitions_ensure()


# An export streams a whole month to disk: generous limits, and a run cut short leaves the month attached.
@shared_task(name="reviews.history_archive", acks_late=True, soft_time_limit=3300, time_limit=3600)
def history_archive(**_: object) -> None:
    history.history_archive_due()
