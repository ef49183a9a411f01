"""The real stack for fault tests: gunicorn, a Celery worker and beat as subprocesses of the test.

They share the test's PostgreSQL database (the tests are transactional, so what the test writes is
committed and visible to them) and its Redis database, and talk to an engine simulator the test runs
in-process (so it can change the simulator's behaviour while they work).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.db import connection

from bench.stack import BIN, ROOT, django_env, free_port, process_group_stop
from moderation.models import Source
from tests.faults.invariants import triage_settled

# Tight deadlines so a fault heals in seconds: the sweep runs every second and re-enqueues what has been
# untouched for 5 s (engine calls time out after 1 s, so a live worker never holds a case that long).
STACK_ENV = {
    "SAFEGUARD_TIMEOUT_SECONDS": "1",
    "SAFEGUARD_MAX_IN_FLIGHT": "64",
    "SAFEGUARD_MAX_ATTEMPTS": "6",
    "SAFEGUARD_RETRY_BASE_SECONDS": "0.5",
    "SAFEGUARD_MAX_TOKENS": "512",
    "SAFEGUARD_BREAKER_FAILURES": "20",
    "SAFEGUARD_BREAKER_COOLDOWN_SECONDS": "1",
    "TRIAGE_STUCK_AFTER_SECONDS": "5",
    "TRIAGE_SWEEP_INTERVAL_SECONDS": "1",
    "CALLBACK_RETRY_BACKOFF_MAX_SECONDS": "1",
    # The fault tests' platforms listen on the loopback, over http.
    "CALLBACK_ALLOW_HTTP": "1",
    "CALLBACK_ALLOWED_HOSTS": "127.0.0.0/8,::1,localhost",
    # Plain http on loopback: the test's HTTP client must get its cookies back.
    "SESSION_COOKIE_SECURE": "0",
    "CSRF_COOKIE_SECURE": "0",
}
WORKER_APPLICATION_NAME = "faults-worker"
SETTLE_TIMEOUT_SECONDS = 180.0


class StackError(Exception):
    pass


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, every: float = 0.2) -> None:
    """Poll until condition() holds; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class _Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    ready_lines_before_start: int = 0

    def start(self) -> None:
        self.ready_lines_before_start = self.log_text().count(" ready.")
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a node dying): no shutdown handler runs."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            process_group_stop(self.proc)


def manage_env(**extra: str) -> dict[str, str]:
    """The environment of the stack's processes: the test's database and Redis db, production settings."""
    return django_env(
        database=connection.settings_dict["NAME"],
        redis_url=settings.REDIS_URL,
        pool_max=4,
        **{"STATIC_MANIFEST": "1", **extra},  # as production serves static files (pytest's env turns it off)
    )


