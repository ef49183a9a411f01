"""The auditor's pages: the audit log with its chain check, exports, and personal API tokens."""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseBase
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from audit import exports, tokens
from audit import selectors as audit_selectors
from audit import services as audit
from audit.api import stream_response
from audit.forms import ApiTokenForm, AuditLogFilterForm, ExportForm
from reviews.web import AuthedRequest, render_page


def _auditor_required(request: AuthedRequest) -> None:
    if not exports.user_may_export(request.user):
        raise PermissionDenied("Only auditors and admins export.")


def _audit_page(
    request: AuthedRequest,
    *,
    form: ExportForm | None = None,
    token_form: ApiTokenForm | None = None,
    new_token: str = "",
    status: int = 200,
) -> HttpResponse:
    user = request.user
    context = {
        "form": form or ExportForm(),
        "token_form": token_form or ApiTokenForm(),
        "tokens": tokens.api_tokens_of(user),
        "new_token": new_token,
        "may_export_reasoning": exports.user_may_export_reasoning(user),
    }
    return render_page(request, "audit/audit.html", context, status=status)


@require_GET
@login_required
def audit_page(request: AuthedRequest) -> HttpResponse:
    _auditor_required(request)
    return _audit_page(request)


@require_GET
@login_required
def audit_log(request: AuthedRequest) -> HttpResponse:
    _auditor_required(request)
    form = AuditLogFilterForm(request.GET)
    if not form.is_valid():
        context = {"form": form, "rows": [], "check": None, "older_query": ""}
        return render_page(request, "audit/audit_log.html", context, status=400)
    filters = form.filters()
    events, older_than = audit_selectors.audit_events_page(filters, before_seq=form.cleaned_data["before"])
    older_query = ""
    if older_than is not None:
        kept = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in vars(filters).items() if v}
        older_query = urlencode({**kept, "before": older_than})
    context = {
        "form": form,
        "rows": [(e, json.dumps(e.payload, indent=2, ensure_ascii=False, sort_keys=True)) for e in events],
        "check": audit.events_check(events),
        "filtered": any(vars(filters).values()),
        "older_query": older_query,
    }
    return render_page(request, "audit/audit_log.html", context)


@require_GET
@login_required
def audit_export(request: AuthedRequest) -> HttpResponseBase:
    _auditor_required(request)
    form = ExportForm(request.GET)
    if not form.is_valid():
        return _audit_page(request, form=form, status=400)
    export = form.export_request()
    try:
        stream = exports.export_start(user=request.user, request=export, via="ui")
    except exports.ExportRefused as exc:
        raise PermissionDenied(str(exc)) from exc
    return stream_response(stream, export)


@require_POST
@login_required
def api_token_create(request: AuthedRequest) -> HttpResponse:
    _auditor_required(request)
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _audit_page(request, token_form=form, status=400)
    _, secret = tokens.api_token_create(user=request.user, name=form.cleaned_data["name"])
    # Shown once, in this response only: the page never shows it again.
    return _audit_page(request, new_token=secret)


@require_POST
@login_required
def api_token_revoke(request: AuthedRequest, token_id: int) -> HttpResponse:
    _auditor_required(request)
    if tokens.api_token_revoke(user=request.user, token_id=token_id):
        messages.success(request, "Token revoked: it no longer opens the export API.")
    return redirect("audit:audit")
