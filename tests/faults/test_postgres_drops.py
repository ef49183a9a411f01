"""Fault: PostgreSQL drops the worker's connections while it writes triage results.

The worker's backends are terminated with pg_terminate_backend (found by their application_name), again
and again during triage. Restarting the server itself would break every other test run on the machine;
`test_it_survives_a_postgres_restart` does that, only when FAULTS_RESTART_POSTGRES=1.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper

from inference_worker.testing.engine_simulator import EngineSimulator
from moderation.models import Case
from tests.faults.conftest import Platform
from tests.faults.invariants import assert_nothing_lost
from tests.faults.stack import (
    WORKER_APPLICATION_NAME,
    expected_label,
    item_texts,
    items_send,
    stack_running,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

ITEMS = 2500
TERMINATE_EVERY_SECONDS = 0.4
TERMINATE_ROUNDS = 25
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def worker_backends_terminate() -> int:
    """Terminate every backend the Celery worker holds on the test database; how many there were."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s",
            [connection.settings_dict["NAME"], WORKER_APPLICATION_NAME],
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


def test_it_loses_nothing_when_the_worker_connections_drop_during_triage(
    platform: Platform, engine: EngineSimulator, tmp_path: Path
) -> None:
    texts = item_texts("pgdrop", ITEMS)
    source = platform.source
    cases = Case.objects.filter(item__source=source)
    terminated = 0
    with stack_running(tmp_path, engine.base_url) as stack, concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(items_send, stack.base_url, platform.api_key, texts)
        wait_for(lambda: cases.exists(), timeout=60, what="the first cases")
        # Cut the worker off again and again while items arrive and it triages them.
        for _ in range(TERMINATE_ROUNDS):
            terminated += worker_backends_terminate()
            time.sleep(TERMINATE_EVERY_SECONDS)
        triaged_under_fault = cases.exclude(
            state__in=[Case.State.PENDING_TRIAGE, Case.State.TRIAGING]
        ).count()
        sent = sending.result(timeout=60)
        assert sent.accepted == set(texts)
        stack.wait_settled(source)
        worker_log = stack.worker.log_text()

    assert terminated >= 5, f"only {terminated} worker connections were cut: the fault did not happen"
    assert "OperationalError" in worker_log, "the worker never noticed a dropped connection"
    report = assert_nothing_lost(
        source=source, external_ids=texts, expected_labels={k: expected_label(v) for k, v in texts.items()}
    )
    print(
        f"postgres drops: {terminated} worker connections terminated in {TERMINATE_ROUNDS} rounds, "
        f"{triaged_under_fault} cases triaged meanwhile; {report.line()}"
    )


@pytest.mark.skipif(
    os.environ.get("FAULTS_RESTART_POSTGRES") != "1",
    reason="restarts the machine's PostgreSQL (breaks parallel test runs): set FAULTS_RESTART_POSTGRES=1",
)
def test_it_survives_a_postgres_restart(platform: Platform, engine: EngineSimulator, tmp_path: Path) -> None:
    texts = item_texts("pgrestart", ITEMS)
    source = platform.source
    cases = Case.objects.filter(item__source=source)
    with stack_running(tmp_path, engine.base_url) as stack:
        first_half = dict(list(texts.items())[: ITEMS // 2])
        items_send(stack.base_url, platform.api_key, first_half)
        wait_for(lambda: cases.exclude(state=Case.State.PENDING_TRIAGE).exists(), timeout=60, what="triage")
        try:
            connection.close()
            subprocess.run(
                [
                    "pg_ctlcluster",
                    "--skip-systemctl-redirect",
                    *os.listdir("/etc/postgresql"),
                    "main",
                    "restart",
                ],
                check=True,
                timeout=120,
            )
        finally:
            wait_for(
                lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0,
                timeout=60,
                what="PostgreSQL to accept connections",
            )
            # Its pooled connections died with the server; the next query opens new ones.
            database = connections["default"]
            assert isinstance(database, PostgresDatabaseWrapper)
            database.close_pool()
        # The web tier may answer 5xx until its pool reconnects: the client retries, as a platform does.
        items_send(stack.base_url, platform.api_key, dict(list(texts.items())[ITEMS // 2 :]))
        stack.wait_settled(source)

    report = assert_nothing_lost(
        source=source, external_ids=texts, expected_labels={k: expected_label(v) for k, v in texts.items()}
    )
    print(f"postgres restart: {report.line()}")
