"""Page latency as history grows: the queue page, its counts fragment, metrics, the audit log, a policy page.

    .venv/bin/python bench/pages.py [--sizes 10000,1000000,10000000] [--requests 20]

Prints exactly one JSON line on stdout; progress goes to stderr.

For each size N, in order:
1. drops and recreates the `safeguard_bench_pages` database and migrates it; creates two policies (one
   active version each, through the project's services), a source, and one user per role with a session
   made the way django.contrib.auth.login() stores it (a moderator granted both queues, an auditor, a policy
   editor);
2. inserts N content items and N cases PostgreSQL-side (INSERT ... SELECT generate_series): a backlog of
   BACKLOG waiting cases (queued; the work a page should cost, the same at every size) and N - BACKLOG
   decided ones, each with its moderator's decision (confirm, or overturn one in ten) a minute after it was
   queued, DAILY a day (so a bigger N is a longer history, not more traffic); one answered engine call per
   case; N audit events (bench rows: the audit page's cost does not depend on their hashes, and its chain
   check says they do not verify). Then it counts the decisions and engine calls into the hourly rollups
   (the decisions with the periodic reconciliation's recount over every hour; its time is reported), and
   runs VACUUM ANALYZE;
3. serves the app with gunicorn (DEBUG off, static files collected) and GETs each page 3 times to warm it,
   then `--requests` times one after another, with that page's user; reports p50 and p95 (client-side wall
   time on loopback, request sent until the full body is read).

Goal (issue 18): each page's p50 at the largest size within 1.5x of its figure at the smallest and under
60 ms. This machine's speed drifts by up to 30% within an hour: compare sizes within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (
    BenchError,
    GunicornConfig,
    database_recreate,
    database_url,
    django_env,
    gunicorn_running,
    log,
    manage,
    percentile,
)

DATABASE = "safeguard_bench_pages"
REDIS_URL = "redis://127.0.0.1:6379/12"  # /healthz checks the broker; nothing is published here
BACKLOG = 5_000
# History grows by time, not by traffic: a day brings DAILY cases and decisions at every size, so N cases are
# N / DAILY days of history (case g was queued g x SPACING seconds ago; the backlog is the newest).
DAILY = 20_000
SPACING = 86_400 / DAILY
PAGES = {
    # name: (path, user)
    "queue": ("/queue/", "moderator"),
    "queue_counts": ("/queue/counts", "moderator"),
    "metrics": ("/metrics/", "moderator"),
    "audit_log": ("/audit/log/", "auditor"),
    "policy": ("/policies/bench-spam/", "editor"),
}

SETUP_CODE = """
import json
from datetime import timedelta
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone
from accounts.roles import Role
from moderation import services
from policies.models import Policy
from policies.services import policy_version_create
from reviews.users import user_create

versions = []
for slug, name, path in (("bench-spam", "Spam", "moderation/demo/spam.md"),
                         ("bench-harassment", "Harassment", "moderation/demo/harassment.md")):
    policy = Policy.objects.create(slug=slug, name=name)
    versions.append(policy_version_create(policy=policy, text=open(path).read(), activate=True))
policies = [v.policy for v in versions]
source = services.source_create(name="Bench", slug="bench", policies=policies, rate_limit_per_minute=0).source
password = "bench-pages-password"
users = {
    "moderator": user_create(username="bench-moderator", role=Role.MODERATOR, password=password,
                             policies=policies, validate=False),
    "auditor": user_create(username="bench-auditor", role=Role.AUDITOR, password=password, validate=False),
    "editor": user_create(username="bench-editor", role=Role.POLICY_EDITOR, password=password,
                          validate=False),
}
sessions = {}
for name, user in users.items():
    store = SessionStore()
    store.update({SESSION_KEY: str(user.pk), BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[0],
                  HASH_SESSION_KEY: user.get_session_auth_hash()})
    store.set_expiry(timezone.now() + timedelta(days=1))
    store.create()
    sessions[name] = store.session_key
