"""The metrics page and its numbers: backlog, overturn rate, model-vs-moderator precision and recall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User

from moderation.models import Case
from policies.models import Policy
from reviews import metrics, rollups
from reviews.models import Decision, DecisionHour
from reviews.templatetags.figures import hourly_chart, metric, metric_change, rate
from tests.conftest import CasesFactory, ClientFor
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
    made = [
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
    rollups.decision_hours_add([d.pk for d in made])  # as the decide service does, in its transaction
    return made


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
    agreement = metrics.agreement_of(DecisionHour.objects.all())
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
    agreement = metrics.agreement_of(DecisionHour.objects.all())
    assert (agreement.precision, agreement.recall, agreement.total) == (None, None, 0)


@pytest.mark.parametrize("persona", ["moderator", "senior_moderator", "admin", "auditor", "policy_editor"])
def test_it_shows_the_backlog_and_agreement(
    persona: str, request: Any, hand_built: list[Decision], queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    queued_cases(3)
    queued_cases(1, state=Case.State.ESCALATED, needs_senior=True)
    queued_cases(1, state=Case.State.CLAIMED)  # being reviewed: not waiting
    page = client_for(request.getfixturevalue(persona)).get("/metrics/")
    assert page.status_code == 200
    rows = table_rows(page.content)
    assert ["Spam", "4"] in [row[:2] for row in rows]  # waiting: queued and escalated
    text = text_of(page.content)
    assert "Precision 0.75 · recall 0.60 over 10 decisions" in text
    # 14 settled decisions (10 + 2 undetermined + 2 QA), 6 of them overturns.
    assert ["Spam v1", "14", "6", "0.43"] in rows
    assert "QA second reviews: 2, agreeing 1." in text


def test_it_shows_a_moderator_only_their_queues(
    outsider: User, queued_cases: CasesFactory, client_for: ClientFor
) -> None:
    queued_cases(2)
    page = client_for(outsider).get("/metrics/")
    assert page.status_code == 200
    assert "Spam" not in [row[0] for row in table_rows(page.content) if row]


def test_it_refuses_metrics_to_a_user_without_a_role(db: None, client_for: ClientFor) -> None:
    assert client_for(user_create("nobody")).get("/metrics/").status_code == 403


def test_with_nothing_to_show_yet_it_says_so_instead_of_drawing_empty_charts(
    admin: User, settings: Any, client_for: ClientFor
) -> None:
    settings.SAFEGUARD_BASE_URL = ""
    html = client_for(admin).get("/metrics/").content
    text = text_of(html)
    assert "No decisions in the last 24 hours." in text
    assert "No calls to the reasoning engine in the last 24 hours: none is connected (" in text
    assert b'(<a href="/settings/engine">connect one on the Engine page</a>).' in html


def test_the_selector_returns_hourly_counts_and_no_geometry(hand_built: list[Decision]) -> None:
    hourly = metrics.metrics_compute(Policy.objects.all())["hourly"]
    assert len(hourly) == 24 and all(set(h) == {"hour", "count"} for h in hourly)
    assert hourly[-1]["count"] == sum(h["count"] for h in hourly) > 0


def test_the_chart_tag_draws_bars_axes_and_labels_from_the_counts() -> None:
    start = datetime(2026, 3, 1, 13, tzinfo=UTC)
    counts = [0] * 24
    counts[5], counts[23] = 12, 3
    chart = hourly_chart([{"hour": start + timedelta(hours=n), "count": c} for n, c in enumerate(counts)])
    bars = chart.bars
    assert len(bars) == 24 and bars[1].x - bars[0].x == 14 and bars[0].width == 12
    assert bars[5].height == 80 and bars[5].y == chart.top  # the peak reaches the max line
    assert bars[23].height == 20 and bars[23].y + bars[23].height == chart.baseline
    assert bars[0].height == 0 and bars[0].x > chart.left and bars[-1].x + 12 <= chart.right < chart.width
    assert [label.text for label in chart.value_labels] == [12, 0]
    assert [label.text for label in chart.hour_labels] == [
        f"{h:02d}:00" for h in (15, 18, 21, 0, 3, 6, 9, 12)
    ]
    empty = hourly_chart([{"hour": start + timedelta(hours=n), "count": 0} for n in range(24)])
    assert {b.height for b in empty.bars} == {0} and [label.text for label in empty.value_labels] == [0, 0]


@pytest.mark.parametrize(
    ("value", "name", "shown"),
    [
        (1, "recall", "1.000"),
        (1.0, "accuracy", "1.000"),
        (0.0, "hallucinated_rate", "0.000"),
        (0.97049, "f1", "0.970"),
        (-0.125, "kappa", "\N{MINUS SIGN}0.125"),
        (None, "recall", "\N{EM DASH}"),
        (12668.4, "latency_p50_ms", "12,668"),
        (231.6, "completion_tokens_mean", "232"),
    ],
)
def test_every_page_shows_a_metric_in_one_format(value: Any, name: str, shown: str) -> None:
    assert metric(value, name) == shown
    if not name.endswith("_ms") and "tokens" not in name:
        assert rate(value) == shown


def test_a_change_between_runs_is_signed() -> None:
    assert metric_change(0.05, "recall") == "+0.050"
    assert metric_change(-0.02, "false_positive_rate") == "\N{MINUS SIGN}0.020"
    assert metric_change(0.0, "f1") == metric_change(-0.00001, "f1") == "0.000"
    assert metric_change(-12.0, "latency_p95_ms") == "\N{MINUS SIGN}12"
