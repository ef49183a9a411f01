"""A loopback stand-in for a vLLM server running gpt-oss-safeguard.

TEST INFRASTRUCTURE ONLY: tests, fault tests and benchmarks use it; nothing in
the product imports it.

It speaks enough HTTP/1.1 (keep-alive, Content-Length bodies) for
``POST /v1/completions``, ``POST /v1/chat/completions`` and ``GET /v1/models``,
and answers with real harmony-encoded completions rendered by openai-harmony:
an analysis message, then a final message carrying the verdict JSON, ended by
``<|return|>``. It is built on bare asyncio so that at zero latency it costs
little next to the client being measured.

The verdict is a pure function of the user content: it violates when the
content holds ``[[violates]]`` or one of ``violating_words``, citing the first
rule id the policy defines; ``[[low]]`` / ``[[medium]]`` lower the confidence.
``[[sim:MODE]]`` in the content picks a mode (see ``MODES``) for that request
alone, so one batch can mix them. The modes: ``ok``; ``http_500``; ``http_429``
(with Retry-After); ``timeout`` (never answers); ``drop`` (hangs up);
``length`` (cut off in the analysis, finish_reason "length"); ``no_final``;
``malformed_json``; ``hallucinated_rule`` (cites ZZ99); ``empty``; ``bare``
(final text ``1`` / ``0``); ``fenced`` (JSON in a code fence).
Hostile modes, as a misbehaving server would answer: ``hang`` (accepts, never
answers, like ``timeout``); ``trickle`` (the right answer, one byte every
``trickle_interval`` seconds); ``oversized`` (``oversized_bytes`` of junk that
is not JSON); ``oversized_json`` (a valid reply whose reasoning is a run of
``oversized_bytes`` letters, as ``text`` without ``token_ids`` on
/v1/completions); ``panic`` (the same with a run of ``panic_run_chars``
letters, under the reply cap: re-encoding that text once took seconds per
reply and, longer, made the tokenizer panic).
``[[answer:NAME]]`` in the content makes the model say ``simulator.scripted[NAME]``,
an ``(analysis, final text)`` pair, verbatim: tests push hostile model output
through the real transport, parser and pages.

In-process::

    with EngineSimulator(latency=0.0, mode="ok") as simulator:
        transport_build("completions", simulator.base_url, "")

As a process (prints its base URL on one line when ready)::

    python -m inference_worker.testing.engine_simulator --port 8011 --latency 2.0 --mode ok
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from openai_harmony import Message, Role

from inference_worker.prompts import harmony_encoding, prompt_token_ids
from policies.rules import policy_rule_ids_parse

MODES = (
    "ok",
    "http_500",
    "http_429",
    "timeout",
    "drop",
    "length",
    "no_final",
    "malformed_json",
    "hallucinated_rule",
    "empty",
    "bare",
    "fenced",
    "hang",
    "trickle",
    "oversized",
    "oversized_json",
    "panic",
)
HOSTILE_MODES = ("hang", "trickle", "oversized", "oversized_json", "panic")
DEFAULT_VIOLATING_WORDS = frozenset({"zorblax", "glorpnik", "snarfwidget"})
HALLUCINATED_RULE_ID = "ZZ99"
CHAT_REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")
PREFIX_BLOCK_TOKENS = 16
TIMEOUT_MODE_SLEEP_SECONDS = 3600.0
TRICKLE_INTERVAL_SECONDS = 2.0
OVERSIZED_BYTES = 50_000_000
PANIC_RUN_CHARS = 200_000
RETRY_AFTER_SECONDS = 1
PROMPTS_KEPT = 1000
DEFAULT_MODEL = "openai/gpt-oss-safeguard-20b"

_MODE_MARKER = re.compile(r"\[\[sim:([a-z_0-9]+)\]\]")
_ANSWER_MARKER = re.compile(r"\[\[answer:([\w-]+)\]\]")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_BLOCK_HASHES_KEPT = 200_000


@dataclass
class SimulatorStats:
    requests_total: int = 0
    requests_by_path: collections.Counter[str] = field(default_factory=collections.Counter)
    max_in_flight: int = 0
    # The `prompt` of each /v1/completions request and the `messages` of each
    # chat request, newest last.
    prompts: collections.deque[object] = field(default_factory=lambda: collections.deque(maxlen=PROMPTS_KEPT))
    # The simulated prefix cache's counters: prompt tokens seen, and those served from the cache.
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens (what vLLM reports as its prefix cache hit rate)."""
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True)
class _HttpRequest:
    method: str
    path: str
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class _HttpResponse:
    status: int
    body: bytes
    extra_headers: tuple[tuple[str, str], ...] = ()
    # Send the body one byte at a time, this many seconds apart ("trickle" mode).
    trickle_interval: float = 0.0


