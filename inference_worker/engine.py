"""HTTP transports to the safeguard engine, and one judging call with its length retry.

Two transports:

- ``completions`` (vLLM): the harmony prompt is rendered here and sent as token
  ids to ``/v1/completions``; the completion comes back as token ids and is
  parsed with openai-harmony. Content can never be read as prompt structure.
- ``chat`` (Ollama, LM Studio, llama.cpp, hosted endpoints): ``/v1/chat/completions``;
  the server renders the prompt and splits reasoning from the final text.

Errors are ``EngineUnavailable`` when trying again later may work and
``EngineError`` when it will not. Their messages are shown to moderators.

A reply is untrusted input: its body is read up to ``ReplyLimits.max_bytes``
(more is refused), the reasoning and final text it carries are cut to
``ReplyLimits.max_text_chars`` with a visible marker, re-encoding its text is
linear in its length, and anything native code raises while decoding it
(a tokenizer panic is a ``BaseException``) becomes an ``EngineError``.

The HTTP client is aiohttp: at 128+ keep-alive requests in flight per process
it costs about 1 ms of client CPU per request, where httpx cost about 14 ms and
capped one worker process well below what the engine could serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeGuard

import aiohttp

from inference_worker.prompts import (
    completion_parse,
    content_token_ids,
    harmony_encoding,
    prompt_token_ids,
    stop_token_ids,
)

_RETRYABLE_STATUSES = frozenset({408, 429})
_ERROR_DETAIL_LIMIT = 200
_CONNECT_TIMEOUT_SECONDS = 10.0
# Close idle connections before vLLM's uvicorn does (after 5 s): aiohttp never
# retries a POST, so reusing a connection the server is closing at that instant
# would fail the call.
_KEEPALIVE_SECONDS = 4.0
# The chat APIs name the reasoning field differently by server and version.
_CHAT_REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")
# A legitimate reply is tens of kB (8k tokens as ids and text); the defaults leave room for far more.
DEFAULT_MAX_REPLY_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_TEXT_CHARS = 100_000
_READ_CHUNK_BYTES = 64 * 1024
# Exceptions that end the program or cancel a task: never turned into an engine error.
MUST_PROPAGATE: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    asyncio.CancelledError,
)
# Harmony's special tokens as text (<|start|>, <|message|>, <|reserved_200000|>, ...) in a completion's text.
_SPECIAL_TOKEN_TEXT = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")


@dataclass(frozen=True)
class ReplyLimits:
    """How much of an engine reply is read (bytes) and kept (characters of reasoning and of final text)."""

    max_bytes: int = DEFAULT_MAX_REPLY_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS


@dataclass(frozen=True)
class EngineRequest:
    policy_text: str
    content: str
    effort: str
    model: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class EngineReply:
    final_text: str | None
    reasoning: str
    finish_reason: str | None
    prompt_tokens: int | None
    cached_prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    model: str
    effort: str
    length_retried: bool


class EngineError(Exception):
    """The engine refused the request or answered nonsense: retrying will not help."""


class EngineUnavailable(EngineError):
    """The engine could not answer now (timeout, connection, overload): retry later."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Transport(Protocol):
    async def complete(self, session: aiohttp.ClientSession, request: EngineRequest) -> EngineReply: ...


