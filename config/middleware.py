from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse
from django_htmx.http import HttpResponseClientRedirect

# No inline script or style anywhere: content and model output are untrusted.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


SESSION_LAST_ACTIVE_KEY = "_last_active_at"
# The stored time moves on at most once a minute: no session write per request.
SESSION_ACTIVITY_RESOLUTION_SECONDS = 60

_View = Callable[..., HttpResponse]


def session_passive(view: _View) -> _View:
    """Mark a view that pages call on their own (polling, lease renewal): it does not count as activity, so
    an open tab alone never keeps an idle session alive."""
    view.session_passive = True  # type: ignore[attr-defined]
    return view


class SessionIdleTimeoutMiddleware:
    """Log a user out after SESSION_IDLE_TIMEOUT_SECONDS without a request of their own (0: never).

    Requests to @session_passive views are checked but do not count as activity. An htmx request that
    finds its session expired is sent to the login page as a whole page, not swapped into a fragment.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: _View, view_args: object, view_kwargs: object
    ) -> HttpResponse | None:
        timeout = settings.SESSION_IDLE_TIMEOUT_SECONDS
        if timeout <= 0 or not request.user.is_authenticated:
            return None
        now = int(time.time())
        last = request.session.get(SESSION_LAST_ACTIVE_KEY)
        if isinstance(last, int) and now - last > timeout:
            logout(request)
            htmx = getattr(request, "htmx", None)
            if htmx:
                # A fragment request (a poll) would swap the login form into the page: reload it instead.
                page = htmx.current_url_abs_path or "/"
                return HttpResponseClientRedirect(f"{settings.LOGIN_URL}?{urlencode({'next': page})}")
            return None  # the view sees an anonymous visitor (login_required sends them to log in)
        passive = getattr(view_func, "session_passive", False)
        if not isinstance(last, int) or (not passive and now - last >= SESSION_ACTIVITY_RESOLUTION_SECONDS):
            request.session[SESSION_LAST_ACTIVE_KEY] = now
        return None
