from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views import defaults
from django.views.decorators.http import require_GET

from config.celery import app as celery_app

# Not "django.request": in DEBUG, Django's own console handler on "django" and the root handler would
# print every line twice.
logger = logging.getLogger(__name__)


def forbidden_logged(request: HttpRequest, response: HttpResponseBase, reason: object) -> HttpResponseBase:
    """Log a refusal once, as one WARNING line without a traceback (a 403 is an answer, not a fault), and
    mark the response so Django's request logging does not log it again."""
    # The API's caller (a source or a token's user) if it got that far, else the session's user.
    caller = getattr(request, "auth", None) or getattr(request, "user", None)
    if caller is None or not getattr(caller, "is_authenticated", True):
        who = "anonymous"
    else:
        who = getattr(caller, "slug", None) or caller.get_username()
    logger.warning(
        "Forbidden: %s %s (%s): %s", request.method, request.path, who, reason or "no reason given"
    )
    response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log.log_response
    return response


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponseBase:
    """handler403: the 403 page, logged once (Django logs PermissionDenied with its traceback)."""
    return forbidden_logged(request, defaults.permission_denied(request, exception), exception)


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page says: send them to the static icon."""
    return redirect(static("favicon.svg"))  # not permanent: the hashed name changes with the file


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database and broker reachable: 200, else 503 naming what is down."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not healthy", reported, not raised
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with celery_app.connection_for_write(settings.CELERY_BROKER_URL) as broker:
            broker.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503
    )


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    """Swagger UI for the ingestion API, served from our own static files."""
    return render(request, "api_docs.html")
