from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError

from inference_worker import services, sweep

logger = logging.getLogger(__name__)

# A pump claims for PUMP_SECONDS, then drains what is in flight (each call bounded by the engine timeout,
# twice with escalation); the limits sit above that so a healthy task is never killed.
TRIAGE_SOFT_TIME_LIMIT = 900
TRIAGE_TIME_LIMIT = 960


@shared_task(
    name="inference_worker.triage_cases",
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


def triage_enqueue(*, case_ids: list[int], countdown: float = 0) -> None:
    """Publish a wake-up for these cases. Never raises: if the broker is away, the sweep finds them."""
    try:
        triage_cases.apply_async(kwargs={"case_ids": case_ids}, countdown=countdown)
    except BrokerError:
        logger.warning("broker unavailable; %d cases wait for the triage sweep", len(case_ids))