print("BENCH-SETUP " + json.dumps({
    "source_id": source.pk, "versions": [v.pk for v in versions], "sessions": sessions,
    "moderator_id": users["moderator"].pk,
}))
"""

ITEMS_SQL = """
INSERT INTO moderation_contentitem (
    id, source_id, external_id, text, metadata, injection_signals, received_at)
SELECT g, %(source)s, 'bench-' || g, 'Bench post ' || g || ': is this allowed here?', '{}'::jsonb,
       '{}'::varchar[], now() - make_interval(secs => g * %(spacing)s)
FROM generate_series(1::bigint, %(n)s) AS g
"""
# Cases 1..BACKLOG wait; the others are decided. Case g is under version g % 2.
CASES_SQL = """
INSERT INTO moderation_case (
    id, item_id, policy_version_id, state, needs_senior, priority, verdict, confidence, route_reason,
    triage_attempts, sla_due_at, queued_at, created_at, updated_at)
SELECT g, g, CASE WHEN g %% 2 = 0 THEN %(v0)s ELSE %(v1)s END,
       CASE WHEN g <= %(backlog)s THEN 'queued' ELSE 'decided' END, false, 10 + (g * 7919) %% 71,
       CASE WHEN g %% 3 = 0 THEN 'violates' ELSE 'safe' END, 'high', 'bench: seeded', 1,
       q + interval '1 day', q, q, q
FROM (SELECT g, now() - make_interval(secs => g * %(spacing)s) AS q
      FROM generate_series(1::bigint, %(n)s) AS g) AS s
"""
DECISIONS_SQL = """
INSERT INTO reviews_decision (
    id, case_id, moderator_id, action, final_label, rule_ids, note, seconds_spent, model_verdict, created_at)
SELECT g, g, %(moderator)s, CASE WHEN g %% 10 = 0 THEN 'overturn' ELSE 'confirm' END,
       CASE WHEN (g %% 3 = 0) <> (g %% 10 = 0) THEN 'violates' ELSE 'safe' END, '{}'::varchar[], '', 20,
       CASE WHEN g %% 3 = 0 THEN 'violates' ELSE 'safe' END,
       now() - make_interval(secs => g * %(spacing)s) + interval '1 minute'
FROM generate_series(%(backlog)s + 1::bigint, %(n)s) AS g
"""
# One engine call per case, answered, at the time the case was queued.
TRIAGE_SQL = """
INSERT INTO moderation_triageresult (
    case_id, tier, engine, model, reasoning_effort, verdict, policy_category, rule_ids, hallucinated_rule_ids,
    confidence, rationale, chain_of_thought, raw_final_text, parse_path, prompt_tokens, completion_tokens,
    latency_ms, finish_reason, error, created_at)
SELECT g, 'safeguard', 'completions', 'openai/gpt-oss-safeguard-20b', 'low',
       CASE WHEN g %% 3 = 0 THEN 'violates' ELSE 'safe' END, '', '{}'::varchar[], '{}'::varchar[], 'high',
       'bench', '', '', 'json', 700, 120, 300 + (g * 7919) %% 2000, 'stop', '',
       now() - make_interval(secs => g * %(spacing)s)
FROM generate_series(1::bigint, %(n)s) AS g
"""
AUDIT_SQL = """
INSERT INTO reviews_auditevent (
    seq, created_at, actor_kind, actor_id, actor_label, action, object_type, object_id, payload,
    prev_hash, hash)
SELECT %(first)s + g, now() - make_interval(secs => %(n)s - g), 'system', '', 'system', 'bench.event',
       'moderation.case', g::text, '{}'::jsonb, md5(g::text), md5((g + 1)::text)
