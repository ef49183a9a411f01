"""The admin's engine page: connect the reasoning engine, and test the connection with one real request."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from inference_worker import engine_check, engine_settings
from inference_worker.engine_check import CHECK_TIMEOUT_CAP_SECONDS, EngineCheck
from inference_worker.models import EngineSettings
from inference_worker.runner import EngineConfig
from reviews import selectors
from reviews.forms_engine import EngineCheckForm, EngineSettingsForm
from reviews.web import AuthedRequest, partial_wanted, redirect_to, render_page

TEMPLATE = "inference_worker/engine_settings.html"


def _admin_required(request: AuthedRequest) -> None:
    if not selectors.user_is_admin(request.user):
        raise PermissionDenied("Only admins connect the reasoning engine.")


def _initial(row: EngineSettings | None, values: dict[str, engine_settings.EngineValue]) -> dict[str, Any]:
    """The saved values (empty: the default); a field the environment sets shows the environment's value."""
    initial: dict[str, Any] = {}
    for name, value in values.items():
        if name == "api_key":
            continue
        if value.from_environment:
            initial[name] = value.value
        else:
            stored = getattr(row, name) if row is not None else None
            initial[name] = "" if stored is None else stored
    return initial


def _context(
    settings_form: EngineSettingsForm,
    check_form: EngineCheckForm,
    values: dict[str, engine_settings.EngineValue],
    check: EngineCheck | None = None,
) -> dict[str, Any]:
    config = EngineConfig.from_settings()
    return {
        "form": settings_form,
        "rows": [(values[name], settings_form[name]) for name in values if name != "api_key"],
        "api_key": values["api_key"],
        "check_form": check_form,
        "check": check,
        "connected": bool(config.base_url),
        "check_timeout": engine_check.check_timeout_seconds(config),
        "check_timeout_cap": CHECK_TIMEOUT_CAP_SECONDS,
        "cache_seconds": engine_settings.CACHE_SECONDS,
    }


@require_http_methods(["GET", "POST"])
@login_required
def engine_settings_page(request: AuthedRequest) -> HttpResponse:
    _admin_required(request)
    row = engine_settings.engine_settings_get()
    values = engine_settings.engine_values(row)
    if request.method == "GET":
        form = EngineSettingsForm(initial=_initial(row, values), values=values)
        return render_page(request, TEMPLATE, _context(form, EngineCheckForm(), values))
    form = EngineSettingsForm(request.POST, initial=_initial(row, values), values=values)
    if not form.is_valid():
        return render_page(request, TEMPLATE, _context(form, EngineCheckForm(), values), status=400)
    changes = engine_settings.engine_settings_update(
        actor=request.user,
        values=form.changes_requested(),
        api_key=form.cleaned_data["api_key"] if not values["api_key"].from_environment else "",
        clear_api_key=bool(form.cleaned_data["clear_api_key"]),
    )
    labels = [engine_settings.FIELDS_BY_NAME[name].label for name in changes]
    messages.success(request, f"Saved: {', '.join(labels)}." if changes else "Nothing changed.")
    return redirect_to(request, reverse("reviews:engine_settings"))


@require_POST
@login_required
def engine_settings_check(request: AuthedRequest) -> HttpResponse:
    """One real request with the saved settings; the result replaces #engine-check (the page on reload)."""
    _admin_required(request)
    check_form = EngineCheckForm(request.POST)
    check = None
    status = 400
    if check_form.is_valid():
        check = engine_check.engine_check(
            config=EngineConfig.from_settings(),
            version=check_form.active_version(),
            text=check_form.cleaned_data["text"],
        )
        status = 200
    row = engine_settings.engine_settings_get()
    values = engine_settings.engine_values(row)
    settings_form = EngineSettingsForm(initial=_initial(row, values), values=values)
    context = _context(settings_form, check_form, values, check)
    if partial_wanted(request):
        return render(request, f"{TEMPLATE}#engine-check", context, status=status)
    return render_page(request, TEMPLATE, context, status=status)
