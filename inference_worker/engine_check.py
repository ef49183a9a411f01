"""The "Test connection" button: one real request to the engine, through the code the triage pump uses.

The request is the worker's: a harmony prompt from the policy's active version and a sample text, built
into an ``EngineRequest`` with the first-pass model and effort, sent by ``engine_judge`` over the configured
transport (its one length retry included), and the final message parsed by ``verdicts.verdict_parse``. It
runs on the web worker, so the whole check (retry included) is bounded by the configured timeout capped at
``CHECK_TIMEOUT_CAP_SECONDS``; its event loop runs in a short-lived helper thread, so the calling thread
may be any thread (one that already runs a loop too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from dataclasses import dataclass

from inference_worker import verdicts
from inference_worker.engine import (
    MUST_PROPAGATE,
    EngineError,
    EngineReply,
    EngineRequest,
    EngineUnavailable,
    engine_judge,
    engine_session,
    transport_build,
)
from inference_worker.runner import EngineConfig
from policies.models import PolicyVersion

CHECK_TIMEOUT_CAP_SECONDS = 30.0
SAMPLE_TEXT_MAX_CHARS = 4000


@dataclass(frozen=True)
class EngineCheck:
    """What one test request gave: a reply and its parsed verdict, or the failure, word for word."""

    version: PolicyVersion
    base_url: str
    transport: str
    model: str
    effort: str
    timeout_seconds: float
    elapsed_ms: int
    reply: EngineReply | None = None
    verdict: verdicts.Verdict | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """The engine answered with a verdict the parser could read."""
        return self.verdict is not None and self.verdict.parse_path != "none"

    @property
    def unparseable(self) -> bool:
        """The engine answered, but its final message holds no verdict (it would go to a human)."""
        return self.verdict is not None and self.verdict.parse_path == "none"


def check_timeout_seconds(config: EngineConfig) -> float:
    return min(config.timeout_seconds, CHECK_TIMEOUT_CAP_SECONDS)


def engine_check(*, config: EngineConfig, version: PolicyVersion, text: str) -> EngineCheck:
    """Send ``text`` to the engine under ``version``'s policy once; never raises for what the engine does."""
    timeout = check_timeout_seconds(config)
    asked = EngineCheck(
        version=version,
        base_url=config.base_url,
        transport=config.transport,
        model=config.model,
        effort=config.effort,
        timeout_seconds=timeout,
        elapsed_ms=0,
    )
    if not config.base_url:
        return dataclasses.replace(asked, error="no reasoning engine is connected: set its base URL")
    request = EngineRequest(
        policy_text=version.text,
        content=text,
        effort=config.effort,
        model=config.model,
        max_tokens=config.max_tokens,
    )
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine-check") as pool:
            reply = pool.submit(asyncio.run, _judge(config, request, timeout)).result()
        verdict = verdicts.verdict_parse(reply.final_text, policy_rule_ids=version.rule_ids)
    except TimeoutError:
        error = f"engine timed out: no answer within {timeout:g} s"
    except EngineError as exc:  # EngineUnavailable too: HTTP status, connection, timeout, reply
        error = str(exc)
        if isinstance(exc, EngineUnavailable) and "timed out" in error:
            error = f"{error}: no answer within {timeout:g} s"
    except ValueError as exc:  # transport_build: an unknown transport
        error = str(exc)
    except BaseException as exc:
        if isinstance(exc, MUST_PROPAGATE):
            raise
        error = f"engine reply could not be handled ({type(exc).__name__}: {str(exc)[:200]})"
    else:
        return dataclasses.replace(asked, elapsed_ms=_ms_since(started), reply=reply, verdict=verdict)
    return dataclasses.replace(asked, elapsed_ms=_ms_since(started), error=error)


async def _judge(config: EngineConfig, request: EngineRequest, timeout: float) -> EngineReply:
    transport = transport_build(
        config.transport, config.base_url, config.api_key, config.reply_limits, config.affinity_header
    )
    async with (
        engine_session(timeout_seconds=timeout, max_connections=2) as session,
        asyncio.timeout(timeout),  # the length retry included
    ):
        return await engine_judge(transport, session, request)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
