"""Shared by the benchmarks: a fresh database, manage.py, and subprocesses that always get stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
BIN = PYTHON.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def database_url(name: str) -> str:
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def database_recreate(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def redis_flush(url: str) -> None:
    redis.Redis.from_url(url, socket_timeout=5).flushdb()


def django_env(*, database: str, redis_url: str, pool_max: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url(database),
        SECRET_KEY="bench",
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        ALLOWED_HOSTS="127.0.0.1",
        DATABASE_POOL_MIN="1",
        DATABASE_POOL_MAX=str(pool_max),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [str(PYTHON), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_group_stop(proc: subprocess.Popen[bytes], grace: float = 8.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    # Children that outlived their parent still share its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def process_running(
    args: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process in a session of its own, wait until ready() is true, always stop the group."""
    log(f"starting {Path(args[0]).name} {' '.join(args[1:4])} ...")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None:
                    raise BenchError(f"{args[0]} exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{args[0]} not ready after {timeout:.0f}s; see {log_path}")
                time.sleep(0.2)
            yield proc
        finally:
            process_group_stop(proc)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
