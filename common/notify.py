"""Job completion notifications on Redis pub/sub: a hint that a job reached a terminal
state, so API processes holding synchronous (v1) waiters can stop waiting at once.

A notification is only a hint. It is published after the database commit, Redis
pub/sub delivers it at most once (to whoever is subscribed at that instant), and a
failed publish is logged, never raised: readers must always confirm the state in
PostgreSQL, and must not rely on every notification arriving.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

import redis

from common import redis_clients
from common.models import JobStatus

logger = logging.getLogger(__name__)

# One channel for all jobs: an API process subscribes once, whatever the number of
# its waiters, and picks out the ids it waits for.
JOB_EVENTS_CHANNEL = "ssd_img2img:job-finished"


@dataclass(frozen=True)
class JobFinished:
    job_id: uuid.UUID
    status: JobStatus


def encode(event: JobFinished) -> str:
    return json.dumps({"id": str(event.job_id), "status": event.status.value})


def decode(data: str | bytes) -> JobFinished | None:
    """The event in a channel message, or None when the message is not one of ours."""
    try:
        raw = json.loads(data)
        return JobFinished(job_id=uuid.UUID(raw["id"]), status=JobStatus(raw["status"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _redis() -> redis.Redis:
    return redis_clients.shared(redis_clients.NOTICE)


def publish_job_finished(job_id: uuid.UUID, status: JobStatus) -> None:
    """Announce that `job_id` reached the terminal `status`. Call after the commit.

    Never raises: the database already holds the truth, and waiters re-check it.
    """
    try:
        _redis().publish(JOB_EVENTS_CHANNEL, encode(JobFinished(job_id, status)))
    except Exception:
        logger.warning("could not publish that job %s is %s", job_id, status, exc_info=True)
