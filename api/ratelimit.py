"""Per-API-key request rate limit, counted in Redis so every API process shares it.

A fixed window of one minute per key, opened by the key's first request in it: one
Lua script increments the counter and sets its expiry atomically, so the window never
loses its expiry and no two API processes can both take the last request. Windows
start per key, from Redis's own clock: no clock of an API process is involved.

If Redis cannot be reached the limit fails open: requests are served unlimited and
the failure is logged. The limit protects the service from bursts; refusing every
tenant's every request because the limiter's store is down would be the larger
outage (and the job queue lives in the same Redis, so that outage is already loud).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

import redis
from fastapi import Request

from api.errors import ApiError
from common.settings import get_settings

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
# After a Redis failure, skip the limiter for this long instead of paying a timeout on
# every request of the outage.
_BACKOFF_SECONDS = 5.0
_TIMEOUT_SECONDS = 0.5

# KEYS[1] counter; ARGV[1] window in ms. Returns {count, ms until the window ends}.
_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class RateDecision:
    limit: int
    count: int
    reset_ms: int

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit

    @property
    def reset_seconds(self) -> int:
        return max(1, math.ceil(self.reset_ms / 1000))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - self.count)),
            "X-RateLimit-Reset": str(self.reset_seconds),  # seconds until the window ends
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class _Limiter:
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
        )
        self._script = self._client.register_script(_SCRIPT)
        self._lock = threading.Lock()
        self._skip_until = 0.0

    def hit(self, key_id: uuid.UUID, limit: int) -> RateDecision | None:
        """Count one request of this key; None when Redis is unavailable (fail open)."""
        if time.monotonic() < self._skip_until:
            return None
        try:
            count, ttl = self._script(keys=[f"ratelimit:{key_id}"], args=[WINDOW_MS])
        except redis.RedisError as exc:
            with self._lock:
                self._skip_until = time.monotonic() + _BACKOFF_SECONDS
            logger.warning(
                "rate limiter: Redis unavailable (%s); serving requests unlimited for %.0fs",
                exc,
                _BACKOFF_SECONDS,
            )
            return None
        return RateDecision(limit=limit, count=int(count), reset_ms=int(ttl))


@lru_cache
def _limiter(url: str) -> _Limiter:
    return _Limiter(url)


def hit(key_id: uuid.UUID, limit: int) -> RateDecision | None:
    return _limiter(get_settings().redis_url).hit(key_id, limit)


def enforce(request: Request, key_id: uuid.UUID, limit: int) -> None:
    """Count this request against its key; 429 past the limit. The X-RateLimit-*
    headers are recorded on the request, and a middleware puts them on the response,
    whatever it is."""
    decision = hit(key_id, limit)
    if decision is None:
        return
    request.state.rate_limit_headers = decision.headers()
    if not decision.allowed:
        raise ApiError(
            429,
            f"rate limit exceeded: at most {limit} requests per minute with this API key; "
            f"retry in {decision.reset_seconds}s",
            headers=decision.headers(),
        )
