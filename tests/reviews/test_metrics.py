"""The metrics page and its numbers: backlog, overturn rate, model-vs-moderator precision and recall."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from moderation.models import Case
from reviews import metrics
from reviews.models import Decision
from tests.reviews.conftest import CasesFactory
from tests.reviews.helpers import table_rows, text_of, user_create


def decisions_made(
    queued_cases: CasesFactory,
    moderator: User,
    model_verdict: str,
    final_label: str,
    count: int,
    agrees: bool | None = None,
    **case: Any,
) -> list[Decision]:
    cases = queued_cases(count, state=Case.State.DECIDED, verdict=model_verdict, **case)
    if final_label == "":
        action = Decision.Action.ESCALATE
    elif final_label == model_verdict:
        action = Decision.Action.CONFIRM
    else:
        action = Decision.Action.OVERTURN
    return [
        Decision.objects.create(
            case=c,
            moderator=moderator,
            action=action,
            final_label=final_label,
            model_verdict=model_verdict,
            agrees_with_reviewed=agrees,
        )
        for c in cases
    ]


@pytest.fixture
def hand_built(queued_cases: CasesFactory, moderator: User, other_moderator: User) -> list[Decision]:
    """3 true positives, 1 false positive, 2 false negatives, 4 true negatives, and what must not count."""
    made = [
        *decisions_made(queued_cases, moderator, "violates", "violates", 3),
        *decisions_made(queued_cases, moderator, "violates", "safe", 1),
        *decisions_made(queued_cases, moderator, "safe", "violates", 2),
        *decisions_made(queued_cases, moderator, "safe", "safe", 4),
        # No model verdict: nothing to agree with.
        *decisions_made(queued_cases, moderator, "undetermined", "violates", 2),
        # Escalations settle nothing.
        *decisions_made(queued_cases, moderator, "violates", "", 2),
    ]
    # Two QA second reviews repeat a model verdict already counted above.
    decisions_made(queued_cases, other_moderator, "violates", "violates", 1, True, qa_of=made[0].case)
    decisions_made(queued_cases, other_moderator, "violates", "safe", 1, False, qa_of=made[1].case)
    return made


def test_it_computes_precision_and_recall_of_the_model_against_moderators(hand_built: list[Decision]) -> None:
    agreement = metrics.agreement_of(Decision.objects.all())
    assert (
        agreement.true_positive,
        agreement.false_positive,
        agreement.false_negative,
        agreement.true_negative,
    ) == (3, 1, 2, 4)
    assert agreement.total == 10
    assert agreement.precision == pytest.approx(0.75)
    assert agreement.recall == pytest.approx(0.6)


def test_it_has_no_precision_or_recall_without_decisions(db: None) -> None:
    agreement = metrics.agreement_of(Decision.objects.all())
    assert (agreement.precision, agreement.recall, agreement.total) == (None, None, 0)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("persona", ["moderator", "senior_moderator", "admin", "auditor", "policy_editor"])
def test_it_shows_the_backlog_and_agreement(
    persona: str, request: Any, hand_built: list[Decision], queued_cases: CasesFactory
) -> None:
    queued_cases(3)
    queued_cases(1, state=Case.State.ESCALATED, needs_senior=True)
    queued_cases(1, state=Case.State.CLAIMED)  # being reviewed: not waiting
    page = logged_in(request.getfixturevalue(persona)).get("/metrics/")
    assert page.status_code == 200
    rows = table_rows(page.content)
    assert ["Spam", "4"] in [row[:2] for row in rows]  # waiting: queued and escalated
    text = text_of(page.content)
    assert "Precision 0.75 · recall 0.60 over 10 decisions" in text
    # 14 settled decisions (10 + 2 undetermined + 2 QA), 6 of them overturns.
    assert ["Spam v1", "14", "6", "0.43"] in rows
    assert "QA second reviews: 2, agreeing 1." in text


def test_it_shows_a_moderator_only_their_queues(outsider: User, queued_cases: CasesFactory) -> None:
    queued_cases(2)
    page = logged_in(outsider).get("/metrics/")
    assert page.status_code == 200
    assert "Spam" not in [row[0] for row in table_rows(page.content) if row]


def test_it_refuses_metrics_to_a_user_without_a_role(db: None) -> None:
    assert logged_in(user_create("nobody")).get("/metrics/").status_code == 403


def test_with_nothing_to_show_yet_it_says_so_instead_of_drawing_empty_charts(
    admin: User, settings: Any
) -> None:
    settings.SAFEGUARD_BASE_URL = ""
    text = text_of(logged_in(admin).get("/metrics/").content)
    assert "No decisions in the last 24 hours." in text
    assert (
        "No calls to the reasoning engine in the last 24 hours: none is configured (SAFEGUARD_BASE_URL)."
        in text
    )
