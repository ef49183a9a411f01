"""Audit-log CSV export over HTTP: rows/s and the serving worker's peak memory, at two sizes.

    .venv/bin/python bench/export.py [--events 1000000] [--small 100000]

Prints exactly one JSON line of figures on stdout; progress goes to stderr.

What it does, in order:
1. drops and recreates the `safeguard_bench_export` database, runs `manage.py migrate`, and creates an
   auditor with a personal API token through the project's own services (reviews.tokens);
2. appends `--small` audit events to the log: a valid hash chain, hashed here with the product's own
   audit.chain.event_hash (about 3 us an event) and written with COPY FROM (the chain's lock is not
   needed: nothing else writes to this database);
3. starts gunicorn (1 gthread worker, 2 threads) and exports the whole log as CSV through
   GET /api/v1/audit/events?format=csv with the token, streaming the body and counting its lines, while
   a sampler reads the worker's RSS (/proc/<pid>/status, every 20 ms): rows/s and peak RSS;
4. appends events up to `--events` and exports again. Peak RSS at the two sizes shows whether memory
   grows with the row count (it should not: the rows go from PostgreSQL's COPY to the socket in 256 KiB
   chunks);
5. checks each export: one CSV line per event plus the header, and one `export.started` audit event per
   export; `--verify` also runs `manage.py verify_audit_log` over the whole chain.

The client (httpx, one thread) shares the machine's 2 cores with gunicorn and PostgreSQL, so rows/s is a
figure for the whole machine. gunicorn is stopped on every exit path; every step has a timeout and the
whole run a `--deadline`. The bench database is left in place for inspection and dropped by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit import chain
from bench.stack import (
    BenchError,
    GunicornConfig,
    database_recreate,
    database_url,
    django_env,
    gunicorn_running,
    log,
    manage,
)

DATABASE = "safeguard_bench_export"
REDIS_URL = "redis://127.0.0.1:6379/13"  # /healthz checks the broker; nothing is published here
TARGET_ROWS_PER_S = 50_000
ACTIONS = ("item.ingested", "case.triaged", "case.claimed", "case.decided", "callback.delivered")

SETUP_CODE = """
import json
from django.contrib.auth.models import Group, User
from audit import tokens
user = User.objects.create_user(username="bench-auditor", password=None)
user.groups.add(Group.objects.get(name="auditor"))
print("BENCH-SETUP " + json.dumps({"token": tokens.api_token_create(user=user, name="bench")[1]}))
"""


def stack_prepare(env: dict[str, str]) -> str:
    database_recreate(DATABASE)
    log(f"database {DATABASE} recreated; migrating")
    manage(["migrate", "--no-input"], env, timeout=300)
    out = manage(["shell", "-c", SETUP_CODE], env, timeout=120)
    for line in out.splitlines():
        if line.startswith("BENCH-SETUP "):
            return str(json.loads(line.removeprefix("BENCH-SETUP "))["token"])
    raise BenchError(f"setup printed no token:\n{out[-2000:]}")


def events_append(up_to: int) -> float:
    """Extend the chain to `up_to` events; returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(database_url(DATABASE)) as conn:
        head = conn.execute("SELECT seq, hash FROM reviews_auditevent ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, chain.GENESIS_HASH)
        if seq >= up_to:
            return 0.0
        base = datetime.now(UTC) - timedelta(days=30)
        columns = (
            "seq, created_at, actor_kind, actor_id, actor_label, action, object_type, object_id, payload, "
            "prev_hash, hash"
        )
        with conn.cursor() as cursor, cursor.copy(f"COPY reviews_auditevent ({columns}) FROM STDIN") as copy:
            while seq < up_to:
                seq += 1
                created_at = base + timedelta(milliseconds=seq)
                action = ACTIONS[seq % len(ACTIONS)]
                payload = {"external_id": f"item-{seq}", "case_ids": [seq], "state": "queued"}
                fields = {
                    "actor_kind": "source",
                    "actor_id": "1",
                    "actor_label": "bench-source",
                    "action": action,
                    "object_type": "moderation.case",
                    "object_id": str(seq),
                }
                digest = chain.event_hash(
                    seq=seq, created_at=created_at, payload=payload, prev_hash=prev_hash, **fields
                )
                copy.write_row((seq, created_at, *fields.values(), json.dumps(payload), prev_hash, digest))
                prev_hash = digest
        conn.execute("ANALYZE reviews_auditevent")
    return time.monotonic() - started


def worker_pids(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak RSS of the gunicorn workers, sampled until stopped."""

    def __init__(self, pids: list[int], every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s = pids, every_s
        self.peak_kib = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak_kib = max(self.peak_kib, max((rss_kib(p) for p in self.pids), default=0))
            time.sleep(self.every_s)


def export_measure(base_url: str, token: str, master_pid: int, deadline: float) -> dict[str, Any]:
    pids = worker_pids(master_pid)
    if not pids:
        raise BenchError("no gunicorn worker found")
    before_kib = max(rss_kib(p) for p in pids)
    sampler = RssSampler(pids)
    sampler.start()
    lines = size = 0
    started = time.monotonic()
    try:
        with (
            httpx.Client(base_url=base_url, timeout=60) as client,
            client.stream(
                "GET",
                "/api/v1/audit/events",
                params={"format": "csv"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            if response.status_code != 200:
                raise BenchError(f"export answered {response.status_code}: {response.read()[:300]!r}")
            for chunk in response.iter_raw(256 * 1024):
                lines += chunk.count(b"\n")
                size += len(chunk)
                if time.monotonic() > deadline:
                    raise BenchError("deadline reached during the export")
    finally:
        seconds = time.monotonic() - started
        sampler.stopped.set()
        sampler.join(timeout=2)
    rows = lines - 1  # the header
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "mib_per_s": round(size / seconds / 2**20, 1),
        "worker_rss_before_mib": round(before_kib / 1024, 1),
        "worker_rss_peak_mib": round(sampler.peak_kib / 1024, 1),
    }


def events_count() -> tuple[int, int]:
    with psycopg.connect(database_url(DATABASE)) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE action = 'export.started') FROM reviews_auditevent"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def on_signal(signum: int, frame: FrameType | None) -> None:
    # Unwinds through the context managers, so gunicorn is stopped.
    raise BenchError(f"interrupted by signal {signum}")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + args.deadline
    config = GunicornConfig("gthread", workers=1, threads=2)
    env = django_env(database=DATABASE, redis_url=REDIS_URL, pool_max=config.pool_max)
    token = stack_prepare(env)
    results: dict[str, dict[str, Any]] = {}
    checks: list[bool] = []
    with gunicorn_running(config, env=env, workdir=workdir) as (server, base_url):
        for name, size in (("small", args.small), ("full", args.events)):
            log(f"appending events up to {size:,}")
            generated_s = events_append(size)
            expected_rows, _ = events_count()
            # The export's own event is committed before streaming, so it is in the export.
            expected_rows += 1
            log(f"{name}: exporting {expected_rows:,} events")
            results[name] = {
                **export_measure(base_url, token, server.pid, deadline),
                "generate_s": round(generated_s, 1),
            }
            log(f"{name}: {json.dumps(results[name])}")
            checks.append(results[name]["rows"] == expected_rows)
    total, exports_recorded = events_count()
    checks.append(exports_recorded == 2)
    if args.verify:
        log("verifying the chain")
        checks.append("chain OK" in manage(["verify_audit_log"], env, timeout=1800))
    small, full = results["small"], results["full"]
    return {
        "bench": "export",
        "rows": full["rows"],
        "rows_per_s": full["rows_per_s"],
        "worker_peak_rss_mib": full["worker_rss_peak_mib"],
        "small_rows": small["rows"],
        "small_rows_per_s": small["rows_per_s"],
        "small_worker_peak_rss_mib": small["worker_rss_peak_mib"],
        # Near 1.0 when memory does not grow with the number of rows.
        "peak_rss_ratio_full_to_small": round(full["worker_rss_peak_mib"] / small["worker_rss_peak_mib"], 3),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "meets_target": full["rows_per_s"] >= TARGET_ROWS_PER_S,
        "phases": results,
        "events_in_log": total,
        "checks_ok": all(checks),
        "chain": "valid, hashed with audit.chain"
        + (" and verified" if args.verify else " (not verified: --verify)"),
        "gunicorn": config.as_dict(),
        "endpoint": "GET /api/v1/audit/events?format=csv (personal API token)",
        "cores": os.cpu_count(),
        "client_on_same_host": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the full export")
    parser.add_argument("--small", type=int, default=100_000, help="events in the first, smaller export")
    parser.add_argument("--verify", action="store_true", help="also run verify_audit_log over the chain")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds the whole run may take")
    args = parser.parse_args()
    if not 1 <= args.small < args.events:
        parser.error("need 1 <= --small < --events")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.deadline) + 60)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        try:
            figures = run(args, Path(tmp))
        except BenchError as exc:
            log(f"failed: {exc}")
            server_log = Path(tmp) / "gunicorn.log"
            if server_log.exists():
                sys.stderr.write(server_log.read_text(errors="replace")[-4000:])
            figures = {"bench": "export", "error": str(exc)}
    print(json.dumps(figures), flush=True)
    return 0 if figures.get("checks_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
