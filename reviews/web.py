"""What every review view shares: the authenticated htmx request, the full page with its navigation, and
how a view tells an htmx swap from a page load and sends the browser elsewhere."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from audit import exports
from policies import selectors as policy_selectors
from reviews import metrics, selectors


class AuthedRequest(HttpRequest):
    """What @login_required guarantees, with django-htmx's details."""

    user: User
    htmx: HtmxDetails


def partial_wanted(request: AuthedRequest) -> bool:
    """An htmx swap gets the fragment; a reload, a plain form post or a history restore the whole page."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(
    request: AuthedRequest, template: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    """A full page: the navigation shows only what this user may open."""
    user = request.user
    nav = {
        "queue": selectors.user_is_reviewer(user),
        "metrics": metrics.policies_for_metrics(user) is not None,
        "callbacks": selectors.user_is_admin(user),
        "policies": policy_selectors.user_is_policy_editor(user),
        "audit": exports.user_may_export(user),
    }
    response = render(request, template, {**context, "nav": nav}, status=status)
    patch_vary_headers(response, ("HX-Request",))
    return response


def redirect_to(request: AuthedRequest, url: str) -> HttpResponse:
    """htmx follows a client-side redirect (HX-Redirect); a plain form post a 302."""
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return HttpResponseRedirect(url)
