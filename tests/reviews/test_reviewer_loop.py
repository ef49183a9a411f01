"""The reviewer loop (issue 18, item 3): a decision and the next claim are one transaction with one append to
the audit chain; the user's roles and grants load with the user, and still change on the next request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client

from accounts.roles import Role
from audit.models import AuditEvent
from moderation.models import Case
from policies.models import Policy
from reviews.models import Decision, QueueGrant
from tests.conftest import CasesFactory, ClientFor


class Statements:
    """Every SQL statement a block sends, BEGIN and COMMIT included (Django's query log leaves them out)."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.sql.append(sql)
        return execute(sql, params, many, context)


def decide_next(client: Client, case: Case, **data: Any) -> tuple[Any, Statements]:
    statements = Statements()
    with connection.execute_wrapper(statements):
        response = client.post(f"/cases/{case.pk}/decide", {"action": "confirm", **data})
    return response, statements


@pytest.fixture
def no_qa(policy: Policy) -> None:
    Policy.objects.filter(pk=policy.pk).update(qa_sample_rate=0)


def test_it_records_the_decision_and_claims_the_next_case_in_one_append_to_the_audit_chain(
    client_for: ClientFor, moderator: User, queued_cases: CasesFactory, no_qa: None
) -> None:
    first, second = queued_cases(2, verdict="safe")
    client = client_for(moderator)
    assert client.post("/queue/next").headers["Location"] == f"/cases/{first.pk}/"

    response, statements = decide_next(client, first)

    assert response.status_code == 302 and response.headers["Location"] == f"/cases/{second.pk}/"
    assert Decision.objects.get(case=first).action == Decision.Action.CONFIRM
    second.refresh_from_db()
    assert second.state == Case.State.CLAIMED and second.lease_owner == moderator
    decided, claimed = AuditEvent.objects.filter(action__in=["case.decided", "case.claimed"]).order_by(
        "-seq"
    )[:2][::-1]
    # One append: consecutive links of the chain with one time, decided first.
    assert (decided.action, decided.object_id, claimed.action, claimed.object_id) == (
        "case.decided",
        str(first.pk),
        "case.claimed",
        str(second.pk),
    )
    assert claimed.seq == decided.seq + 1 and claimed.created_at == decided.created_at
    chain_reads = [s for s in statements.sql if "ORDER BY seq DESC" in s]
    assert len(chain_reads) == 1
    # One transaction (the test's own transaction makes it a savepoint), none nested inside it.
    assert len([s for s in statements.sql if s.startswith("SAVEPOINT")]) == 1


def test_it_claims_nothing_when_the_decision_is_refused(
    client_for: ClientFor, moderator: User, queued_cases: CasesFactory, no_qa: None
) -> None:
    first, second = queued_cases(2, verdict="safe")
    client = client_for(moderator)
    client.post("/queue/next")

    # "violates" needs a rule under this policy: nothing is recorded, and the moderator keeps their case.
    response, _ = decide_next(client, first, action="overturn", final_label="violates")

    assert response.status_code == 400 or response.status_code == 409
    assert not Decision.objects.exists()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.lease_owner == moderator and first.state == Case.State.CLAIMED
    assert second.state == Case.State.QUEUED


def test_it_loads_roles_and_grants_with_the_user_in_one_statement(
    client_for: ClientFor, moderator: User
) -> None:
    client = client_for(moderator)
    statements = Statements()
    with connection.execute_wrapper(statements):
        assert client.get("/queue/counts").status_code == 200
    user_reads = [s for s in statements.sql if 'FROM "auth_user"' in s]
    assert len(user_reads) == 1
    assert not [s for s in statements.sql if s.lstrip().startswith('SELECT "auth_group"')]


def test_a_revoked_grant_or_role_counts_from_the_next_request(
    client_for: ClientFor, moderator: User, policy: Policy, queued_cases: CasesFactory
) -> None:
    [case] = queued_cases(1, verdict="safe")
    client = client_for(moderator)
    assert client.get(f"/cases/{case.pk}/").status_code == 200

    QueueGrant.objects.filter(user=moderator, policy=policy).delete()
    assert client.get(f"/cases/{case.pk}/").status_code == 404
    assert client.post("/queue/next").headers["Location"].startswith("/queue/")

    QueueGrant.objects.create(user=moderator, policy=policy)
    moderator.groups.remove(Group.objects.get(name=Role.MODERATOR))
    assert client.get(f"/cases/{case.pk}/").status_code == 403