class CompletionsTransport:
    """vLLM's ``/v1/completions`` with harmony token ids in and out."""

    def __init__(
        self, base_url: str, api_key: str, limits: ReplyLimits | None = None, affinity_header: str = ""
    ) -> None:
        self.url = f"{_api_root(base_url)}/v1/completions"
        self.api_key = api_key
        self.limits = limits or ReplyLimits()
        self.affinity_header = affinity_header

    async def complete(self, session: aiohttp.ClientSession, request: EngineRequest) -> EngineReply:
        payload = {
            "model": request.model,
            "prompt": prompt_token_ids(
                policy_text=request.policy_text, content=request.content, effort=request.effort
            ),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop_token_ids": stop_token_ids(),
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        headers = request_headers(self.api_key, self.affinity_header, request.policy_text)
        body, latency_ms = await _post_json(session, self.url, headers, payload, self.limits.max_bytes)
        choice = _first_choice(body)
        finish_reason = _optional_str(choice.get("finish_reason"))
        with _native_errors_as_engine_errors():
            parsed = completion_parse(_completion_token_ids(choice, finish_reason))
        usage = _usage_counts(body)
        return EngineReply(
            final_text=_optional_cut(parsed.final_text, self.limits.max_text_chars),
            reasoning=text_cut(parsed.reasoning, self.limits.max_text_chars),
            finish_reason=finish_reason,
            prompt_tokens=usage.prompt_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=latency_ms,
            model=_optional_str(body.get("model")) or request.model,
            effort=request.effort,
            length_retried=False,
        )


class ChatTransport:
    """``/v1/chat/completions`` for servers that render the prompt themselves.

    The policy goes in a leading ``system`` message and the content in a ``user``
    message. Every OpenAI-compatible server accepts the ``system`` role (not all
    accept ``developer``), and the published gpt-oss chat template (LM Studio,
    llama.cpp) and current vLLM fold a leading system message into the harmony
    developer message's "# Instructions", which is where the safeguard model
    expects its policy; LM Studio's guide has the policy as the system prompt.
    Older vLLM renders it as a second system message, still before the content.
    """

    def __init__(
        self, base_url: str, api_key: str, limits: ReplyLimits | None = None, affinity_header: str = ""
    ) -> None:
        self.url = f"{_api_root(base_url)}/v1/chat/completions"
        self.api_key = api_key
        self.limits = limits or ReplyLimits()
        self.affinity_header = affinity_header

    async def complete(self, session: aiohttp.ClientSession, request: EngineRequest) -> EngineReply:
        payload = {
            "model": request.model,
            "messages": [
                {"role": "system", "content": request.policy_text},
                {"role": "user", "content": request.content},
            ],
            "reasoning_effort": request.effort,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        headers = request_headers(self.api_key, self.affinity_header, request.policy_text)
        body, latency_ms = await _post_json(session, self.url, headers, payload, self.limits.max_bytes)
        choice = _first_choice(body)
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise EngineError("engine response has no message")
        usage = _usage_counts(body)
        return EngineReply(
            final_text=_optional_cut(_optional_str(message.get("content")), self.limits.max_text_chars),
            reasoning=text_cut(_chat_reasoning(message), self.limits.max_text_chars),
            finish_reason=_optional_str(choice.get("finish_reason")),
            prompt_tokens=usage.prompt_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=latency_ms,
            model=_optional_str(body.get("model")) or request.model,
            effort=request.effort,
            length_retried=False,
        )


def engine_session(*, timeout_seconds: float, max_connections: int) -> aiohttp.ClientSession:
    """The HTTP session every engine call goes through; call it inside the loop that will use it.

    ``timeout_seconds`` bounds a whole call (connect, send, wait, read the body).
    ``max_connections`` should exceed the requests the caller keeps in flight, so
    none waits for a free connection. The caller closes the session.
    """
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=_CONNECT_TIMEOUT_SECONDS),
        connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=_KEEPALIVE_SECONDS),
    )


def transport_build(
    kind: str, base_url: str, api_key: str, limits: ReplyLimits | None = None, affinity_header: str = ""
) -> Transport:
    """``affinity_header`` (empty: none) names the header that carries ``policy_affinity_key``."""
    if kind == "completions":
        return CompletionsTransport(base_url, api_key, limits, affinity_header)
    if kind == "chat":
        return ChatTransport(base_url, api_key, limits, affinity_header)
    raise ValueError(f"unknown engine transport {kind!r}: expected 'completions' or 'chat'")


async def engine_judge(
    transport: Transport, session: aiohttp.ClientSession, request: EngineRequest
) -> EngineReply:
    """One verdict request; retried once with twice the token budget if it ran out first.

    The retry doubles ``max_tokens`` rather than lowering the effort: the prompt
    stays byte-identical, so the policy's prefix cache still hits, and items
    that needed long reasoning are not judged with less of it. If the retry
    still has no final message, its reply is returned as it is and the verdict
    parse gives ``undetermined``. The reply's latency covers both calls.
    """
    reply = await transport.complete(session, request)
    if not _ran_out_before_final(reply):
        return reply
    retry_request = dataclasses.replace(request, max_tokens=request.max_tokens * 2)
    retry_reply = await transport.complete(session, retry_request)
    return dataclasses.replace(
        retry_reply, latency_ms=reply.latency_ms + retry_reply.latency_ms, length_retried=True
    )


