"""Publishing Celery work by its stable task name, from any app, without importing the app that runs it.

Task modules import the services they run; a service that must wake up work of its own app or of an app
above it (ingestion waking triage, a policy's evaluation run) publishes by name here instead, so the
imports keep one direction (docs/architecture.md). Never raises: every kind of work here has a sweep that
finds it if the broker is away.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from kombu.exceptions import OperationalError as BrokerError

logger = logging.getLogger(__name__)

TRIAGE_CASES = "inference_worker.triage_cases"
EVALUATION_RUN = "reviews.evaluation_run"


def task_publish(name: str, kwargs: dict[str, Any], *, countdown: float = 0) -> None:
    try:
        current_app.send_task(name, kwargs=kwargs, countdown=countdown or None)
    except BrokerError:
        logger.warning("broker unavailable; %s %s waits for its sweep", name, kwargs)


def triage_enqueue(*, case_ids: list[int], countdown: float = 0) -> None:
    """Wake the triage pump for these cases (the triage sweep finds them if this is lost)."""
    task_publish(TRIAGE_CASES, {"case_ids": case_ids}, countdown=countdown)


def evaluation_run_enqueue(*, run_id: int) -> None:
    """Start a queued evaluation run (reviews.evaluation_runs_sweep sends it later if this is lost)."""
    task_publish(EVALUATION_RUN, {"run_id": run_id})