@dataclass
class FaultStack:
    """gunicorn + Celery worker + beat against the test database; stop() always stops all three."""

    workdir: Path
    engine_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        common = manage_env(SAFEGUARD_BASE_URL=self.engine_url, **{**STACK_ENV, **self.extra_env})
        worker_env = {
            **common,
            "DATABASE_URL": f"{common['DATABASE_URL']}?application_name={WORKER_APPLICATION_NAME}",
            "LOG_LEVEL": "INFO",
        }
        self.web = _Process(
            "web",
            [
                str(BIN / "gunicorn"),
                "config.wsgi:application",
                f"--bind=127.0.0.1:{self.port}",
                "--worker-class=gthread",
                "--workers=2",
                "--threads=3",
                "--timeout=60",
                "--graceful-timeout=3",
                "--worker-tmp-dir=/dev/shm",
                "--no-control-socket",
                "--log-level=warning",
            ],
            common,
            self.workdir / "web.log",
        )
        self.worker = _Process(
            "worker",
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "--loglevel=INFO",
                "--pool=prefork",
                "--concurrency=2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname=faults-{os.getpid()}@%h",
            ],
            worker_env,
            self.workdir / "worker.log",
        )
        self.beat = _Process(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "beat",
                "--loglevel=INFO",
                f"--schedule={self.workdir / 'beat-schedule'}",
            ],
            common,
            self.workdir / "beat.log",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultStack:
        for process in (self.web, self.worker, self.beat):
            process.start()
        self.web_wait_ready()
        self.worker_wait_ready()
        return self

    def stop(self) -> None:
        for process in (self.beat, self.worker, self.web):
            process.stop()

    def web_wait_ready(self) -> None:
        def up() -> bool:
            self._check_alive(self.web)
            try:
                return httpx.get(f"{self.base_url}/api/v1/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, what="gunicorn to answer")

    def worker_wait_ready(self) -> None:
        def ready() -> bool:
            self._check_alive(self.worker)
            return self.worker.log_text().count(" ready.") > self.worker.ready_lines_before_start

        wait_for(ready, timeout=60, what="the Celery worker to be ready")

    def worker_kill(self) -> None:
        self.worker.kill()

    def worker_restart(self) -> None:
        self.worker.start()
        self.worker_wait_ready()

    def wait_settled(self, source: Source, what: str = "every case triaged") -> None:
        """Poll until no case of the source waits for triage; fail at once if a process died."""

        def settled() -> bool:
            for process in (self.web, self.worker, self.beat):
                self._check_alive(process)
            return triage_settled(source)

        wait_for(settled, timeout=SETTLE_TIMEOUT_SECONDS, what=what)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.log_text()[-3000:]}" for p in (self.web, self.worker, self.beat)
        )

    @staticmethod
    def _check_alive(process: _Process) -> None:
        if not process.alive():
            raise StackError(f"{process.name} exited; its log:\n{process.log_text()[-3000:]}")


@contextlib.contextmanager
def stack_running(workdir: Path, engine_url: str, **extra_env: str) -> Iterator[FaultStack]:
    stack = FaultStack(workdir=workdir, engine_url=engine_url, extra_env=extra_env)
    try:
        yield stack.start()
    except BaseException:
        print(stack.logs())  # shown by pytest with the failure
        raise
    finally:
        stack.stop()


# --- the platform's side: items sent through the HTTP API in batches ---------------------------


def item_texts(prefix: str, count: int, *, markers: Sequence[tuple[int, str]] = ()) -> dict[str, str]:
    """{external_id: text}; every fifth item violates (the simulator's word); markers add [[sim:...]]."""
    texts = {}
    for n in range(count):
        text = f"{prefix} item {n}: " + ("buy zorblax now" if n % 5 == 0 else "a nice day at the lake")
        for every, marker in markers:
            if n % every == 0:
                text += f" {marker}"
        texts[f"{prefix}-{n}"] = text
    return texts


def expected_label(text: str) -> str:
    return "violates" if "zorblax" in text else "safe"


@dataclass
class IngestLog:
    """What the client saw: each batch's final status, and every status it got on the way."""

    accepted: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def items_send(
    base_url: str,
    api_key: str,
    texts: dict[str, str],
    *,
    batch_size: int = 250,
    log: IngestLog | None = None,
    retry_for: float = 60.0,
    pause: float = 0.0,
) -> IngestLog:
    """POST the items in batches, as a careful platform does: a 5xx or a refused connection is retried."""
    log = log or IngestLog()
    ids = list(texts)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            body = json.dumps({"items": [{"external_id": i, "text": texts[i]} for i in batch]})
            deadline = time.monotonic() + retry_for
            while True:
                try:
                    response = client.post(
                        "/api/v1/items",
                        content=body,
                        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
                    )
                    log.statuses.append(response.status_code)
                    # 201: created; 200: a retried batch the server had already stored.
                    if response.status_code in (200, 201):
                        log.accepted.update(i["external_id"] for i in response.json()["items"])
                        break
                    if response.status_code < 500:
                        raise StackError(f"batch refused: {response.status_code} {response.text[:300]}")
                    log.errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.TransportError as exc:
                    log.errors.append(f"{type(exc).__name__}: {exc}")
                if time.monotonic() > deadline:
                    raise StackError(f"batch at {start} not accepted in {retry_for:.0f}s: {log.errors[-3:]}")
                time.sleep(0.2)
            if pause:
                time.sleep(pause)
    return log


def json_get(url: str, **kwargs: Any) -> Any:
    return httpx.get(url, timeout=5, **kwargs).json()
