"""Triage throughput end to end: ingest -> Redis -> Celery worker -> engine simulator -> Postgres.

    python bench/triage.py [--items 7680] [--latency 2.0] [--processes 2] [--in-flight 128]

Phase 1 runs the worker with `processes` x `in-flight` requests open against a simulator that answers
after `latency` seconds; the ideal rate is processes * in_flight / latency (128 items/s for 2 x 128 at 2 s,
i.e. 256 in flight). Phase 2 measures the overhead ceiling: one worker process, latency 0.
Prints one JSON line.
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
    BIN,
    PYTHON,
    BenchError,
    database_recreate,
    database_url,
    django_env,
    free_port,
    log,
    manage,
    process_running,
    redis_flush,
)

DATABASE = "safeguard_bench_triage"
REDIS_URL = "redis://127.0.0.1:6379/13"

SETUP_AND_INGEST = """
import time
from moderation import services
from policies import services as policies
from policies.models import Policy
from moderation.models import Source
policy = Policy.objects.create(slug="bench", name="Bench", qa_sample_rate=0)
policies.policy_version_create(policy=policy, text=open("moderation/demo/spam.md").read(), activate=True)
source = services.source_create(name="Bench", slug="bench", policies=[policy], rate_limit_per_minute=0).source
total = {total}
started = time.time()
for start in range(0, total, 500):
    services.items_ingest(source=source, items=[
        services.ItemIn(external_id=f"t{{n}}", text=("zorblax " if n % 5 == 0 else "") + f"bench item {{n}}")
        for n in range(start, min(total, start + 500))
    ])
print("INGESTED", started, time.time())
"""


def cases_done(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM moderation_case WHERE state NOT IN ('pending_triage', 'triaging')"
    ).fetchone()
    return int(row[0]) if row else 0


def phase(*, items: int, latency: float, processes: int, in_flight: int, workdir: Path) -> dict[str, Any]:
    redis_flush(REDIS_URL)
    database_recreate(DATABASE)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = django_env(
        database=DATABASE,
        redis_url=REDIS_URL,
        pool_max=4,
        SAFEGUARD_BASE_URL=base_url,
        SAFEGUARD_MAX_IN_FLIGHT=str(in_flight),
        SAFEGUARD_TIMEOUT_SECONDS=str(max(30.0, latency * 10)),
        # This measures the engine path; bench/funnel.py measures the funnel tier on its own.
        SAFEGUARD_FUNNEL_ENABLED="0",
    )
    manage(["migrate", "--no-input"], env, timeout=300)

    def simulator_ready() -> bool:
        try:
            return httpx.get(f"{base_url}/v1/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    worker_log = workdir / f"worker-{latency}.log"

    def worker_ready() -> bool:
        return worker_log.exists() and b" ready." in worker_log.read_bytes()

    simulator_args = [str(PYTHON), "-m", "inference_worker.testing.engine_simulator", "--port", str(port)]
    worker_args = [
        str(BIN / "celery"), "-A", "config", "worker", "--loglevel", "INFO", "--pool", "prefork",
        "--concurrency", str(processes), "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with (
        process_running(
            [*simulator_args, "--latency", str(latency)],
            env=env,
            log_path=workdir / "simulator.log",
            ready=simulator_ready,
        ),
        process_running(worker_args, env=env, log_path=worker_log, ready=worker_ready),
        psycopg.connect(database_url(DATABASE), autocommit=True) as conn,
    ):
        started = time.monotonic()
        started_wall = time.time()
        output = manage(["shell", "-c", SETUP_AND_INGEST.format(total=items)], env, timeout=600)
        ingest_seconds = time.monotonic() - started
        # The shell boots Django and creates the policy before the first item exists: no triage is
        # possible before then, so the rate from the first ingest is reported next to the headline one.
        startup_seconds = float(output.split("INGESTED", 1)[1].split()[0]) - started_wall
        deadline = started + items / max(1.0, processes * in_flight / max(latency, 0.01)) * 3 + 120
        samples: list[tuple[float, int]] = []
        while True:
            done = cases_done(conn)
            samples.append((time.monotonic() - started, done))
            if done >= items:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"only {done} of {items} cases triaged before the deadline")
            time.sleep(0.25)
        states: dict[str, int] = dict(
            conn.execute("SELECT state, count(*) FROM moderation_case GROUP BY state").fetchall()
        )
        results = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE error <> '') FROM moderation_triageresult"
        ).fetchone()

    elapsed = samples[-1][0]

    def time_at(fraction: float) -> float:
        return next(t for t, done in samples if done >= items * fraction)

    steady = items * 0.8 / max(1e-9, time_at(0.9) - time_at(0.1))
    return {
        "items": items,
        "latency_s": latency,
        "worker_processes": processes,
        "in_flight_per_process": in_flight,
        "startup_s": round(startup_seconds, 2),
        "ingest_s": round(ingest_seconds, 2),
        "elapsed_s": round(elapsed, 2),
        "items_per_s": round(items / elapsed, 1),
        "items_per_s_from_first_ingest": round(items / (elapsed - startup_seconds), 1),
        "steady_items_per_s": round(steady, 1),
        "case_states": states,
        "engine_calls": results[0] if results else 0,
        "engine_errors": results[1] if results else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=7680)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=128)
    parser.add_argument("--overhead-items", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as tmp:
        workdir = Path(tmp)
        log(f"phase 1: latency {args.latency}s, {args.processes} x {args.in_flight} in flight")
        loaded = phase(
            items=args.items,
            latency=args.latency,
            processes=args.processes,
            in_flight=args.in_flight,
            workdir=workdir,
        )
        log("phase 2: overhead ceiling, one worker process, latency 0")
        ceiling = phase(
            items=args.overhead_items, latency=0.0, processes=1, in_flight=args.in_flight, workdir=workdir
        )
    ideal = args.processes * args.in_flight / args.latency
    print(
        json.dumps(
            {
                "bench": "triage",
                "ideal_items_per_s": ideal,
                "items_per_s": loaded["items_per_s"],
                "ratio_to_ideal": round(loaded["items_per_s"] / ideal, 3),
                "steady_ratio_to_ideal": round(loaded["steady_items_per_s"] / ideal, 3),
                "ratio_from_first_ingest": round(loaded["items_per_s_from_first_ingest"] / ideal, 3),
                "overhead_ceiling_items_per_s_per_process": ceiling["items_per_s"],
                "loaded": loaded,
                "ceiling": ceiling,
                "host": "2 cores; simulator, worker and PostgreSQL share them",
            }
        )
    )
    redis_flush(REDIS_URL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
