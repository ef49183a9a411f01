"""The affinity header keeps each policy's prompt prefix cached on one engine replica.

Three engine simulators (each with a small LRU prefix cache, as a replica's KV cache is bounded) stand
behind a round-robin proxy written here that honours the header the way a session-affinity router does
(vLLM production-stack `--routing-logic session`, llm-d, an ingress hashing a header): the same header value
goes to the same replica, a request without it to the next replica in turn. The worker's transports send
`SAFEGUARD_AFFINITY_HEADER` with a hash of the policy text; the hit rate is prompt tokens served from the
prefix caches over all prompt tokens, with and without the header.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from inference_worker.engine import (
    EngineRequest,
    engine_judge,
    engine_session,
    policy_affinity_key,
    request_headers,
    transport_build,
)
from inference_worker.prompts import prompt_token_ids
from inference_worker.testing.engine_simulator import PREFIX_BLOCK_TOKENS, EngineSimulator

HEADER = "X-Session-ID"
DEMO = Path(__file__).resolve().parents[2] / "moderation" / "demo"
# Four policies of the demo set, two variants each (a published new version is a new prefix): eight prefixes.
POLICIES = [
    f"{(DEMO / name).read_text()}\n\nVersion note {variant}."
    for name in ("spam.md", "harassment.md", "impersonation.md", "personal-information.md")
    for variant in (1, 2)
]
ITEMS_PER_POLICY = 24
WORDS = ("buy", "cheap", "hello", "photo", "meeting", "price")


class AffinityProxy:
    """Round robin over `upstreams`; a request carrying `header` sticks to the replica its value first got."""

    def __init__(self, upstreams: list[str], header: str) -> None:
        self.upstreams = [urlsplit(u) for u in upstreams]
        self.header = header
        self.sessions: dict[str, int] = {}
        self.sent = [0] * len(upstreams)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                replica = proxy.pick(self.headers.get(proxy.header))
                target = proxy.upstreams[replica]
                upstream = HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
                try:
                    upstream.request("POST", self.path, body, {"Content-Type": "application/json"})
                    reply = upstream.getresponse()
                    content = reply.read()
                finally:
                    upstream.close()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def pick(self, session: str | None) -> int:
        with self._lock:
            if session:
                if session not in self.sessions:
                    self.sessions[session] = next(self._turn) % len(self.upstreams)
                replica = self.sessions[session]
            else:
                replica = next(self._turn) % len(self.upstreams)
            self.sent[replica] += 1
            return replica

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> AffinityProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def cache_blocks_for(prefixes: int) -> int:
    """A replica's prefix cache sized for about `prefixes` policy prompts plus some item tails."""
    longest = max(len(prompt_token_ids(policy_text=p, content="", effort="low")) for p in POLICIES)
    return prefixes * (longest // PREFIX_BLOCK_TOKENS + 4)


@pytest.fixture
def replicas() -> Iterator[list[EngineSimulator]]:
    # Each replica can keep three of the eight policies: all of its share with affinity, not all eight.
    with (
        EngineSimulator(prefix_cache_blocks=cache_blocks_for(3)) as a,
        EngineSimulator(prefix_cache_blocks=cache_blocks_for(3)) as b,
        EngineSimulator(prefix_cache_blocks=cache_blocks_for(3)) as c,
    ):
        yield [a, b, c]


def judge_all(base_url: str, affinity_header: str) -> None:
    rng = random.Random(18)
    requests = [
        EngineRequest(
            policy_text=policy,
            content=f"item {n} of policy {index}: " + " ".join(rng.choice(WORDS) for _ in range(12)),
            effort="low",
            model="openai/gpt-oss-safeguard-20b",
            max_tokens=512,
        )
        for index, policy in enumerate(POLICIES)
        for n in range(ITEMS_PER_POLICY)
    ]
    rng.shuffle(requests)  # a triage queue mixes policies

    async def run() -> None:
        transport = transport_build("completions", base_url, "", affinity_header=affinity_header)
        async with engine_session(timeout_seconds=30, max_connections=8) as session:
            # One at a time: the order requests reach the proxy, and so the round robin and each replica's
            # LRU cache, is the same on every run (with several in flight it drifted by a few points).
            for request in requests:
                await engine_judge(transport, session, request)

    asyncio.run(run())


def hit_rate(replicas: list[EngineSimulator]) -> float:
    cached = sum(r.stats.cached_prompt_tokens for r in replicas)
    total = sum(r.stats.prompt_tokens for r in replicas)
    return cached / total


def test_the_affinity_key_is_a_stable_hash_of_the_policy_text() -> None:
    assert policy_affinity_key("policy A") == policy_affinity_key("policy A")
    assert policy_affinity_key("policy A") != policy_affinity_key("policy B")
    assert len(policy_affinity_key("policy A")) == 32
    assert request_headers("", HEADER, "policy A") == {HEADER: policy_affinity_key("policy A")}
    assert request_headers("k", "", "policy A") == {"Authorization": "Bearer k"}  # empty: not sent


@pytest.mark.django_db  # EngineConfig also reads what an admin saved on /settings/engine
def test_the_worker_setting_reaches_the_engine_config() -> None:
    from inference_worker.runner import EngineConfig

    assert EngineConfig.from_settings().affinity_header == "X-Session-ID"  # the default


@pytest.mark.slow  # hundreds of requests, one at a time, through a proxy to three replicas
def test_affinity_keeps_each_policy_prefix_cached_on_one_replica(replicas: list[EngineSimulator]) -> None:
    upstreams = [r.base_url for r in replicas]
    with AffinityProxy(upstreams, HEADER) as proxy:
        judge_all(proxy.base_url, affinity_header="")
    without = hit_rate(replicas)
    spread_without = list(proxy.sent)

    fresh = [EngineSimulator(prefix_cache_blocks=cache_blocks_for(3)) for _ in replicas]
    for simulator in fresh:
        simulator.start()
    try:
        with AffinityProxy([r.base_url for r in fresh], HEADER) as proxy:
            judge_all(proxy.base_url, affinity_header=HEADER)
        with_affinity = hit_rate(fresh)
        spread_with = list(proxy.sent)
        sessions = len(proxy.sessions)
    finally:
        for simulator in fresh:
            simulator.stop()

    print(
        f"prefix cache hit rate over 3 replicas, {len(POLICIES)} policies x {ITEMS_PER_POLICY} items: "
        f"without affinity {without:.1%} (requests per replica {spread_without}), "
        f"with {HEADER} {with_affinity:.1%} (requests per replica {spread_with}, {sessions} sessions)"
    )
    assert sessions == len(POLICIES)
    assert min(spread_with) > 0  # the policies are spread over every replica, each policy on one
    # Measured: 91.4% with the header, 75.2% without (the system message before the policy is the
    # same for every policy, so even a wrong replica serves that part from its cache). The header at
    # least halves the prompt tokens a replica has to compute.
    assert with_affinity > 0.88
    assert 1 - with_affinity < (1 - without) / 2
