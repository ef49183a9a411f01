from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.contrib.auth.models import User
from django_htmx.middleware import HtmxDetails
from django_htmx.http import HttpResponseClientRedirect

from reviews import metrics, selectors, services
from reviews.forms import DecisionForm, QueueFilterForm
from reviews.services import DecisionIn, DecisionRefused


class AuthedRequest(HttpRequest):
    """What @login_required guarantees, with django-htmx's details."""

    user: User
    htmx: HtmxDetails


SKIPPED_SESSION_KEY = "skipped_case_ids"
SKIPPED_KEPT = 200


def _reviewer_required(request: AuthedRequest) -> None:
    if not selectors.user_is_reviewer(request.user):
        raise PermissionDenied("Only moderators review cases.")


def _redirect(request: AuthedRequest, url: str) -> HttpResponse:
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return HttpResponseRedirect(url)


@require_GET
@login_required
def home(request: AuthedRequest) -> HttpResponse:
    if selectors.user_is_reviewer(request.user):
        return redirect("reviews:queue")
    return redirect("reviews:metrics")


@require_GET
@login_required
def queue(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    user = request.user
    form = QueueFilterForm(request.GET or None, policies=selectors.policies_reviewable_by(user))
    filters = form.filters() if form.is_valid() else selectors.QueueFilters()
    page = selectors.queue_page(user, filters, cursor=request.GET.get("after", ""))
    context = {
        "form": form,
        "page": page,
        "counts": selectors.queue_counts(user),
        "query": _query_without_cursor(request),
    }
    if request.htmx:
        # The table, and the counters out of band so they agree with it.
        table = render(request, "reviews/queue.html#queue-table", context)
        counts = render(request, "reviews/queue.html#queue-counts", {**context, "oob": True})
        table.content += counts.content
        return table
    return render(request, "reviews/queue.html", context)


def _query_without_cursor(request: AuthedRequest) -> str:
    query = request.GET.copy()
    query.pop("after", None)
    return query.urlencode()


@require_GET
@login_required
def queue_counts(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    return render(
        request, "reviews/queue.html#queue-counts", {"counts": selectors.queue_counts(request.user)}
    )


def _claim_next_and_go(request: AuthedRequest, policy_id: int | None = None) -> HttpResponse:
    skipped = request.session.get(SKIPPED_SESSION_KEY, [])
    case = services.case_claim_next(moderator=request.user, policy_id=policy_id, skip_ids=skipped)
    if case is None:
        messages.info(request, "Nothing left to review in your queues. Well done.")
        request.session[SKIPPED_SESSION_KEY] = []
        return _redirect(request, reverse("reviews:queue"))
    return _redirect(request, reverse("reviews:case_detail", args=[case.pk]))


@require_POST
@login_required
def case_next(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    policy = request.POST.get("policy", "")
    policy_id = int(policy) if policy.isdigit() else None
    return _claim_next_and_go(request, policy_id)


@require_GET
@login_required
def case_detail(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = get_object_or_404(
        selectors.cases_reviewable_by(request.user).select_related(
            "item__source", "policy_version__policy", "lease_owner"
        ),
        pk=case_id,
    )
    mine = selectors.cases_claimed_by(request.user).filter(pk=case.pk).exists()
    context: dict[str, Any] = {**selectors.case_detail(case), "mine": mine}
    if mine:
        context["form"] = DecisionForm(case=case)
    return render(request, "reviews/case_detail.html", context)


@require_POST
@login_required
def case_decide(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = get_object_or_404(
        selectors.cases_claimed_by(request.user).select_related("policy_version"),
        pk=case_id,
    )
    form = DecisionForm(request.POST, case=case)
    if not form.is_valid():
        return render(
            request,
            "reviews/case_detail.html#decision-form",
            {"case": case, "form": form, "mine": True},
            status=400,
        )
    try:
        services.case_decide(
            case=case,
            moderator=request.user,
            decision=DecisionIn(
                action=form.cleaned_data["action"],
                final_label=form.cleaned_data.get("final_label") or "",
                rule_ids=form.cleaned_data.get("rule_ids") or [],
                note=form.cleaned_data.get("note") or "",
                seconds_spent=form.seconds_spent(),
            ),
        )
    except DecisionRefused as exc:
        form.add_error(None, str(exc))
        return render(
            request,
            "reviews/case_detail.html#decision-form",
            {"case": case, "form": form, "mine": True},
            status=409,
        )
    return _claim_next_and_go(request)


@require_POST
@login_required
def case_skip(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = get_object_or_404(selectors.cases_claimed_by(request.user), pk=case_id)
    services.case_release(case=case, moderator=request.user, reason="skip")
    skipped = [case.pk, *request.session.get(SKIPPED_SESSION_KEY, [])][:SKIPPED_KEPT]
    request.session[SKIPPED_SESSION_KEY] = skipped
    return _claim_next_and_go(request)


@require_POST
@login_required
def case_renew(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = get_object_or_404(selectors.cases_reviewable_by(request.user), pk=case_id)
    if services.case_lease_renew(case=case, moderator=request.user):
        return HttpResponse(status=204)
    return HttpResponse("Your hold on this case has expired; it went back to the queue.", status=409)


@require_GET
@login_required
def metrics_page(request: AuthedRequest) -> HttpResponse:
    policies = metrics.policies_for_metrics(request.user)
    if policies is None:
        raise PermissionDenied("Your role has no access to metrics.")
    return render(request, "reviews/metrics.html", {"metrics": metrics.metrics_compute(policies)})


@require_GET
@login_required
def callbacks_page(request: AuthedRequest) -> HttpResponse:
    if not selectors.user_is_admin(request.user):
        raise PermissionDenied("Only admins see callback deliveries.")
    return render(request, "reviews/callbacks.html", {"deliveries": selectors.callback_deliveries_recent()})
