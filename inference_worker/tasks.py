from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from config import publish
from inference_worker import latency, services, sweep

# A pump claims for PUMP_SECONDS, then drains what is in flight (each call bounded by the engine timeout,
# twice with escalation); the limits sit above that so a healthy task is never killed.
TRIAGE_SOFT_TIME_LIMIT = 900
TRIAGE_TIME_LIMIT = 960


@shared_task(
    name=publish.TRIAGE_CASES,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=120,
    max_retries=8,
    soft_time_limit=TRIAGE_SOFT_TIME_LIMIT,
    time_limit=TRIAGE_TIME_LIMIT,
)
def triage_cases(*, case_ids: list[int], **_: object) -> None:
    services.cases_triage(case_ids=case_ids)


@shared_task(name="inference_worker.triage_sweep", acks_late=True, soft_time_limit=120, time_limit=180)
def triage_sweep(**_: object) -> None:
    sweep.cases_triage_sweep()


@shared_task(
    name="inference_worker.engine_latency_compact", acks_late=True, soft_time_limit=60, time_limit=90
)
def engine_latency_compact(**_: object) -> None:
    latency.engine_latency_compact()
