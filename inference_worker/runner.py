"""The engine harness: the deployment's engine settings, and the one place that talks to the engine.

An ``EngineRunner`` is an asyncio loop in a daemon thread that owns the HTTP connection pool; triage and
evaluation runs both send their requests through it from the task's thread (the only one that touches the
database). Retries share one backoff formula: triage schedules a case's next attempt in Postgres with it,
an evaluation run sleeps it out on the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import os
import random
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from django.conf import settings

from inference_worker import embeddings, engine_settings
from inference_worker.breaker import CircuitBreaker
from inference_worker.engine import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    EngineError,
    EngineReply,
    EngineRequest,
    EngineUnavailable,
    ReplyLimits,
    Transport,
    engine_judge,
    engine_session,
    transport_build,
)
from moderation.models import TriageResult

RETRY_MAX_DELAY_SECONDS = 300.0
# A case waits at most this long for a failing engine (its own attempt failed, or the breaker holds it back)
# before it goes to humans untriaged: with the engine timeout, the bound on how late a human sees it.
DEFAULT_GIVE_UP_AFTER_SECONDS = 120.0

Result = TypeVar("Result")
# One engine call to make on the runner's loop, given its transport and session.
EngineWork = Callable[[Transport, aiohttp.ClientSession], Coroutine[Any, Any, Result]]


@dataclass(frozen=True)
class EngineConfig:
    transport: str
    base_url: str
    api_key: str
    model: str
    effort: str
    escalation_model: str
    escalation_effort: str
    max_tokens: int
    timeout_seconds: float
    max_in_flight: int
    max_attempts: int
    retry_base_seconds: float
    # Score with the funnel tier before the engine (without an engine the funnel always runs).
    funnel: bool = False
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    max_reasoning_chars: int = DEFAULT_MAX_TEXT_CHARS
    give_up_after_seconds: float = DEFAULT_GIVE_UP_AFTER_SECONDS
    # Header carrying a hash of the policy text to a session-affinity router (empty: not sent).
    affinity_header: str = ""

    @classmethod
    def from_settings(cls) -> EngineConfig:
        """The deployment's engine: per field, its environment variable if set, else what an admin saved
        on /settings/engine (read at most every few seconds), else the default (engine_settings.py)."""
        chosen = engine_settings.engine_values_now()
        return cls(
            transport=chosen["transport"],
            base_url=chosen["base_url"],
            api_key=chosen["api_key"],
            model=chosen["model"],
            effort=chosen["effort"],
            escalation_model=chosen["escalation_model"],
            escalation_effort=chosen["escalation_effort"],
            max_tokens=settings.SAFEGUARD_MAX_TOKENS,
            timeout_seconds=chosen["timeout_seconds"],
            max_in_flight=settings.SAFEGUARD_MAX_IN_FLIGHT,
            max_attempts=settings.SAFEGUARD_MAX_ATTEMPTS,
            retry_base_seconds=settings.SAFEGUARD_RETRY_BASE_SECONDS,
            funnel=settings.SAFEGUARD_FUNNEL_ENABLED and embeddings.model_available(),
            max_reply_bytes=settings.SAFEGUARD_MAX_REPLY_BYTES,
            max_reasoning_chars=settings.SAFEGUARD_MAX_REASONING_CHARS,
            give_up_after_seconds=chosen["give_up_after_seconds"],
            affinity_header=settings.SAFEGUARD_AFFINITY_HEADER,
        )

    @property
    def reply_limits(self) -> ReplyLimits:
        return ReplyLimits(max_bytes=self.max_reply_bytes, max_text_chars=self.max_reasoning_chars)

    def tiers(self, *, is_appeal: bool) -> list[tuple[str, str, str]]:
        """(tier, model, effort) in the order they are tried. Appeals start at escalation."""
        escalation = (TriageResult.Tier.ESCALATION.value, self.escalation_model, self.escalation_effort)
        if is_appeal:
            return [escalation]
        first = (TriageResult.Tier.SAFEGUARD.value, self.model, self.effort)
        if (self.escalation_model, self.escalation_effort) == (self.model, self.effort):
            return [first]
        return [first, escalation]


def engine_breaker(config: EngineConfig) -> CircuitBreaker:
    return CircuitBreaker(
        name=config.base_url,
        failure_threshold=settings.SAFEGUARD_BREAKER_FAILURES,
        cooldown_seconds=settings.SAFEGUARD_BREAKER_COOLDOWN_SECONDS,
    )


def retry_delay_seconds(
    attempts: int,
    base: float,
    *,
    retry_after: float | None = None,
    max_delay: float = RETRY_MAX_DELAY_SECONDS,
) -> float:
    """The engine's Retry-After when it sent one, else exponential backoff with full jitter on the upper
    half; capped at ``max_delay``."""
    if retry_after:
        return min(max_delay, retry_after)
    delay = min(max_delay, base * 2 ** max(0, attempts - 1))
    return delay / 2 + random.random() * delay / 2


class EngineRunner:
    """An event loop in a daemon thread that owns the HTTP connection pool to the engine."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.transport: Transport = transport_build(
            config.transport, config.base_url, config.api_key, config.reply_limits, config.affinity_header
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-runner", daemon=True)
        self._thread.start()
        self.session: aiohttp.ClientSession = asyncio.run_coroutine_threadsafe(
            self._session_create(), self.loop
        ).result()
        # aiohttp complains about a session still open when the interpreter exits.
        atexit.register(self.close)

    async def _session_create(self) -> aiohttp.ClientSession:
        # aiohttp binds the session to the running loop, so it is made on the runner's loop.
        return engine_session(
            timeout_seconds=self.config.timeout_seconds, max_connections=self.config.max_in_flight + 8
        )

    def submit(self, work: EngineWork[Result]) -> concurrent.futures.Future[Result]:
        """Start ``work`` on the loop; cancelling the future cancels the call wherever it is."""
        return asyncio.run_coroutine_threadsafe(work(self.transport, self.session), self.loop)

    def results_stream(
        self, works: Iterable[EngineWork[Result]], *, batch_size: int
    ) -> Generator[list[Result]]:
        """Run ``works`` with at most max_in_flight of them at a time; yield their results in batches (at
        most ``batch_size``) as they land, the next ones already started while the caller saves a batch.

        Closing the generator early (a cancelled evaluation run) cancels the calls in flight, and the rest
        never start. What a call raised is raised here.
        """
        waiting = iter(works)
        in_flight = {self.submit(work) for work in itertools.islice(waiting, self.config.max_in_flight)}
        try:
            while in_flight:
                done, in_flight = concurrent.futures.wait(
                    in_flight, return_when=concurrent.futures.FIRST_COMPLETED
                )
                in_flight |= {self.submit(work) for work in itertools.islice(waiting, len(done))}
                landed = [future.result() for future in done]
                for start in range(0, len(landed), batch_size):
                    yield landed[start : start + batch_size]
        finally:
            for future in in_flight:
                future.cancel()

    def close(self) -> None:
        """Close the connections and stop the loop; a forked child just drops its parent's runner."""
        if self.pid != os.getpid() or not self.loop.is_running():
            return
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