@dataclass(frozen=True)
class _Judgement:
    """What the simulated model says about one item."""

    mode: str
    violates: bool
    rule_id: str | None
    confidence: str
    script: tuple[str, str] | None = None


class EngineSimulator:
    """The loopback server, run in a background thread.

    ``latency`` (seconds), ``mode``, ``fail_first_n`` and ``chat_reasoning_field``
    may be changed while it runs. ``mode`` applies to every request, unless
    ``fail_first_n`` is set: then the next ``fail_first_n`` requests get ``mode``
    and the simulator goes back to ``ok``. ``flap([(mode, n), ...])`` makes the
    next requests walk through a schedule (n requests in each mode, in order)
    before ``mode`` applies again; ``flap_remaining`` says how many are left.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        mode: str = "ok",
        violating_words: Collection[str] = DEFAULT_VIOLATING_WORDS,
        chat_reasoning_field: str = "reasoning",
        host: str = "127.0.0.1",
        port: int = 0,
        prefix_cache_blocks: int | None = None,
    ) -> None:
        """``prefix_cache_blocks``: how many 16-token blocks the simulated prefix cache holds, the least
        recently used evicted first, as a replica's KV cache does (None: as many as it sees)."""
        self.latency = latency
        self.prefix_cache_blocks = prefix_cache_blocks
        self._mode = _checked_mode(mode)
        self.fail_first_n = 0
        self._flap_schedule: collections.deque[list[Any]] = collections.deque()
        self.violating_words = frozenset(word.lower() for word in violating_words)
        self.chat_reasoning_field = chat_reasoning_field
        self.scripted: dict[str, tuple[str, str]] = {}
        self.trickle_interval = TRICKLE_INTERVAL_SECONDS
        self.oversized_bytes = OVERSIZED_BYTES
        self.panic_run_chars = PANIC_RUN_CHARS
        self.host = host
        self.port = port
        self.stats = SimulatorStats()
        self._in_flight = 0
        self._failure_lock = threading.Lock()
        self._prefix_blocks: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = _checked_mode(mode)

    def flap(self, schedule: list[tuple[str, int]]) -> None:
        checked = [[_checked_mode(mode), count] for mode, count in schedule if count > 0]
        with self._failure_lock:
            self._flap_schedule = collections.deque(checked)

    @property
    def flap_remaining(self) -> int:
        with self._failure_lock:
            return sum(count for _, count in self._flap_schedule)

    @property
    def base_url(self) -> str:
        if not self._ready.is_set():
            raise RuntimeError("the engine simulator is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> EngineSimulator:
        harmony_encoding()  # load the vocabulary before the first request races for it
        self._thread = threading.Thread(target=self._run, name="engine-simulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise RuntimeError("the engine simulator did not start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self._ready.clear()

    def __enter__(self) -> EngineSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def reset_stats(self) -> None:
        self.stats = SimulatorStats()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection_serve, self.host, self.port, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopping.wait()
        # asyncio.run cancels the connections still open (keep-alive, timeout mode).

    async def _connection_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _http_request_read(reader)
                if request is None:
                    return
                response = await self._request_serve(request)
                if response is None:  # "drop" mode: hang up without answering
                    return
                if response.trickle_interval > 0:
                    await _trickle(writer, response, keep_alive=request.keep_alive)
                else:
                    writer.write(_http_response_bytes(response, keep_alive=request.keep_alive))
                    await writer.drain()
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            # A client that hung up mid-request or sent something that is not HTTP.
            return
        except asyncio.CancelledError:
            # Stopped with a request still open ("timeout" mode): ending quietly spares asyncio's
            # stream callback a traceback per connection.
            return
        finally:
            writer.close()

    async def _request_serve(self, request: _HttpRequest) -> _HttpResponse | None:
        stats = self.stats
        stats.requests_total += 1
        stats.requests_by_path[request.path] += 1
        self._in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, self._in_flight)
        try:
            return await self._route(request, stats)
        finally:
            self._in_flight -= 1

    async def _route(self, request: _HttpRequest, stats: SimulatorStats) -> _HttpResponse | None:
        if request.method == "GET" and request.path == "/v1/models":
            return _json_response(200, {"object": "list", "data": [{"id": DEFAULT_MODEL}]})
        if request.method != "POST" or request.path not in (
            "/v1/completions",
            "/v1/chat/completions",
        ):
            return _error_response(404, f"no route for {request.method} {request.path}")
        try:
            payload = json.loads(request.body)
        except ValueError:
            return _error_response(400, "request body is not JSON")
        if not isinstance(payload, dict):
            return _error_response(400, "request body is not a JSON object")
        if request.path == "/v1/completions":
            return await self._completions_serve(payload, stats)
        return await self._chat_serve(payload, stats)

    async def _completions_serve(
        self, payload: dict[str, Any], stats: SimulatorStats
    ) -> _HttpResponse | None:
        prompt = payload.get("prompt")
        stats.prompts.append(prompt)
        prompt_ids = _prompt_ids(prompt)
        if prompt_ids is None:
            return _error_response(400, "prompt must be a string or a list of token ids")
        policy_text, content = _policy_and_content(prompt_ids)
        judgement = self._judge(policy_text, content)
        early_response = await self._failure_or_delay(judgement.mode)
        if early_response is not None or judgement.mode in ("drop", "timeout", "hang"):
            return early_response
        if judgement.mode == "oversized":
            return _HttpResponse(status=200, body=_junk(self.oversized_bytes))
        completion_ids, finish_reason = _completion_token_ids(judgement)
        long_run = self._long_run_chars(judgement.mode)
        if long_run:
            analysis, final_text, _ = _judgement_texts(judgement)
            text = (
                f"<|channel|>analysis<|message|>{analysis} {_run(long_run)}<|end|>"
                f"<|start|>assistant<|channel|>final<|message|>{final_text}"
            )
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop", "stop_reason": None}
            return _json_response(200, {"model": payload.get("model") or DEFAULT_MODEL, "choices": [choice]})
        choice = {
            "index": 0,
            "text": _completion_text(completion_ids, finish_reason),
            "token_ids": list(completion_ids),
            "finish_reason": finish_reason,
            "stop_reason": completion_ids[-1] if finish_reason == "stop" else None,
        }
        return self._maybe_trickled(
            judgement.mode,
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": payload.get("model") or DEFAULT_MODEL,
                "choices": [choice],
                "usage": self._usage(prompt_ids, len(completion_ids)),
            },
        )

    async def _chat_serve(self, payload: dict[str, Any], stats: SimulatorStats) -> _HttpResponse | None:
        messages = payload.get("messages")
        stats.prompts.append(messages)
        if not isinstance(messages, list):
            return _error_response(400, "messages must be a list")
        policy_text = _chat_text(messages, ("system", "developer"))
        content = _chat_text(messages, ("user",))
        effort = str(payload.get("reasoning_effort") or "medium")
        try:
            prompt_ids = prompt_token_ids(policy_text=policy_text, content=content, effort=effort)
        except ValueError as exc:
            return _error_response(400, str(exc))
        judgement = self._judge(policy_text, content)
        early_response = await self._failure_or_delay(judgement.mode)
        if early_response is not None or judgement.mode in ("drop", "timeout", "hang"):
            return early_response
        if judgement.mode == "oversized":
            return _HttpResponse(status=200, body=_junk(self.oversized_bytes))
        analysis, final_text, finish_reason = _judgement_texts(judgement)
        completion_ids, _ = _completion_token_ids(judgement)
        long_run = self._long_run_chars(judgement.mode)
        if long_run:
            analysis = f"{analysis} {_run(long_run)}"
        message = {"role": "assistant", "content": final_text, self.chat_reasoning_field: analysis}
        return self._maybe_trickled(
            judgement.mode,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload.get("model") or DEFAULT_MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": self._usage(prompt_ids, len(completion_ids)),
            },
        )

    def _long_run_chars(self, mode: str) -> int:
        return {"oversized_json": self.oversized_bytes, "panic": self.panic_run_chars}.get(mode, 0)

    def _maybe_trickled(self, mode: str, body: Mapping[str, Any]) -> _HttpResponse:
        response = _json_response(200, body)
        if mode != "trickle":
            return response
        return dataclasses.replace(response, trickle_interval=self.trickle_interval)

    def _judge(self, policy_text: str, content: str) -> _Judgement:
        lowered = content.lower()
        violates = "[[violates]]" in lowered or any(w in lowered for w in self.violating_words)
        rule_ids = _policy_rule_ids(policy_text)
        confidence = "high"
        if "[[low]]" in lowered:
            confidence = "low"
        elif "[[medium]]" in lowered:
            confidence = "medium"
        answer = _ANSWER_MARKER.search(content)
        return _Judgement(
            mode=self._mode_for(content),
            violates=violates,
            rule_id=rule_ids[0] if rule_ids else None,
            confidence=confidence,
            script=self.scripted.get(answer[1]) if answer else None,
        )

    def _mode_for(self, content: str) -> str:
        marker = _MODE_MARKER.search(content)
        if marker is not None and marker[1] in MODES:
            return marker[1]
        with self._failure_lock:
            if self._flap_schedule:
                step = self._flap_schedule[0]
                step[1] -= 1
                if step[1] == 0:
                    self._flap_schedule.popleft()
                return str(step[0])
            mode = self._mode
            if self.fail_first_n > 0:
                self.fail_first_n -= 1
                if self.fail_first_n == 0:
                    self._mode = "ok"
            return mode

    async def _failure_or_delay(self, mode: str) -> _HttpResponse | None:
        """The error response for ``mode``, after the simulated latency; None to go on."""
        if mode in ("timeout", "hang"):
            await asyncio.sleep(TIMEOUT_MODE_SLEEP_SECONDS)
            return None
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if mode == "http_500":
            return _error_response(500, "simulated engine failure")
        if mode == "http_429":
            return _error_response(
                429,
                "simulated overload",
                extra_headers=(("Retry-After", str(RETRY_AFTER_SECONDS)),),
            )
        return None

    def _usage(self, prompt_ids: list[int], completion_tokens: int) -> dict[str, Any]:
        cached = self._prefix_cache_hit(prompt_ids)
        self.stats.prompt_tokens += len(prompt_ids)
        self.stats.cached_prompt_tokens += cached
        return {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _prefix_cache_hit(self, prompt_ids: list[int]) -> int:
        """Tokens served from the simulated prefix cache, in whole 16-token blocks.

        Like vLLM, blocks are chained by hash, so a block only counts when all
        blocks before it are cached too, and the last prompt token is always
        computed.
        """
        if len(self._prefix_blocks) > _BLOCK_HASHES_KEPT:
            self._prefix_blocks.clear()
        cached_tokens = 0
        still_cached = True
        block_hash = 0
        full_blocks = (len(prompt_ids) - 1) // PREFIX_BLOCK_TOKENS
        for block in range(full_blocks):
            start = block * PREFIX_BLOCK_TOKENS
            block_hash = hash((block_hash, *prompt_ids[start : start + PREFIX_BLOCK_TOKENS]))
            if still_cached and block_hash in self._prefix_blocks:
                cached_tokens += PREFIX_BLOCK_TOKENS
                self._prefix_blocks.move_to_end(block_hash)
            else:
                still_cached = False
                self._prefix_blocks[block_hash] = None
                self._prefix_blocks.move_to_end(block_hash)
                capacity = self.prefix_cache_blocks
                if capacity is not None and len(self._prefix_blocks) > capacity:
                    self._prefix_blocks.popitem(last=False)
        return cached_tokens


def _checked_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown simulator mode {mode!r}; one of {', '.join(MODES)}")
    return mode


# --- HTTP/1.1, the small part of it the clients use -------------------------------


async def _http_request_read(reader: asyncio.StreamReader) -> _HttpRequest | None:
    """The next request on a keep-alive connection; None when the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    method, path, version = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return _HttpRequest(method=method, path=path.split("?", 1)[0], body=body, keep_alive=keep_alive)


def _http_response_bytes(response: _HttpResponse, *, keep_alive: bool) -> bytes:
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(response.body))),
        ("Connection", "keep-alive" if keep_alive else "close"),
        *response.extra_headers,
    ]
    reason = _REASONS.get(response.status, "Error")
    head = f"HTTP/1.1 {response.status} {reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + response.body


async def _trickle(writer: asyncio.StreamWriter, response: _HttpResponse, *, keep_alive: bool) -> None:
    """The head at once, then the body one byte at a time: alive, but never done in time."""
    whole = _http_response_bytes(response, keep_alive=keep_alive)
    head_length = len(whole) - len(response.body)
    writer.write(whole[:head_length])
    for position in range(head_length, len(whole)):
        await writer.drain()
        await asyncio.sleep(response.trickle_interval)
        writer.write(whole[position : position + 1])
    await writer.drain()


@functools.lru_cache(maxsize=4)
def _junk(size: int) -> bytes:
    return (b"<html>not json " * (size // 15 + 1))[:size]


@functools.lru_cache(maxsize=4)
def _run(chars: int) -> str:
    return "a" * chars


def _json_response(status: int, body: Mapping[str, Any]) -> _HttpResponse:
    return _HttpResponse(status=status, body=json.dumps(body).encode())


def _error_response(
    status: int, message: str, *, extra_headers: tuple[tuple[str, str], ...] = ()
) -> _HttpResponse:
    # vLLM's error body shape.
    error = {"object": "error", "message": message, "type": "SimulatedError", "code": status}
    return _HttpResponse(status=status, body=json.dumps(error).encode(), extra_headers=extra_headers)


# --- Reading the prompt ------------------------------------------------------------


def _prompt_ids(prompt: object) -> list[int] | None:
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    if isinstance(prompt, str):
        # What a server does with a text prompt: special-token text becomes
        # structure. The product never sends text; tests can show why.
        token_ids: list[int] = harmony_encoding().encode(prompt, allowed_special="all")
        return token_ids
    return None


def _policy_and_content(prompt_ids: list[int]) -> tuple[str, str]:
    """The developer (policy) and user (content) texts of a rendered harmony prompt.

    Messages are found by their special tokens, which content cannot forge:
    openai-harmony renders special-token look-alikes in text as plain tokens.
    """
    start, message, end = _structure_token_ids()
    encoding = harmony_encoding()
    texts: dict[str, str] = {}
    position = 0
    while True:
        try:
            header_start = prompt_ids.index(start, position) + 1
            body_start = prompt_ids.index(message, header_start) + 1
            body_end = prompt_ids.index(end, body_start)
        except ValueError:
            break
        role = encoding.decode(prompt_ids[header_start : body_start - 1]).strip()
        texts[role] = encoding.decode(prompt_ids[body_start:body_end])
        position = body_end + 1
    return texts.get("developer", ""), texts.get("user", "")


@functools.cache
def _structure_token_ids() -> tuple[int, int, int]:
    encoding = harmony_encoding()
    [start, message, end] = (
        encoding.encode(token, allowed_special={token})[0]
        for token in ("<|start|>", "<|message|>", "<|end|>")
    )
    return start, message, end


def _chat_text(messages: list[object], roles: tuple[str, ...]) -> str:
    """The text of the last message with one of ``roles``."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") in roles:
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


