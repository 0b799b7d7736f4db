"""Cancellation requests of running jobs, as Redis flags the worker checks every step.

The request itself is recorded in PostgreSQL (`jobs.cancel_requested_at`, the source of
truth); the flag only makes the worker see it within one denoising step at the cost of
one Redis round trip per step. Should the flag be lost (Redis restarted, the SET
failed), the worker still finds the column at its coarser database check.
"""

from __future__ import annotations

import logging
import uuid

from common.progress import redis_client

logger = logging.getLogger(__name__)

_KEY_PREFIX = "ssd_img2img:cancel:"
# Longer than any job runs; the flag of a job that ended is deleted by the worker.
TTL_SECONDS = 24 * 3600


def key(job_id: uuid.UUID) -> str:
    return f"{_KEY_PREFIX}{job_id}"


def raise_flag(job_id: uuid.UUID) -> None:
    """Tell the worker running `job_id` to stop. Call after the request's commit.
    Never raises: the database column already records the request."""
    try:
        redis_client().set(key(job_id), "1", ex=TTL_SECONDS)
    except Exception:
        logger.warning("could not flag job %s for cancellation", job_id, exc_info=True)


def is_raised(job_id: uuid.UUID) -> bool:
    """Whether cancellation was flagged. Raises on Redis errors (the caller backs off)."""
    return bool(redis_client().exists(key(job_id)))


def clear(job_id: uuid.UUID) -> None:
    try:
        redis_client().delete(key(job_id))
    except Exception:
        logger.warning("could not delete the cancel flag of job %s", job_id, exc_info=True)