FROM generate_series(1::bigint, %(n)s) AS g
"""


def database_seed(env: dict[str, str], size: int) -> dict[str, Any]:
    database_recreate(DATABASE)
    manage(["migrate", "--no-input"], env, timeout=300)
    out = manage(["shell", "-c", SETUP_CODE], env, timeout=300)
    line = next((x for x in out.splitlines() if x.startswith("BENCH-SETUP ")), None)
    if line is None:
        raise BenchError(f"setup printed nothing:\n{out[-2000:]}")
    setup: dict[str, Any] = json.loads(line.removeprefix("BENCH-SETUP "))
    backlog = min(BACKLOG, size // 2)
    started = time.monotonic()
    with psycopg.connect(database_url(DATABASE), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(ITEMS_SQL, {"source": setup["source_id"], "n": size, "spacing": SPACING})
        v0, v1 = setup["versions"]
        conn.execute(CASES_SQL, {"n": size, "v0": v0, "v1": v1, "backlog": backlog, "spacing": SPACING})
        moderator = setup["moderator_id"]
        conn.execute(
            DECISIONS_SQL, {"n": size, "backlog": backlog, "moderator": moderator, "spacing": SPACING}
        )
        conn.execute(TRIAGE_SQL, {"n": size, "spacing": SPACING})
        first = conn.execute("SELECT coalesce(max(seq), 0) FROM reviews_auditevent").fetchone()
        conn.execute(AUDIT_SQL, {"n": size, "first": first[0] if first else 0})
        for table in ("moderation_contentitem", "moderation_case", "reviews_decision"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), %s)", (size,))
        audit_sequence = "pg_get_serial_sequence('reviews_auditevent', 'id')"
        conn.execute(f"SELECT setval({audit_sequence}, max(id)) FROM reviews_auditevent")
    # The decisions went in behind the product's back: count them into the hourly rollups the metrics page
    # reads, with the recount the periodic reconciliation runs (here over every hour).
    recount_started = time.monotonic()
    manage(
        ["shell", "-c", "from reviews import rollups; rollups.decision_hours_reconcile(since=None)"],
        env,
        1800,
    )
    setup["recount_seconds"] = round(time.monotonic() - recount_started, 1)
    with psycopg.connect(database_url(DATABASE), autocommit=True, connect_timeout=5) as conn:
        conn.execute("VACUUM ANALYZE")
    setup["seed_seconds"] = round(time.monotonic() - started, 1)
    log(f"{size:,} cases seeded in {setup['seed_seconds']}s")
    return setup


def page_timings(base_url: str, session: str, path: str, requests: int) -> dict[str, float]:
    with httpx.Client(base_url=base_url, cookies={"sessionid": session}, timeout=60) as client:
        times = []
        for n in range(3 + requests):
            started = time.perf_counter()
            response = client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise BenchError(f"GET {path} answered {response.status_code}")
            if n >= 3:
                times.append(elapsed)
    return {"p50_ms": round(percentile(times, 50), 1), "p95_ms": round(percentile(times, 95), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="cases per run, comma-separated")
    parser.add_argument("--requests", type=int, default=20, help="measured requests per page")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pages: dict[str, dict[str, dict[str, float]]] = {name: {} for name in PAGES}
    seed_seconds, recount_seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as scratch:
        workdir = Path(scratch)
        env = django_env(
            database=DATABASE, redis_url=REDIS_URL, pool_max=3, STATIC_ROOT=str(workdir / "static")
        )
        manage(["collectstatic", "--no-input", "-v", "0"], env, timeout=120)
        for size in sizes:
            setup = database_seed(env, size)
            seed_seconds[str(size)] = setup["seed_seconds"]
            recount_seconds[str(size)] = setup["recount_seconds"]
            config = GunicornConfig("sync", 2, 1)
            with gunicorn_running(config, env=env, workdir=workdir) as (_, base_url):
                for name, (path, user) in PAGES.items():
                    pages[name][str(size)] = page_timings(
                        base_url, setup["sessions"][user], path, args.requests
                    )
                    log(f"{size:,} cases: {name} {pages[name][str(size)]}")
    smallest, largest = str(sizes[0]), str(sizes[-1])
    goal = {
        name: by_size[largest]["p50_ms"] <= min(60.0, 1.5 * by_size[smallest]["p50_ms"])
        for name, by_size in pages.items()
    }
    print(
        json.dumps(
            {
                "bench": "pages",
                "sizes": sizes,
                "backlog": BACKLOG,
                "cases_per_day": DAILY,
                "pages": pages,
                "goal_met": goal,
                "seed_seconds": seed_seconds,
                "rollup_recount_seconds": recount_seconds,
                "requests_per_page": args.requests,
            }
        )
    )


if __name__ == "__main__":
    main()
