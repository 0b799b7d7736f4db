"""Every Redis client of the service is made here: the timeouts and retries of each use
sit side by side, and Redis is never more than a transport whose loss costs a hint (a
wake-up, a progress step, a cancel flag, a rate-limit count), never a job.

- `STEP`: calls between denoising steps (progress, cancel flags): a slow Redis may cost a
  step a few hundred milliseconds at worst, once; no retry.
- `NOTICE`: job-finished notices after a commit: a worker must not hang on a hint once
  its job is recorded; one quick retry.
- `COUNTER`: the rate limiter's counts, on the request path: fails open fast.
- `subscriber`: the API's pub/sub listeners (asyncio), kept alive by health checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.settings import get_settings


@dataclass(frozen=True)
class Policy:
    timeout_seconds: float
    retries: int = 0


STEP = Policy(timeout_seconds=0.5)
NOTICE = Policy(timeout_seconds=5, retries=1)
COUNTER = Policy(timeout_seconds=0.5)


def connect(url: str, policy: Policy) -> redis.Redis:
    """A client of the Redis at `url` with `policy`'s timeouts and retries."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=policy.retries)
    return redis.Redis.from_url(
        url,
        socket_timeout=policy.timeout_seconds,
        socket_connect_timeout=policy.timeout_seconds,
        retry=retry if policy.retries else None,
    )


@lru_cache
def shared(policy: Policy) -> redis.Redis:
    """This process's client of REDIS_URL with `policy` (one connection pool each)."""
    return connect(get_settings().redis_url, policy)


HEALTH_CHECK_SECONDS = 15


def subscriber(url: str) -> aioredis.Redis:
    """An asyncio client for a long-lived pub/sub subscription: keepalive on, and a ping
    every HEALTH_CHECK_SECONDS so that a dead connection is noticed and replaced."""
    return aioredis.Redis.from_url(
        url,
        health_check_interval=HEALTH_CHECK_SECONDS,
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