@functools.lru_cache(maxsize=256)
def _policy_rule_ids(policy_text: str) -> list[str]:
    return policy_rule_ids_parse(policy_text)


# --- Writing the completion ----------------------------------------------------------


def _judgement_texts(judgement: _Judgement) -> tuple[str, str | None, str]:
    """(analysis text, final text or None, finish reason) for a judgement."""
    if judgement.script is not None:
        return judgement.script[0], judgement.script[1], "stop"
    rule_note = f" under rule {judgement.rule_id}" if judgement.rule_id else ""
    verdict_word = "violates" if judgement.violates else "does not violate"
    analysis = (
        f"We need to check the content against the policy. The content {verdict_word}"
        f" the policy{rule_note}. Confidence is {judgement.confidence}."
    )
    if judgement.mode == "length":
        return analysis, None, "length"
    if judgement.mode == "no_final":
        return analysis, None, "stop"
    return analysis, _final_text(judgement), "stop"


def _final_text(judgement: _Judgement) -> str:
    if judgement.mode == "bare":
        return "1" if judgement.violates else "0"
    if judgement.mode == "empty":
        return ""
    if judgement.mode == "malformed_json":
        return f'{{"violation": {int(judgement.violates)}, "rule_ids": ['
    rule_ids = [judgement.rule_id] if judgement.violates and judgement.rule_id else []
    if judgement.mode == "hallucinated_rule":
        rule_ids = [HALLUCINATED_RULE_ID]
    verdict = json.dumps(
        {
            "violation": int(judgement.violates),
            "policy_category": "simulated" if judgement.violates else None,
            "rule_ids": rule_ids,
            "confidence": judgement.confidence,
            "rationale": "Simulated verdict.",
        }
    )
    if judgement.mode == "fenced":
        return f"```json\n{verdict}\n```"
    return verdict


