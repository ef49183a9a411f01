from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpResponse,
    HttpResponseBadRequest,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from config.middleware import session_passive
from inference_worker.runner import EngineConfig
from moderation.models import Case
from policies import selectors as policy_selectors
from policies.models import Verdict
from reviews import metrics, selectors, services
from reviews.autoclear_status import funnel_calibrations_for_policies, suspensions_open_for_policies
from reviews.forms import DecisionForm, ItemDecisionForm, QueueFilterForm
from reviews.models import Decision
from reviews.services import DecisionIn, DecisionRefused, LeaseLost
from reviews.web import AuthedRequest, partial_wanted, redirect_to, render_page

SKIPPED_SESSION_KEY = "skipped_case_ids"
SKIPPED_KEPT = 200
# The policy the moderator chose on the queue page: "next", a decision and a skip all claim from it.
POLICY_FILTER_SESSION_KEY = "queue_policy_id"


def _reviewer_required(request: AuthedRequest) -> None:
    if not selectors.user_is_reviewer(request.user):
        raise PermissionDenied("Only moderators review cases.")


@require_GET
@login_required
def home(request: AuthedRequest) -> HttpResponse:
    if selectors.user_is_reviewer(request.user):
        return redirect("reviews:queue")
    if policy_selectors.user_is_policy_editor(request.user):
        return redirect("reviews:policies")
    return redirect("reviews:metrics")


