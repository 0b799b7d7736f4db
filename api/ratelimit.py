"""Per-API-key request rate limit, counted in Redis so every API process shares it.

A fixed window of one minute per key, opened by the key's first request in it: one
Lua script increments the counter and sets its expiry atomically, so the window never
loses its expiry and no two API processes can both take the last request. Windows
start per key, from Redis's own clock: no clock of an API process is involved.

Each API process takes a key's requests from Redis a few at a time (a lease: one
INCRBY of n), and counts them out locally, so a busy key costs one Redis round trip per
n requests rather than per request (docs/performance.md, "Service path"). n is 1 for
limits under 128, so small limits stay exact; above, n = limit / 64 (at most 32): an
unused remainder of a lease counts as used, so with P API processes a key may be
refused up to P × (n − 1) requests (under 1.6% of its limit per process) before its
limit. A lease ends with the window it was taken in.

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
from common import metrics, redis_clients
from common.settings import get_settings

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
# After a Redis failure, skip the limiter for this long instead of paying a timeout on
# every request of the outage.
_BACKOFF_SECONDS = 5.0

# KEYS[1] counter; ARGV[1] window in ms, ARGV[2] requests taken. Returns {count, ms until
# the window ends}.
_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
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


# Leases: none below this limit (exact counting); above it, 1/_LEASE_FRACTION of the
# limit, at most _MAX_LEASE requests.
_LEASE_FROM_LIMIT = 128
_LEASE_FRACTION = 64
_MAX_LEASE = 32
# Leases of windows that ended are dropped once this many are held.
_PRUNE_AT = 4096


def lease_size(limit: int) -> int:
    if limit < _LEASE_FROM_LIMIT:
        return 1
    return min(_MAX_LEASE, limit // _LEASE_FRACTION)


@dataclass
class _Lease:
    """Counts `next`..`last` of a key's window, which ends at `ends` (monotonic)."""

    next: int
    last: int
    ends: float


class Limiter:
    def __init__(self, url: str) -> None:
        self.client = redis_clients.connect(url, redis_clients.COUNTER)
        self.script = self.client.register_script(_SCRIPT)
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._leases: dict[uuid.UUID, _Lease] = {}

    def hit(self, key_id: uuid.UUID, limit: int) -> RateDecision | None:
        """Count one request of this key; None when Redis is unavailable (fail open)."""
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(key_id)
            # From the lease while it has counts left, and also once past the limit (a
            # refusal needs no new count; a raised limit asks Redis again).
            if (
                lease is not None
                and now < lease.ends
                and (lease.next <= lease.last or lease.next > limit)
            ):
                return self._take(lease, limit, now)
        if now < self._skip_until:
            return None
        taken = lease_size(limit)
        try:
            count, ttl = self.script(keys=[f"ratelimit:{key_id}"], args=[WINDOW_MS, taken])
        except redis.RedisError as exc:
            metrics.dependency_error("redis")
            with self._lock:
                self._skip_until = time.monotonic() + _BACKOFF_SECONDS
            logger.warning(
                "rate limiter: Redis unavailable (%s); serving requests unlimited for %.0fs",
                exc,
                _BACKOFF_SECONDS,
            )
            return None
        lease = _Lease(next=int(count) - taken + 1, last=int(count), ends=now + int(ttl) / 1000)
        with self._lock:
            if len(self._leases) >= _PRUNE_AT:
                self._leases = {k: v for k, v in self._leases.items() if v.ends > now}
            self._leases[key_id] = lease
            return self._take(lease, limit, now)

    @staticmethod
    def _take(lease: _Lease, limit: int, now: float) -> RateDecision:
        count = lease.next
        lease.next += 1
        return RateDecision(limit=limit, count=count, reset_ms=int((lease.ends - now) * 1000))


@lru_cache
def _limiter(url: str) -> Limiter:
    return Limiter(url)


def hit(key_id: uuid.UUID, limit: int) -> RateDecision | None:
    return _limiter(get_settings().redis_url).hit(key_id, limit)


def failures(name: str) -> tuple[int, int]:
    """(failures `count_failure(name)` counted in the current minute, seconds until that
    minute ends); (0, 0) when Redis is unavailable: fail open, as the request limit."""
    limiter = _limiter(get_settings().redis_url)
    try:
        key = f"failures:{name}"
        pipe = limiter.client.pipeline()
        pipe.get(key)
        pipe.pttl(key)
        count, ttl = pipe.execute()
    except redis.RedisError:
        metrics.dependency_error("redis")
        return 0, 0
    return int(count or 0), max(1, math.ceil(int(ttl) / 1000))


def count_failure(name: str) -> None:
    """Count one failure of `name`: a fixed one-minute window, like the request limit."""
    limiter = _limiter(get_settings().redis_url)
    try:
        limiter.script(keys=[f"failures:{name}"], args=[WINDOW_MS, 1])
    except redis.RedisError:
        metrics.dependency_error("redis")
        logger.warning("failure counter: Redis unavailable; %s not counted", name)


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