def _ran_out_before_final(reply: EngineReply) -> bool:
    has_final = reply.final_text is not None and reply.final_text.strip() != ""
    return reply.finish_reason == "length" and not has_final


def _api_root(base_url: str) -> str:
    # Accept both "http://host:8000" and the OpenAI-style "http://host:8000/v1".
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def text_cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, with a visible marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\u2026 [cut: {len(text) - limit} more characters]"


def _optional_cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text_cut(text, limit)


@contextlib.contextmanager
def _native_errors_as_engine_errors() -> Iterator[None]:
    """Decoding a reply runs native code (tokenizer, harmony parser): whatever it raises is the reply's fault.

    pyo3's ``PanicException`` derives from ``BaseException``, so ``except Exception`` misses it; it
    becomes an ``EngineError`` here, and only what must end the program or cancel the task goes through.
    """
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, (EngineError, *MUST_PROPAGATE)):
            raise
        raise EngineError(f"engine reply could not be decoded ({type(exc).__name__}: {_short(exc)})") from exc


@functools.lru_cache(maxsize=256)
def policy_affinity_key(policy_text: str) -> str:
    """A stable key per policy text (a published version's text never changes): its SHA-256, 32 hex digits.

    Every request judged under one policy starts with the same prompt prefix (system message, then the
    policy); a session-affinity router (vLLM production-stack ``--routing-logic session``, llm-d, an
    ingress hashing a header) sends equal keys to one replica, whose prefix cache then keeps that policy.
    """
    return hashlib.sha256(policy_text.encode()).hexdigest()[:32]


