from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from config.celery import app as celery_app


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
