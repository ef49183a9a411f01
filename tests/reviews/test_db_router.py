"""A read replica (DATABASE_REPLICA_URL) serves the metrics page, the exports and the audit log page;
every other read and every write stays on the primary.

The replica here is a second real connection alias, "replica", to the same PostgreSQL test database (what a
streaming replica holds). It is added for these tests only: the rest of the suite runs without one. The
tests commit (transaction=True), so what the primary wrote is visible through the replica's connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.test.utils import CaptureQueriesContext

from audit import services as audit
from audit.models import AuditEvent
from config import db_router
from config.env import database_from_url
from policies.models import Policy
from tests.conftest import ClientFor


@pytest.fixture(scope="module", autouse=True)
def replica_alias() -> Iterator[None]:
    """The alias exists before the tests that name it in their `databases` are set up."""
    primary = connections["default"].settings_dict
    alias: dict[str, Any] = {**primary, "OPTIONS": {}}  # no pool: one plain connection, closed below
    both = connections.configure_settings({"default": connections.settings["default"], "replica": alias})
    connections.settings[db_router.REPLICA] = both[db_router.REPLICA]
    try:
        yield
    finally:
        connections[db_router.REPLICA].close()
        del connections[db_router.REPLICA]
        connections.settings.pop(db_router.REPLICA)


replica_db = pytest.mark.django_db(transaction=True, databases=["default", "replica"])


def selects_of(captured: CaptureQueriesContext, table: str) -> list[str]:
    """The reads of `table`, server-side cursors (DECLARE ... FOR SELECT) included."""
    reads = [
        q["sql"] for q in captured.captured_queries if q["sql"].lstrip().startswith(("SELECT", "DECLARE"))
    ]
    return [sql for sql in reads if table in sql]


def test_settings_add_the_replica_alias_only_when_the_url_is_set() -> None:
    # The same helper as DATABASE_URL; the replica mirrors the primary's test database.
    assert (
        database_from_url("postgres://reader@replica.internal:5432/safeguard")["HOST"] == "replica.internal"
    )
    assert settings.DATABASE_ROUTERS == ["config.db_router.ReplicaRouter"]


@pytest.mark.django_db
def test_without_a_replica_everything_reads_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_router, "replica_configured", lambda: False)
    with db_router.replica_reads() as alias:
        assert alias == "default"
        assert db_router.read_alias() == "default"
    assert db_router.replica_alias() == "default"


@replica_db
def test_the_audit_log_page_reads_the_replica(auditor: User, policy: Policy, client_for: ClientFor) -> None:
    audit.record("policy.special", actor=auditor, obj=policy, payload={})
    client = client_for(auditor)
    with (
        CaptureQueriesContext(connections["replica"]) as on_replica,
        CaptureQueriesContext(connections["default"]) as on_primary,
    ):
        response = client.get("/audit/log/", {"action": "policy.special"})
    assert response.status_code == 200
    assert "policy.special" in response.content.decode()
    assert selects_of(on_replica, "reviews_auditevent"), "the page's events were not read on the replica"
    # The session, the user and the role checks stay on the primary.
    assert selects_of(on_primary, "django_session")
    assert not selects_of(on_replica, "django_session")


@replica_db
def test_the_metrics_page_reads_the_replica(admin: User, active_version: Any, client_for: ClientFor) -> None:
    client = client_for(admin)
    with CaptureQueriesContext(connections["replica"]) as on_replica:
        response = client.get("/metrics/")
    assert response.status_code == 200
    assert selects_of(on_replica, "moderation_case")
    assert selects_of(on_replica, "reviews_decisionhour")  # the decision rollups
    assert selects_of(on_replica, "inference_worker_enginelatencyhour")  # the latency buckets


@replica_db
def test_exports_read_the_replica_and_are_audited_on_the_primary(
    auditor: User, policy: Policy, client_for: ClientFor
) -> None:
    client = client_for(auditor)
    with (
        CaptureQueriesContext(connections["replica"]) as on_replica,
        CaptureQueriesContext(connections["default"]) as on_primary,
    ):
        response = client.get("/audit/export", {"kind": "statements", "format": "jsonl"})
        assert response.status_code == 200
        b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert selects_of(on_replica, "reviews_decision")
    assert not selects_of(on_primary, "reviews_decision")
    # The audit event saying who exported is a write: on the primary, whatever the router is asked.
    assert AuditEvent.objects.filter(action="export.started").exists()
    assert any("INSERT INTO reviews_auditevent" in q["sql"] for q in on_primary.captured_queries)


@replica_db
def test_writes_and_other_reads_stay_on_the_primary(policy: Policy) -> None:
    with db_router.replica_reads() as alias:
        assert alias == "replica"
        assert Policy.objects.all().db == "replica"
        read = Policy.objects.get(pk=policy.pk)
        assert read._state.db == "replica"
        read.name = "Renamed"
        read.save()  # a row read on the replica is written to the primary
    assert Policy.objects.all().db == "default"
    assert Policy.objects.using("default").get(pk=policy.pk).name == "Renamed"
