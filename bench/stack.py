"""Shared by the benchmarks: a fresh database, manage.py, gunicorn, subprocesses that always get stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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


@dataclass(frozen=True)
class GunicornConfig:
    worker_class: str
    workers: int
    threads: int
    app: str = "config.wsgi:application"
    timeout_seconds: int = 120
    backlog: int | None = None  # gunicorn's default (2048) when None

    @property
    def concurrent_per_worker(self) -> int:
        return self.threads if self.worker_class == "gthread" else 1

    @property
    def pool_max(self) -> int:
        # One connection per request in flight in a worker, plus a spare.
        return self.concurrent_per_worker + 1

    def args(self, port: int) -> list[str]:
        return [
            str(BIN / "gunicorn"),
            self.app,
            f"--bind=127.0.0.1:{port}",
            f"--worker-class={self.worker_class}",
            f"--workers={self.workers}",
            f"--threads={self.concurrent_per_worker}",
            f"--timeout={self.timeout_seconds}",
            "--graceful-timeout=5",
            "--keep-alive=30",
            *([f"--backlog={self.backlog}"] if self.backlog is not None else []),
            "--worker-tmp-dir=/dev/shm",
            "--no-control-socket",
            "--log-level=warning",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "worker_class": self.worker_class,
            "workers": self.workers,
            "threads": self.concurrent_per_worker,
            "database_pool_max": self.pool_max,
        }


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def gunicorn_running(
    config: GunicornConfig, *, env: dict[str, str], workdir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """gunicorn on a free loopback port, healthy; yields (master process, base URL); always stopped."""
    base_url = f"http://127.0.0.1:{free_port()}"
    log(f"gunicorn {config.as_dict()} on {base_url}")
    port = int(base_url.rsplit(":", 1)[1])
    with process_running(
        config.args(port), env=env, log_path=workdir / "gunicorn.log", ready=lambda: healthy(base_url)
    ) as server:
        yield server, base_url
