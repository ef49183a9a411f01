"""Numbers for the metrics page: backlog, throughput, overturns, model-vs-human agreement, engine latency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.roles import Role, user_roles
from config.db_router import replica_reads
from inference_worker import latency
from moderation.models import Case
from policies.models import Policy, PolicyVersion
from reviews import selectors
from reviews.models import DecisionHour

WIDE_VIEW_ROLES = {Role.ADMIN, Role.SENIOR_MODERATOR, Role.POLICY_EDITOR, Role.AUDITOR}
CHART_HOURS = 24


def policies_for_metrics(user: User) -> QuerySet[Policy] | None:
    """Managers see every policy; moderators the queues granted to them; anyone else nothing (None)."""
    roles = user_roles(user)
    if roles & WIDE_VIEW_ROLES:
        return Policy.objects.all()
    if selectors.user_is_reviewer(user):
        return selectors.policies_reviewable_by(user)
    return None


@dataclass(frozen=True)
class Agreement:
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    @property
    def precision(self) -> float | None:
        flagged = self.true_positive + self.false_positive
        return self.true_positive / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        violating = self.true_positive + self.false_negative
        return self.true_positive / violating if violating else None

    @property
    def total(self) -> int:
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative


def agreement_of(hours: QuerySet[DecisionHour]) -> Agreement:
    """The model's verdicts judged against the moderators' final labels (only where the model decided).

    A QA second review repeats the model verdict of the case it checks: it is counted in the QA agreement,
    not here a second time (reviews/rollups.py counts first reviews only).
    """
    sums = hours.aggregate(
        tp=Coalesce(Sum("true_positives"), 0),
        fp=Coalesce(Sum("false_positives"), 0),
        fn=Coalesce(Sum("false_negatives"), 0),
        tn=Coalesce(Sum("true_negatives"), 0),
    )
    return Agreement(sums["tp"], sums["fp"], sums["fn"], sums["tn"])


def metrics_compute(policies: QuerySet[Policy]) -> dict[str, Any]:
    """The metrics page's figures, read from the replica when one is configured (DATABASE_REPLICA_URL)."""
    with replica_reads():
        return _metrics_compute(policies)


def _metrics_compute(policies: QuerySet[Policy]) -> dict[str, Any]:
    now = timezone.now()
    since = now - timedelta(hours=CHART_HOURS)
    policy_ids = list(policies.values_list("id", flat=True))
    # Decisions are read from their hourly rollups (reviews/rollups.py): rows per version and hour, never
    # the decision history.
    hours = DecisionHour.objects.filter(policy_version__policy_id__in=policy_ids)
    hourly = decisions_per_hour(hours, now=now)
    return {
        "backlog": backlog_of(policies, now=now),
        "hourly": hourly,
        "decisions_24h": sum(h["count"] for h in hourly),
        "overturns": overturns_per_version(hours),
        "agreement": agreement_of(hours),
        "qa": hours.aggregate(reviews=Coalesce(Sum("qa_reviews"), 0), agreed=Coalesce(Sum("qa_agreed"), 0)),
        "latency": latency.latency_percentiles(
            PolicyVersion.objects.filter(policy_id__in=policy_ids).values_list("id", flat=True), since
        ),
        # A range of case_auto_recent_idx: the states are in the WHERE, where the partial index serves them.
        "auto": Case.objects.filter(
            policy_version__policy_id__in=policy_ids,
            state__in=[Case.State.AUTO_CLEARED, Case.State.AUTO_ACTIONED],
            updated_at__gte=since,
        ).aggregate(
            auto_cleared=Count("id", filter=Q(state=Case.State.AUTO_CLEARED)),
            auto_actioned=Count("id", filter=Q(state=Case.State.AUTO_ACTIONED)),
        ),
    }


def backlog_of(policies: QuerySet[Policy], *, now: datetime) -> list[dict[str, Any]]:
    """Per policy: the cases waiting, and how many minutes the oldest has waited (None if none waits).

    From the open cases only (selectors.open_counts_by_policy): what is waiting, not the history."""
    backlog = selectors.open_counts_by_policy(list(policies.order_by("name").values("id", "name")))
    for row in backlog:
        row["oldest_age_minutes"] = (
            round((now - row["oldest"]).total_seconds() / 60) if row["oldest"] else None
        )
    return backlog


def decisions_per_hour(hours: QuerySet[DecisionHour], *, now: datetime) -> list[dict[str, Any]]:
    """The last CHART_HOURS hours, oldest first, each with its count (0 for an hour without decisions).

    Data only: the chart's geometry is drawn by reviews/templatetags/figures.py (hourly_chart).
    """
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=CHART_HOURS - 1)
    per_hour = dict(
        hours.filter(hour__gte=first_hour)
        .values_list("hour")
        .annotate(n=Sum("decisions"))
        .values_list("hour", "n")
    )
    chart_hours = [first_hour + timedelta(hours=h) for h in range(CHART_HOURS)]
    return [{"hour": hour, "count": per_hour.get(hour, 0)} for hour in chart_hours]


def overturns_per_version(hours: QuerySet[DecisionHour]) -> Sequence[PolicyVersion]:
    """Policy versions with decisions on a model verdict, each with decided, overturned and overturn_rate.

    Only decisions on cases the model had a verdict for: a label given where the model gave none is
    "decided", neither agreement nor overturn."""
    sums = {
        row["policy_version_id"]: row
        for row in hours.values("policy_version_id")
        .annotate(decided=Sum("on_verdict"), overturned=Sum("overturns"))
        .filter(decided__gt=0)
    }
    versions = list(
        PolicyVersion.objects.filter(pk__in=list(sums))
        .select_related("policy")
        .order_by("policy__name", "-number")
    )
    for version in versions:
        version.decided = sums[version.pk]["decided"]  # type: ignore[attr-defined]
        version.overturned = sums[version.pk]["overturned"]  # type: ignore[attr-defined]
        version.overturn_rate = version.overturned / version.decided  # type: ignore[attr-defined]
    return versions