_runner_lock = threading.Lock()
_runner: EngineRunner | None = None


def engine_runner(config: EngineConfig) -> EngineRunner:
    """One runner per process; rebuilt after a fork or a settings change (tests)."""
    global _runner
    with _runner_lock:
        if _runner is None or _runner.pid != os.getpid() or _runner.config != config:
            if _runner is not None:
                _runner.close()  # else its thread and connections outlive it
            _runner = EngineRunner(config)
        return _runner


@dataclass(frozen=True)
class RetriedReply:
    """What one request came to after its retries: a reply, or the last error."""

    attempts: int
    reply: EngineReply | None = None
    error: str = ""


async def engine_judge_retrying(
    transport: Transport,
    session: aiohttp.ClientSession,
    request: EngineRequest,
    *,
    config: EngineConfig,
    max_delay_seconds: float,
) -> RetriedReply:
    """One request, retried in place while the engine is unavailable (up to config.max_attempts, sleeping
    retry_delay_seconds between them); a refusal or nonsense is not retried."""
    attempts = 0
    while True:
        attempts += 1
        try:
            return RetriedReply(attempts, await engine_judge(transport, session, request))
        except EngineUnavailable as exc:
            if attempts >= config.max_attempts:
                return RetriedReply(attempts, error=str(exc))
            await asyncio.sleep(
                retry_delay_seconds(
                    attempts,
                    config.retry_base_seconds,
                    retry_after=exc.retry_after_seconds,
                    max_delay=max_delay_seconds,
                )
            )
        except EngineError as exc:
            return RetriedReply(attempts, error=str(exc))
