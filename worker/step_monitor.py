"""What the worker does between two denoising steps of a job: check whether the job was
cancelled, and report its progress. It runs on the GPU's critical path (hundreds of
times per job), so it costs at most one Redis round trip per step (the cancel flag, read
at most every `CANCEL_FLAG_CHECK_SECONDS`), writes progress to
Redis at most every `progress.MIN_WRITE_INTERVAL_SECONDS`, and touches PostgreSQL only
every `CANCEL_DB_CHECK_SECONDS` (a cancel check) and every
WEBHOOK_PROGRESS_INTERVAL_SECONDS (a short transaction reading the job, and inserting
job.progress deliveries when some target asked for them): never once per step. While
PostgreSQL is down those two cost a step up to the connect timeout each.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from common import cancel_flags, jobs, progress
from common.db import session_scope
from common.webhooks.events import maybe_record_progress_event

logger = logging.getLogger(__name__)

# The database holds cancel requests for sure; the Redis flag only makes them fast. So
# the database is asked too, now and then, in case the flag was lost.
CANCEL_DB_CHECK_SECONDS = 5.0
# The Redis cancel flag is read at a step only if this long has passed since it was
# last read: every step of a full-size model (tens of milliseconds each on a GPU), not
# every step of a small fast one, where the round trip was measured at 3-4 % of the
# worker's time (docs/performance.md, "Service path").
CANCEL_FLAG_CHECK_SECONDS = 0.05
# After a Redis error, leave Redis alone this long: a down Redis must not add a
# timeout to every step of the job.
REDIS_BACKOFF_SECONDS = 5.0


class JobCancelled(Exception):
    """Raised from the step callback when the job's cancellation was requested: it
    leaves the pipeline at once, with no VAE decode (worker/pipeline.py)."""

    def __init__(self, job_id: uuid.UUID, done: int, total: int) -> None:
        super().__init__(f"job {job_id} cancelled after step {done} of {total}")
        self.done = done
        self.total = total


class LeaseLost(Exception):
    """Raised from the step callback once the worker's lease on the job was taken back
    (the reconciler gave the job to another worker): its result would be refused, so
    the GPU stops at once instead of finishing work nobody will record."""

    def __init__(self, job_id: uuid.UUID, done: int, total: int) -> None:
        super().__init__(f"job {job_id}: lease lost after step {done} of {total}; stopped")


class StepMonitor:
    """The `on_step(done, total)` callback of one job's `generate()`."""

    def __init__(
        self,
        job_id: uuid.UUID,
        *,
        clock: Callable[[], float] = time.monotonic,
        cancel_db_check_seconds: float = CANCEL_DB_CHECK_SECONDS,
        cancel_flag_check_seconds: float = CANCEL_FLAG_CHECK_SECONDS,
        lease_lost: Callable[[], bool] = lambda: False,
    ) -> None:
        self.job_id = job_id
        self._lease_lost = lease_lost
        self._clock = clock
        self._started = clock()
        self._first_step: tuple[int, float] | None = None
        self._last_write: float | None = None
        self._last_db_check = self._started
        self._flag_check_seconds = cancel_flag_check_seconds
        self._last_flag_check: float | None = None
        self._db_check_seconds = cancel_db_check_seconds
        self._redis_retry_at = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._lease_lost():
            raise LeaseLost(self.job_id, done, total)
        if self._cancel_requested(now):
            raise JobCancelled(self.job_id, done, total)
        if self._first_step is None:
            self._first_step = (done, now)
        if self._redis_usable(now) and self._write_due(done, total, now):
            try:
                progress.write(self.job_id, done, total, self._eta(done, total, now))
                self._last_write = now
            except Exception:
                self._redis_failed(now, "report progress")
        # job.progress webhooks: throttled per job by the webhooks module; never raises.
        maybe_record_progress_event(self.job_id, done, total)

    def _write_due(self, done: int, total: int, now: float) -> bool:
        # The first and the last step always: a client sees the run start and end.
        return (
            self._last_write is None
            or done >= total
            or now - self._last_write >= progress.MIN_WRITE_INTERVAL_SECONDS
        )

    def _eta(self, done: int, total: int, now: float) -> float | None:
        # The pace since the first step: the time before it (prompt encoding, the
        # VAE encode) does not recur, so counting it would overestimate what is left.
        assert self._first_step is not None
        first_done, first_at = self._first_step
        if done > first_done:
            return progress.estimate_eta(done - first_done, total - first_done, now - first_at)
        return progress.estimate_eta(done, total, now - self._started)

    def _cancel_requested(self, now: float) -> bool:
        if self._redis_usable(now) and self._flag_check_due(now):
            self._last_flag_check = now
            try:
                if cancel_flags.is_raised(self.job_id):
                    return True
            except Exception:
                self._redis_failed(now, "check the cancel flag")
        if now - self._last_db_check >= self._db_check_seconds:
            self._last_db_check = now
            try:
                with session_scope() as session:
                    return jobs.cancel_requested(session, self.job_id)
            except Exception:
                logger.warning("job %s: could not read its cancel request", self.job_id)
        return False

    def _flag_check_due(self, now: float) -> bool:
        last = self._last_flag_check
        return last is None or now - last >= self._flag_check_seconds

    def _redis_usable(self, now: float) -> bool:
        return now >= self._redis_retry_at

    def _redis_failed(self, now: float, what: str) -> None:
        self._redis_retry_at = now + REDIS_BACKOFF_SECONDS
        logger.warning(
            "job %s: could not %s in Redis; leaving Redis alone for %.0fs",
            self.job_id,
            what,
            REDIS_BACKOFF_SECONDS,
            exc_info=True,
        )


def record_cancelled(
    job_id: uuid.UUID, metrics: dict[str, Any], lease_owner: str | None = None
) -> bool:
    """PROCESSING -> CANCELLED with the refund, the job.completed webhooks and, after the
    commit, the job-finished notice (common.jobs.finish_cancelled). True if this call
    made the transition; it happens once, whoever calls it again. With `lease_owner`:
    only while that worker still holds the job."""
    with session_scope() as session:
        job = jobs.finish_cancelled(session, job_id, metrics, lease_owner=lease_owner)
    if job is None:
        logger.warning("job %s was no longer PROCESSING; cancellation not recorded", job_id)
        return False
    return True
