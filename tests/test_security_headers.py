"""Security headers on pages, API answers and static files; deploy settings that pass `check --deploy`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from config.middleware import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.hostile

BASE_DIR = Path(__file__).resolve().parent.parent
# What README's "Production settings" section tells a deployer to set.
PRODUCTION_ENV = {
    "DEBUG": "0",
    "ALLOWED_HOSTS": "queue.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://queue.example.org",
    "SECURE_SSL_REDIRECT": "1",
    "BEHIND_TLS_PROXY": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_PRELOAD": "1",
}


def csp_directives(header: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in (p.strip() for p in header.split(";")) if d}


def test_the_csp_allows_no_inline_code_no_eval_and_no_framing() -> None:
    directives = csp_directives(CONTENT_SECURITY_POLICY)

    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"


def assert_hardened(response: Any, *, framed_by_header: bool = True) -> None:
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    if framed_by_header:
        assert response["X-Frame-Options"] == "DENY"


def test_a_page_an_api_answer_and_an_error_carry_the_headers(client: Client, db: None) -> None:
    page = client.get("/login/")
    assert page.status_code == 200
    assert_hardened(page)

    document = client.get("/api/v1/openapi.json")
    assert document.status_code == 200
    assert_hardened(document)

    refused = client.post("/api/v1/items", {}, content_type="application/json")
    assert refused.status_code == 401
    assert_hardened(refused)


def test_a_static_file_carries_the_headers(settings: Any) -> None:
    # Served by WhiteNoise inside the middleware stack, as in production (tests have no collectstatic).
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    response = Client().get("/static/js/app.js")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    # X-Frame-Options comes from a middleware after WhiteNoise; frame-ancestors 'none' covers static files.
    assert_hardened(response, framed_by_header=False)


def test_hsts_is_sent_over_https_when_configured(settings: Any, db: None) -> None:
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True

    response = Client().get("/login/", secure=True)

    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Strict-Transport-Security" not in Client().get("/login/")  # never over plain http


def test_the_session_and_csrf_cookies_are_secure_and_http_only_without_debug(db: None) -> None:
    User.objects.create_user("mona", password="a long enough password")
    client = Client()
    assert client.get("/login/").status_code == 200
    csrf = client.cookies["csrftoken"]
    client.post("/login/", {"username": "mona", "password": "a long enough password"})
    session = client.cookies["sessionid"]

    for cookie in (csrf, session):
        assert cookie["secure"] is True
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Lax"


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DEBUG", "SESSION_", "CSRF_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, "SECRET_KEY": secrets.token_urlsafe(50), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow  # a manage.py child process
def test_check_deploy_is_clean_with_the_documented_production_settings() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow  # a manage.py child process
def test_check_deploy_fails_without_them() -> None:
    """The test above can fail: the defaults alone (plain http, no HSTS) are not a production setup."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={"DEBUG": "0"})

    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


@pytest.mark.slow  # a manage.py child process
def test_production_settings_turn_on_every_protection() -> None:
    names = [
        "DEBUG",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SESSION_COOKIE_HTTPONLY",
        "CSRF_COOKIE_HTTPONLY",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_PROXY_SSL_HEADER",
        "X_FRAME_OPTIONS",
        "SECURE_CONTENT_TYPE_NOSNIFF",
    ]
    code = (
        "import json; from django.conf import settings as s; "
        f"print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))"
    )
    result = manage("shell", "-c", code, env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])

    assert values == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "CSRF_COOKIE_HTTPONLY": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
    }


def test_health_probes_over_plain_http_are_not_redirected(settings: Any, db: None) -> None:
    settings.SECURE_SSL_REDIRECT = True

    assert Client().get("/login/").status_code == 301
    assert Client().get("/healthz").status_code in (200, 503)
