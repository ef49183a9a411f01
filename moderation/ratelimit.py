from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from moderation.models import Source
from moderation.redis import redis_client

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateLimitVerdict:
    allowed: bool
    retry_after_seconds: int


def source_rate_limit_take(source: Source, items: int) -> RateLimitVerdict:
    """Take `items` from the source's per-minute budget (fixed window); refused batches take nothing."""
    if items <= 0 or source.rate_limit_per_minute == 0:
        return RateLimitVerdict(allowed=True, retry_after_seconds=0)
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
    key = f"ratelimit:source:{source.pk}:{window}"
    try:
        pipe = redis_client().pipeline()
        pipe.incrby(key, items)
        pipe.expire(key, WINDOW_SECONDS * 2)
        used, _ = pipe.execute()
        if used > source.rate_limit_per_minute:
            redis_client().decrby(key, items)
            return RateLimitVerdict(allowed=False, retry_after_seconds=retry_after)
    except redis.RedisError:
        # Counters are a courtesy; Postgres keeps accepting content while Redis is away.
        logger.warning("rate limiter unavailable; allowing source %s", source.pk)
    return RateLimitVerdict(allowed=True, retry_after_seconds=0)