@require_GET
@login_required
def queue(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    user = request.user
    form = QueueFilterForm(request.GET or None, policies=selectors.policies_reviewable_by(user))
    filters = form.filters() if form.is_valid() else selectors.QueueFilters()
    try:
        page = selectors.queue_page(user, filters, cursor=request.GET.get("after", ""))
    except selectors.CursorOutOfRange as exc:
        return HttpResponseBadRequest(f"{exc}; start again from the first page of the queue.")
    context = {
        "form": form,
        "page": page,
        "counts": selectors.queue_counts(user),
        "query": _query_without_cursor(request),
    }
    if partial_wanted(request):
        # The table, and the counters out of band so they agree with it.
        table = render(request, "reviews/queue.html#queue-table", context)
        counts = render(request, "reviews/queue.html#queue-counts", {**context, "oob": True})
        table.content += counts.content
        patch_vary_headers(table, ("HX-Request",))
        return table
    return render_page(request, "reviews/queue.html", context)


def _query_without_cursor(request: AuthedRequest) -> str:
    query = request.GET.copy()
    query.pop("after", None)
    return query.urlencode()


@session_passive  # polled every 10 s by the queue page
@require_GET
@login_required
def queue_counts(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    return render(
        request, "reviews/queue.html#queue-counts", {"counts": selectors.queue_counts(request.user)}
    )


def _claim_scope(request: AuthedRequest) -> services.ClaimScope:
    """The queue filter the moderator chose with "next" (kept in the session, so a decision or a skip
    stays in the same queue), less the cases they skipped."""
    return services.ClaimScope(
        policy_id=request.session.get(POLICY_FILTER_SESSION_KEY),
        skip_ids=request.session.get(SKIPPED_SESSION_KEY, []),
    )


def _claim_next_and_go(request: AuthedRequest) -> HttpResponse:
    scope = _claim_scope(request)
    case = services.case_claim_next(
        moderator=request.user, policy_id=scope.policy_id, skip_ids=scope.skip_ids
    )
    return _go_to(request, case, scope)


def _go_to(request: AuthedRequest, case: Case | None, scope: services.ClaimScope) -> HttpResponse:
    """To the case claimed next, or back to the queue, saying truthfully why there is none."""
    if case is not None:
        return redirect_to(request, reverse("reviews:case_detail", args=[case.pk]))
    left = selectors.why_empty(request.user, policy_id=scope.policy_id, skipped_ids=list(scope.skip_ids))
    where = "this queue" if scope.policy_id is not None else "your queues"
    message = f"Nothing left to review in {where}."
    message += f" Still waiting: {left}." if str(left) else " Well done."
    messages.info(request, message)
    request.session[SKIPPED_SESSION_KEY] = []
    query = f"?{urlencode({'policy': scope.policy_id})}" if scope.policy_id is not None else ""
    return redirect_to(request, reverse("reviews:queue") + query)


@require_POST
@login_required
def case_next(request: AuthedRequest) -> HttpResponse:
    _reviewer_required(request)
    policy = request.POST.get("policy")
    if policy is not None:  # the queue page's filter ("" = all my queues); other pages keep the current one
        request.session[POLICY_FILTER_SESSION_KEY] = int(policy) if policy.isdigit() else None
    return _claim_next_and_go(request)


@require_GET
@login_required
def case_detail(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = selectors.case_viewable(
        request.user, case_id, "item__source", "policy_version__policy", "lease_owner"
    )
    if case is None:
        raise Http404("No such case in your queues.")
    mine = case.is_held_by(request.user.pk)
    if mine:
        held = selectors.item_cases_claimed_by(request.user, case)
        if len(held) > 1:
            return _item_page(request, held, ItemDecisionForm(cases=held))
    return _case_page(request, case, DecisionForm(case=case) if mine else None)


def _item_page(
    request: AuthedRequest,
    cases: list[Case],
    form: ItemDecisionForm,
    *,
    status: int = 200,
    lost: bool = False,
) -> HttpResponse:
    """Item-centric review: the content once, and per policy its verdict, reasoning, label and rules."""
    first = cases[0]
    context: dict[str, Any] = {
        "case": first,
        "item": first.item,
        "source": first.item.source,
        "form": form,
        "panels": list(zip(selectors.policy_panels(cases), form.policies, strict=True)),
        "metadata": metadata_rows(first.item.metadata),
        "any_violates": any(c.verdict == Verdict.VIOLATES for c in cases),
        "content_collapse_chars": CONTENT_COLLAPSE_CHARS,
        "lease_renew_seconds": LEASE_RENEW_SECONDS,
        "lost": lost,
    }
    if partial_wanted(request) and status != 200:
        return render(request, "reviews/item_review.html#item-form", context, status=status)
    return render_page(request, "reviews/item_review.html", context, status=status)


def _case_page(
    request: AuthedRequest,
    case: Case,
    form: DecisionForm | None,
    *,
    status: int = 200,
    notice: str = "",
) -> HttpResponse:
    detail = selectors.case_detail(case, request.user)
    latest = detail.get("latest")
    context: dict[str, Any] = {
        **detail,
        "mine": form is not None,
        "form": form,
        "notice": notice,
        "metadata": metadata_rows(case.item.metadata),
        "content_blurred": latest is not None and latest.verdict == Verdict.VIOLATES,
        "content_collapse_chars": CONTENT_COLLAPSE_CHARS,
        "final_text_chars": FINAL_TEXT_CHARS,
        "lease_renew_seconds": LEASE_RENEW_SECONDS,
    }
    return render_page(request, "reviews/case_detail.html", context, status=status)


# Longer texts start collapsed on the review screens (a click shows all).
CONTENT_COLLAPSE_CHARS = 1500
# The engine's final answer as sent, shortened under its reasoning.
FINAL_TEXT_CHARS = 400
# The review screens renew the moderator's lease well before it runs out (services.LEASE_MINUTES).
LEASE_RENEW_SECONDS = 240


def metadata_rows(metadata: object) -> list[tuple[str, str]]:
    """The source's metadata as (key, text) rows: strings as they are, anything else as JSON.

    Done here, not with ``metadata.items`` in the template: a key named "items" (or "keys", ...) would
    win the template's lookup and break the page.
    """
    if not isinstance(metadata, dict):
        return [("", _as_text(metadata))] if metadata else []
    return [(str(key), _as_text(value)) for key, value in metadata.items()]


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


LEASE_LOST = "Not recorded: this case is no longer yours (your hold on it expired). Take the next case."


def _decision_form_invalid(
    request: AuthedRequest, case: Case, form: DecisionForm, *, status: int
) -> HttpResponse:
    """htmx swaps the form in place; without htmx the whole page comes back with the errors.

    A moderator who lost the case is offered the next one instead of a form they can no longer use.
    """
    lost = not selectors.cases_claimed_by(request.user).filter(pk=case.pk).exists()
    if partial_wanted(request):
        return render(
            request,
            "reviews/case_detail.html#decision-form",
            {"case": case, "form": form, "mine": True, "lost": lost},
            status=status,
        )
    full = get_object_or_404(
        selectors.cases_viewable_by(request.user).select_related(
            "item__source", "policy_version__policy", "lease_owner"
        ),
        pk=case.pk,
    )
    if lost:
        return _case_page(
            request, full, None, status=status, notice=" ".join(str(e) for e in form.non_field_errors())
        )
    return _case_page(request, full, form, status=status)


def _decision_refused(request: AuthedRequest, case: Case, form: DecisionForm, message: str) -> HttpResponse:
    form.is_valid()  # add_error needs a cleaned form
    form.add_error(None, message)
    return _decision_form_invalid(request, case, form, status=409)


@require_POST
@login_required
def case_decide(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    # Any case the moderator may see: one whose hold they lost gets a 409 that says so, not a 404.
    case = selectors.case_viewable(request.user, case_id, "policy_version__policy", "item__source")
    if case is None:
        raise Http404("No such case in your queues.")
    form = DecisionForm(request.POST, case=case)
    # The lease first: a moderator who lost the case hears that (409), not what the form lacks (400).
    if not case.is_held_by(request.user.pk):
        return _decision_refused(request, case, form, LEASE_LOST)
    if not form.is_valid():
        return _decision_form_invalid(request, case, form, status=400)
    decision = DecisionIn(
        action=form.cleaned_data["action"],
        final_label=form.cleaned_data.get("final_label") or "",
        rule_ids=form.cleaned_data.get("rule_ids") or [],
        note=form.cleaned_data.get("note") or "",
        seconds_spent=form.seconds_spent(),
    )
    scope = _claim_scope(request)
    try:
        recorded = services.item_decide(
            moderator=request.user, decisions=[(case, decision)], claim_next=scope
        )
    except LeaseLost:
        return _decision_refused(request, case, form, LEASE_LOST)
    except DecisionRefused as exc:
        return _decision_refused(request, case, form, f"Not recorded: {exc}.")
    messages.success(request, decision_summary(case, recorded.decisions[0]))
    return _go_to(request, recorded.next_case, scope)


@require_POST
@login_required
def item_decide(request: AuthedRequest, case_id: int) -> HttpResponse:
    """One submit for every policy of the item the moderator holds (case_id: any of its cases)."""
    _reviewer_required(request)
    case = selectors.case_viewable(request.user, case_id, "policy_version__policy", "item__source")
    if case is None:
        raise Http404("No such case in your queues.")
    held = selectors.item_cases_claimed_by(request.user, case)
    # The cases the page was drawn with: if the moderator lost any of them, nothing is recorded.
    shown = {int(pk) for pk in request.POST.get("cases", "").split(",") if pk.strip().isdigit()}
    mine = {c.pk for c in held}
    if case.pk not in mine or not shown <= mine or not case.is_held_by(request.user.pk):
        return _item_lost(request, held)
    form = ItemDecisionForm(request.POST, cases=held)
    if not form.is_valid():
        return _item_page(request, held, form, status=400)
    scope = _claim_scope(request)
    try:
        recorded = services.item_decide(moderator=request.user, decisions=form.decisions(), claim_next=scope)
    except LeaseLost:
        return _item_lost(request, held)
    except DecisionRefused as exc:
        form.add_error(None, f"Not recorded: {exc}.")
        return _item_page(request, held, form, status=409)
    for each, decision in zip(held, recorded.decisions, strict=True):
        messages.success(request, decision_summary(each, decision))
    return _go_to(request, recorded.next_case, scope)


def _item_lost(request: AuthedRequest, cases: list[Case]) -> HttpResponse:
    """Nothing recorded: the page again, saying so, with "next" instead of the decision buttons."""
    form = ItemDecisionForm(request.POST, cases=cases)
    form.is_valid()
    form.add_error(None, LEASE_LOST)
    return _item_page(request, cases, form, status=409, lost=True)


def decision_summary(case: Case, made: Decision) -> str:
    """What was recorded, in one line: "Case 12 (Spam): decided violates SP2; callback queued"."""
    where = f"Case {case.pk} ({case.policy_version.policy.name})"
    if made.action == Decision.Action.ESCALATE:
        return f"{where}: escalated to senior moderators."
    rules = f" {', '.join(made.rule_ids)}" if made.rule_ids else ""
    verb = {"confirm": "confirmed", "overturn": "overturned to", "decided": "decided"}[made.action]
    callback = (
        "; callback queued"
        if case.item.source.callback_url and case.qa_of_id is None
        else "; no callback (QA review)"
        if case.qa_of_id is not None
        else ""
    )
    return f"{where}: {verb} {made.final_label}{rules}{callback}."


@require_POST
@login_required
def case_skip(request: AuthedRequest, case_id: int) -> HttpResponse:
    _reviewer_required(request)
    case = get_object_or_404(selectors.cases_claimed_by(request.user), pk=case_id)
    # Skipping an item gives back every case of it held under the one claim.
    held = selectors.item_cases_claimed_by(request.user, case)
    for each in held:
        services.case_release(case=each, moderator=request.user, reason="skip")
    skipped = [*(c.pk for c in held), *request.session.get(SKIPPED_SESSION_KEY, [])][:SKIPPED_KEPT]
    request.session[SKIPPED_SESSION_KEY] = skipped
    return _claim_next_and_go(request)


@session_passive  # polled by the case page: an open tab is not activity
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
    context = {
        "metrics": metrics.metrics_compute(policies),
        "funnel_calibrations": funnel_calibrations_for_policies(policies.order_by("name")),
        "suspensions": suspensions_open_for_policies(policies),
        "engine_configured": bool(EngineConfig.from_settings().base_url),
    }
    return render_page(request, "reviews/metrics.html", context)


@require_GET
@login_required
def callbacks_page(request: AuthedRequest) -> HttpResponse:
    if not selectors.user_is_admin(request.user):
        raise PermissionDenied("Only admins see callback deliveries.")
    return render_page(request, "reviews/callbacks.html", {"rows": selectors.callbacks_recent()})
