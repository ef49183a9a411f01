"""Which worker triages which case: single-statement claims of pending cases (SKIP LOCKED), and holding
back the cases a failing engine cannot take yet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from inference_worker import funnel
from inference_worker.runner import EngineConfig
from moderation.models import Case
from policies.models import Policy

CASES = Case._meta.db_table


@dataclass(frozen=True)
class CaseWork:
    case_id: int
    is_appeal: bool
    attempts: int
    content: str
    policy: Policy
    policy_version_id: int
    policy_text: str
    rule_ids: list[str]
    funnel: funnel.FunnelScore | None = None
    # moderation.injection's signals on the item: such an item is never cleared without a human.
    injection_signals: tuple[str, ...] = ()


# The attempt is counted here, when a case is claimed to be sent: a case the breaker holds back is not
# claimed (see services._cases_hold), so waiting for a failing engine uses no attempt. A case that has used
# all its attempts (its worker died on the last one), or has waited give_up_after for an engine that is
# failing (its own last attempt failed, or the breaker is not closed), is claimed without a new attempt and
# goes to humans (`give_up`).
CLAIM_SQL = f"""
    UPDATE {CASES} AS c SET state = %(triaging)s, updated_at = now(),
        triage_attempts = c.triage_attempts + CASE WHEN due.give_up THEN 0 ELSE 1 END
    FROM (
        SELECT id, ({{give_up}}) AS give_up FROM {CASES}
        WHERE state = %(pending)s AND {{where}}
          AND (triage_not_before IS NULL OR triage_not_before <= now())
        ORDER BY id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE c.id = due.id
    RETURNING c.id, due.give_up
"""  # noqa: S608 - the table name is ours, every value is a parameter
GIVE_UP_SQL = """
    triage_attempts >= %(max_attempts)s
    OR (created_at < clock_timestamp() - %(give_up_after)s * interval '1 second'
        AND (triage_attempts > 0 OR %(engine_failing)s))
"""


@dataclass(frozen=True)
class Claimed:
    to_send: list[CaseWork]
    # Claimed without an attempt, to be routed to humans: the engine had its chances (see CLAIM_SQL).
    to_give_up: list[CaseWork]


def cases_claim_for_triage(*, case_ids: list[int] | None, limit: int) -> list[CaseWork]:
    """Move pending cases to triaging in one statement: what it returns belongs to this caller alone."""
    return cases_claim(case_ids=case_ids, limit=limit, config=None).to_send


def cases_claim(
    *,
    case_ids: list[int] | None,
    limit: int,
    config: EngineConfig | None,
    engine_failing: bool = False,
    give_up_only: bool = False,
) -> Claimed:
    """Claim due pending cases (these ids, else any); with a config, those the engine had its chances with
    are claimed to be given up (``give_up_only``: only those)."""
    if limit <= 0:
        return Claimed([], [])
    params: dict[str, Any] = {
        "limit": limit,
        "ids": case_ids,
        "triaging": Case.State.TRIAGING,
        "pending": Case.State.PENDING_TRIAGE,
    }
    give_up = "FALSE"
    if config is not None:
        give_up = GIVE_UP_SQL
        params.update(
            max_attempts=config.max_attempts,
            give_up_after=config.give_up_after_seconds,
            engine_failing=engine_failing,
        )
    where = "TRUE" if case_ids is None else "id = ANY(%(ids)s)"
    if give_up_only:
        where = f"{where} AND ({give_up})"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL.format(where=where, give_up=give_up), params)
        claimed = {row[0]: bool(row[1]) for row in cursor.fetchall()}
    if not claimed:
        return Claimed([], [])
    works = _works_load(list(claimed))
    return Claimed(
        to_send=[w for w in works if not claimed[w.case_id]],
        to_give_up=[w for w in works if claimed[w.case_id]],
    )


def _works_load(case_ids: list[int]) -> list[CaseWork]:
    cases = (
        Case.objects.filter(pk__in=case_ids)
        .select_related("item", "policy_version__policy")
        .only(
            "id",
            "appeal_of_id",
            "triage_attempts",
            "item__text",
            "item__injection_signals",
            "policy_version__text",
            "policy_version__rule_ids",
            "policy_version__policy",
        )
    )
    return [
        CaseWork(
            case_id=c.pk,
            is_appeal=c.is_appeal,
            attempts=c.triage_attempts,
            content=c.item.text,
            policy=c.policy_version.policy,
            policy_version_id=c.policy_version_id,
            policy_text=c.policy_version.text,
            rule_ids=list(c.policy_version.rule_ids),
            injection_signals=tuple(c.item.injection_signals),
        )
        for c in cases
    ]


# Held back by the breaker: the case waits (no attempt used) until a request may start again, but not past
# the moment it has waited give_up_after (then the next claim gives it to humans).
HOLD_SQL = f"""
    UPDATE {CASES} AS c SET updated_at = now(), route_reason = %(reason)s,
        triage_not_before = LEAST(
            now() + %(delay)s * interval '1 second',
            GREATEST(
                c.created_at + %(give_up_after)s * interval '1 second',
                now() + %(min_delay)s * interval '1 second'
            )
        )
    WHERE c.id IN (
        SELECT id FROM {CASES}
        WHERE id = ANY(%(ids)s) AND state = %(pending)s
          AND (triage_not_before IS NULL OR triage_not_before <= now())
        FOR UPDATE SKIP LOCKED
    )
    RETURNING c.id, c.triage_not_before
"""  # noqa: S608 - the table name is ours, every value is a parameter


def cases_hold(
    *, case_ids: list[int], reason: str, delay: float, min_delay: float, give_up_after: float
) -> dict[int, datetime]:
    """Hold the due pending cases among ``case_ids`` back (see HOLD_SQL), in the caller's transaction:
    {case id: when it may be claimed again}."""
    with connection.cursor() as cursor:
        cursor.execute(
            HOLD_SQL,
            {
                "ids": case_ids,
                "reason": reason,
                "delay": delay,
                "give_up_after": give_up_after,
                "min_delay": min_delay,
                "pending": Case.State.PENDING_TRIAGE,
            },
        )
        return dict(cursor.fetchall())