def request_headers(api_key: str, affinity_header: str, policy_text: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if affinity_header:
        headers[affinity_header] = policy_affinity_key(policy_text)
    return headers


async def _post_json(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    payload: dict[str, Any],
    max_bytes: int,
) -> tuple[Mapping[str, Any], int]:
    """The decoded JSON object answering ``payload``, and the call's latency in ms.

    The body is read in chunks and refused (``EngineError``) as soon as it is over ``max_bytes``: an
    engine answering megabytes of junk costs at most ``max_bytes`` of memory per request in flight.
    """
    started = time.monotonic()
    try:
        # No redirects: an engine that answers 3xx is misconfigured, and following
        # one would re-send the prompt somewhere else.
        async with session.post(url, json=payload, headers=headers, allow_redirects=False) as response:
            status, response_headers = response.status, response.headers
            content = await _body_read(response, max_bytes)
    except TimeoutError as exc:  # also aiohttp's ServerTimeoutError and its subclasses
        raise EngineUnavailable(f"engine timed out ({type(exc).__name__})") from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise EngineError(f"engine URL is invalid: {_short(exc)}") from exc
    except aiohttp.ClientError as exc:
        # Connection refused or reset, dropped before or during the response
        # (ClientConnectionError, ServerDisconnectedError, ClientOSError,
        # ClientPayloadError), or a response that is not HTTP.
        raise EngineUnavailable(f"engine unreachable ({type(exc).__name__}: {_short(exc)})") from exc
    except ValueError as exc:
        # aiohttp refuses to send a header with control characters: a broken API
        # key, which the message must not repeat.
        raise EngineError("engine request is invalid: check the engine's API key") from exc
    latency_ms = round((time.monotonic() - started) * 1000)
    _raise_for_status(status, response_headers, content)
    try:
        body = json.loads(content)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise EngineError("engine returned a response that is not JSON") from exc
    if not isinstance(body, dict):
        raise EngineError("engine returned JSON that is not an object")
    return body, latency_ms


async def _body_read(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The response body, or ``EngineError`` once it is over ``max_bytes`` (the connection is then closed)."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise EngineError(f"engine reply over {max_bytes} bytes (it announced {declared})")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise EngineError(f"engine reply over {max_bytes} bytes")
    return bytes(body)


def _short(exc: BaseException) -> str:
    return str(exc)[:_ERROR_DETAIL_LIMIT]


def _raise_for_status(status: int, headers: Mapping[str, str], content: bytes) -> None:
    if status < 400:
        return
    detail = _error_detail(content)
    if status in _RETRYABLE_STATUSES or status >= 500:
        raise EngineUnavailable(
            f"engine unavailable (HTTP {status}){detail}",
            retry_after_seconds=_retry_after_seconds(headers),
        )
    raise EngineError(f"engine rejected the request (HTTP {status}){detail}")


def _error_detail(content: bytes) -> str:
    """``": <message>"`` from an OpenAI-style error body, or nothing."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else body.get("message")
    if not isinstance(message, str) and isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message.strip():
        return ""
    return f": {message.strip()[:_ERROR_DETAIL_LIMIT]}"


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def _first_choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise EngineError("engine response has no choices")
    first: Mapping[str, Any] = choices[0]
    return first


def _completion_token_ids(choice: Mapping[str, Any], finish_reason: str | None) -> list[int]:
    """The completion's token ids: vLLM's ``choices[0].token_ids``, else re-encoded text.

    vLLM (0.10.2 and later) answers ``return_token_ids`` with ``token_ids``, which
    keeps the stop token. A server without it still returns ``text``; with
    ``skip_special_tokens`` off that text keeps the harmony structure but drops
    the stop token, which is put back so a complete final message is not
    mistaken for a cut-off one.
    """
    token_ids = choice.get("token_ids")
    if isinstance(token_ids, list) and all(_is_count(t) for t in token_ids):
        return token_ids
    text = choice.get("text")
    if not isinstance(text, str):
        raise EngineError("engine response has neither token_ids nor text")
    reencoded = text_token_ids(text)
    if finish_reason == "stop":
        stop_reason = choice.get("stop_reason")
        reencoded.append(stop_reason if _is_count(stop_reason) else _return_token_id())
    return reencoded


def text_token_ids(text: str) -> list[int]:
    """A completion's text as harmony tokens: special-token text becomes structure, the rest plain text.

    Linear in the text's length: the text between special tokens is encoded as prompts encode content,
    long runs of letters or spaces in slices (o200k's merge is quadratic in one run, and a 50 MB run
    overflowed the tokenizer's stack), which tiktoken's own encode of the whole text does not do.
    """
    ids: list[int] = []
    position = 0
    for match in _SPECIAL_TOKEN_TEXT.finditer(text):
        special = _special_token_id(match[0])
        if special is None:  # looks like one, is not: stays in the plain text around it
            continue
        ids += content_token_ids(text[position : match.start()])
        ids.append(special)
        position = match.end()
    ids += content_token_ids(text[position:])
    return ids


@functools.lru_cache(maxsize=256)
def _special_token_id(text: str) -> int | None:
    encoding = harmony_encoding()
    token_ids: list[int] = encoding.encode(text, allowed_special="all")
    is_special = len(token_ids) == 1 and token_ids != encoding.encode(text, disallowed_special=())
    return token_ids[0] if is_special else None


def _return_token_id() -> int:
    token_ids: list[int] = harmony_encoding().encode("<|return|>", allowed_special={"<|return|>"})
    return token_ids[0]


def _is_count(value: object) -> TypeGuard[int]:
    """A token id or a token count: a non-negative int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chat_reasoning(message: Mapping[str, Any]) -> str:
    for field in _CHAT_REASONING_FIELDS:
        reasoning = message.get(field)
        if isinstance(reasoning, str) and reasoning:
            return reasoning
    return ""


class _UsageCounts(NamedTuple):
    prompt_tokens: int | None
    cached_prompt_tokens: int | None
    completion_tokens: int | None


def _usage_counts(body: Mapping[str, Any]) -> _UsageCounts:
    # prompt_tokens_details is absent unless vLLM runs with
    # --enable-prompt-tokens-details, and may be null.
    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    return _UsageCounts(
        prompt_tokens=_optional_count(usage.get("prompt_tokens")),
        cached_prompt_tokens=_optional_count(details.get("cached_tokens")),
        completion_tokens=_optional_count(usage.get("completion_tokens")),
    )


def _optional_count(value: object) -> int | None:
    return value if _is_count(value) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None