@functools.lru_cache(maxsize=1024)
def _completion_token_ids(judgement: _Judgement) -> tuple[tuple[int, ...], str]:
    """The assistant's harmony tokens as the model would emit them, and the finish reason.

    The prompt ends with ``<|start|>assistant``, so the completion starts at the
    first message's channel; the final message ends with ``<|return|>``. A
    truncated completion ("length") stops inside the analysis.
    """
    encoding = harmony_encoding()
    analysis, final_text, finish_reason = _judgement_texts(judgement)
    analysis_message = Message.from_role_and_content(Role.ASSISTANT, analysis)
    analysis_ids = encoding.render(analysis_message.with_channel("analysis"))
    completion = analysis_ids[len(_assistant_turn_ids()) :]
    if judgement.mode == "length":
        return tuple(completion[: len(completion) // 2]), finish_reason
    if final_text is not None:
        final_message = Message.from_role_and_content(Role.ASSISTANT, final_text)
        final_ids = encoding.render(final_message.with_channel("final"))
        completion += [*final_ids[:-1], _return_token_id()]
    return tuple(completion), finish_reason


@functools.lru_cache(maxsize=1024)
def _completion_text(completion_ids: tuple[int, ...], finish_reason: str) -> str:
    # vLLM leaves the stop token out of `text` but keeps it in `token_ids`.
    shown = completion_ids[:-1] if finish_reason == "stop" else completion_ids
    text: str = harmony_encoding().decode(shown)
    return text


@functools.cache
def _assistant_turn_ids() -> tuple[int, ...]:
    return tuple(harmony_encoding().encode("<|start|>assistant", allowed_special={"<|start|>"}))


@functools.cache
def _return_token_id() -> int:
    token_ids: list[int] = harmony_encoding().encode("<|return|>", allowed_special={"<|return|>"})
    return token_ids[0]


# --- Command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--chat-reasoning-field", default="reasoning", choices=CHAT_REASONING_FIELDS)
    parser.add_argument(
        "--violating-words",
        default=",".join(sorted(DEFAULT_VIOLATING_WORDS)),
        help="comma-separated words that make content violate",
    )
    arguments = parser.parse_args(argv)
    simulator = EngineSimulator(
        latency=arguments.latency,
        mode=arguments.mode,
        violating_words=[w for w in arguments.violating_words.split(",") if w],
        chat_reasoning_field=arguments.chat_reasoning_field,
        host=arguments.host,
        port=arguments.port,
    )
    stop_requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    with simulator:
        print(simulator.base_url, flush=True)
        stop_requested.wait()


if __name__ == "__main__":
    main()
