"""A circuit breaker shared by every worker process (state in Redis), so a dead engine is not hammered.

closed -> (N transient failures within the window) -> open -> (cooldown passes) -> half-open:
one probe request at a time; a success closes the breaker, a failure opens it for another cooldown.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from moderation.redis import redis_client


@dataclass(frozen=True)
class CircuitBreaker:
    name: str
    failure_threshold: int
    cooldown_seconds: float

    @property
    def _failures_key(self) -> str:
        return f"breaker:{self.name}:failures"

    @property
    def _open_until_key(self) -> str:
        return f"breaker:{self.name}:open_until"

    @property
    def _probe_key(self) -> str:
        return f"breaker:{self.name}:probe"

    def allowance(self) -> float:
        """How many requests may start now: infinity (closed), 0 (open) or 1 (half-open probe)."""
        client = redis_client()
        try:
            open_until = client.get(self._open_until_key)
            if open_until is None:
                return math.inf
            if time.time() < float(open_until):
                return 0
            probe_taken = client.set(self._probe_key, 1, nx=True, ex=max(1, int(self.cooldown_seconds)))
        except redis.RedisError:
            return math.inf  # without Redis, per-case retry backoff still protects the engine
        return 1 if probe_taken else 0

    def is_open(self) -> bool:
        return self.allowance() == 0

    def record(self, *, successes: int, failures: int) -> None:
        client = redis_client()
        try:
            if successes:
                client.delete(self._failures_key, self._open_until_key, self._probe_key)
                return
            if not failures:
                return
            if client.exists(self._open_until_key):  # the half-open probe failed
                self._open(client)
                return
            pipe = client.pipeline()
            pipe.incrby(self._failures_key, failures)
            pipe.expire(self._failures_key, max(1, int(self.cooldown_seconds * 2)))
            count, _ = pipe.execute()
            if count >= self.failure_threshold:
                self._open(client)
        except redis.RedisError:
            pass

    def _open(self, client: redis.Redis) -> None:
        pipe = client.pipeline()
        pipe.set(self._open_until_key, time.time() + self.cooldown_seconds)
        pipe.delete(self._failures_key, self._probe_key)
        pipe.execute()

    def seconds_until_half_open(self) -> float:
        try:
            open_until = redis_client().get(self._open_until_key)
        except redis.RedisError:
            return 0.0
        return max(0.0, float(open_until) - time.time()) if open_until else 0.0

    def seconds_until_retry(self) -> float:
        """How long until a request may start: until it half-opens, or until the probe in flight ends.

        0 when closed. A probe holds its slot for at most the cooldown (the key expires), so a case held
        back now is worth trying again after this long, not before.
        """
        client = redis_client()
        try:
            open_until = client.get(self._open_until_key)
            if open_until is None:
                return 0.0
            remaining = float(open_until) - time.time()
            if remaining > 0:
                return remaining
            probe_ttl_ms = client.pttl(self._probe_key)
        except redis.RedisError:
            return 0.0
        return max(0.0, probe_ttl_ms / 1000) if isinstance(probe_ttl_ms, int) else 0.0
