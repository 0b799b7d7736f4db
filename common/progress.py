"""Live progress of running jobs, in Redis: never in PostgreSQL.

A job reports step after step (hundreds per job, several per second); writing each one
to the jobs table would turn the source of truth into a progress log. Instead the
worker keeps, per running job, a small Redis hash with a TTL (the latest step, the total
and an ETA), written at most every `MIN_WRITE_INTERVAL_SECONDS`, and announces each
write on one pub/sub channel for the event streams (`GET /v2/requests/{id}/events`).
The same channel carries a "started" notice, published after the claim's commit.

Progress is advisory: lost writes or messages make it late, never wrong about the
job's state, which PostgreSQL alone decides. Every function here logs and swallows
Redis errors (readers get None): a Redis outage must neither fail a job nor an API call.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import redis

from common import redis_clients

logger = logging.getLogger(__name__)

# One channel for every job, as for job-finished: an API process subscribes once.
PROGRESS_CHANNEL = "ssd_img2img:job-progress"
_KEY_PREFIX = "ssd_img2img:progress:"
# The hash outlives its job only by this much if nobody deletes it (a worker killed
# mid-job); refreshed at every write, so it never expires under a long job.
TTL_SECONDS = 3600
# Throttle of the worker's writes: the UI needs a few updates a second, not one per
# UNet evaluation (small images on a GPU run 20-50 of them per second).
MIN_WRITE_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True)
class Progress:
    """Step `step` of `total` done; `eta_seconds` as estimated at `updated_at` (epoch)."""

    step: int
    total: int
    eta_seconds: float | None
    updated_at: float

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def eta_at(self, now: float) -> float | None:
        """The ETA as of `now`: the estimate minus the time since it was written."""
        if self.eta_seconds is None:
            return None
        return round(max(self.eta_seconds - max(now - self.updated_at, 0.0), 0.0), 2)


@dataclass(frozen=True)
class ProgressNotice:
    """A message on PROGRESS_CHANNEL: a job started (claimed), or made progress."""

    job_id: uuid.UUID
    kind: Literal["started", "progress"]
    progress: Progress | None = None


def key(job_id: uuid.UUID) -> str:
    return f"{_KEY_PREFIX}{job_id}"


def redis_client() -> redis.Redis:
    """Calls between denoising steps (common/redis_clients.py `STEP`)."""
    return redis_clients.shared(redis_clients.STEP)


def estimate_eta(done: int, total: int, elapsed_seconds: float) -> float | None:
    """Seconds left at the average pace so far (None before the first step)."""
    if done <= 0 or total <= 0:
        return None
    return round(elapsed_seconds / done * max(total - done, 0), 2)


def _encode_progress(job_id: uuid.UUID, progress: Progress) -> str:
    return json.dumps(
        {
            "id": str(job_id),
            "kind": "progress",
            "step": progress.step,
            "total": progress.total,
            "eta": progress.eta_seconds,
            "at": progress.updated_at,
        }
    )


def decode(data: str | bytes) -> ProgressNotice | None:
    """The notice in a channel message, or None when the message is not one of ours."""
    try:
        raw = json.loads(data)
        job_id = uuid.UUID(raw["id"])
        if raw["kind"] == "started":
            return ProgressNotice(job_id, "started")
        if raw["kind"] == "progress":
            eta = raw.get("eta")
            progress = Progress(
                step=int(raw["step"]),
                total=int(raw["total"]),
                eta_seconds=None if eta is None else float(eta),
                updated_at=float(raw["at"]),
            )
            return ProgressNotice(job_id, "progress", progress)
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def write(job_id: uuid.UUID, step: int, total: int, eta_seconds: float | None) -> Progress:
    """Store and announce the job's progress (one round trip). Raises on Redis errors:
    the caller (the worker's step monitor) decides how to back off."""
    progress = Progress(step, total, eta_seconds, time.time())
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(
        key(job_id),
        mapping={
            "step": step,
            "total": total,
            "eta": "" if eta_seconds is None else eta_seconds,
            "at": progress.updated_at,
        },
    )
    pipe.expire(key(job_id), TTL_SECONDS)
    pipe.publish(PROGRESS_CHANNEL, _encode_progress(job_id, progress))
    pipe.execute()
    return progress


def read(job_id: uuid.UUID) -> Progress | None:
    """The job's latest progress, or None (no report yet, expired, or Redis down)."""
    try:
        raw = redis_client().hgetall(key(job_id))
    except Exception:
        logger.warning("could not read the progress of job %s", job_id, exc_info=True)
        return None
    if not raw:
        return None
    try:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return Progress(
            step=int(fields["step"]),
            total=int(fields["total"]),
            eta_seconds=float(fields["eta"]) if fields.get("eta") else None,
            updated_at=float(fields["at"]),
        )
    except (KeyError, ValueError, AttributeError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def clear(job_id: uuid.UUID) -> None:
    """Forget the job's progress (it ended). Never raises: the TTL removes it anyway."""
    try:
        redis_client().delete(key(job_id))
    except Exception:
        logger.warning("could not delete the progress of job %s", job_id, exc_info=True)


def publish_started(job_id: uuid.UUID) -> None:
    """Announce that the job is PROCESSING. Call after the claim's commit. Never raises."""
    try:
        redis_client().publish(PROGRESS_CHANNEL, json.dumps({"id": str(job_id), "kind": "started"}))
    except Exception:
        logger.warning("could not publish that job %s started", job_id, exc_info=True)
