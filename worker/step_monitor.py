"""What the worker does between two denoising steps of a job: check whether the job was
cancelled, and report its progress.

Two halves, so that the denoising thread never waits on the network:

- `StepMonitor.__call__(done, total)`, the step callback, on the denoising thread
  (hundreds of times per job, on the GPU's critical path): in-memory work only. It
  raises `JobCancelled` once a cancel request was seen, `LeaseLost` once the lease
  heartbeat found the lease taken back, and leaves the step it reached for the watcher.
- `StepMonitor.poll()`, on the `StepWatcher` thread that runs beside each pipeline call
  (every `CANCEL_FLAG_CHECK_SECONDS`, and at once after a step): the Redis cancel flag
  (every `CANCEL_FLAG_CHECK_SECONDS`), the database's cancel request (every
  `CANCEL_DB_CHECK_SECONDS`, in case the flag was lost), the progress report to Redis (at
  most every `progress.MIN_WRITE_INTERVAL_SECONDS`, the first and the last step always)
  and the job.progress webhooks (throttled per job by the webhooks module). While
  Redis or PostgreSQL is down these wait on their timeouts there, not in a step.

A cancel is thus seen by the step after the watcher read it: within a step, or 50 ms on
small fast ones.
"""

from __future__ import annotations

import logging
import threading
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
# How often the watcher reads the Redis cancel flag (and so how late a cancel can be
# seen on a fast model); on a full-size model that is every step or two.
CANCEL_FLAG_CHECK_SECONDS = 0.05
# After a Redis error, leave Redis alone this long: a down Redis must not add a
# timeout to every poll of the job.
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
    """One job's step callback (`__call__`, no I/O) and its watcher's work (`poll`)."""

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
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        # The latest step not reported yet, with the time it was reached.
        self._pending: tuple[int, int, float] | None = None
        self._first_step: tuple[int, float] | None = None
        self._last_write: float | None = None
        self._last_db_check = self._started
        self._flag_check_seconds = cancel_flag_check_seconds
        self._last_flag_check: float | None = None
        self._db_check_seconds = cancel_db_check_seconds
        self._redis_retry_at = 0.0

    # -- the denoising thread: memory only -------------------------------------------

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if self._lease_lost():
            raise LeaseLost(self.job_id, done, total)
        if self._cancelled.is_set():
            raise JobCancelled(self.job_id, done, total)
        with self._lock:
            if self._first_step is None:
                self._first_step = (done, now)
            self._pending = (done, total, now)

    # -- the watcher thread: Redis and PostgreSQL --------------------------------------

    def poll(self) -> None:
        """Look for a cancel request, and report the latest step reached. Never raises."""
        now = self._clock()
        if not self._cancelled.is_set() and self._cancel_requested(now):
            self._cancelled.set()
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        done, total, reached = pending
        if self._redis_usable(now) and self._write_due(done, total, reached):
            try:
                progress.write(self.job_id, done, total, self._eta(done, total, reached))
                self._last_write = reached
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


class StepWatcher:
    """The thread beside one pipeline call: polls the monitors of its live members
    every `CANCEL_FLAG_CHECK_SECONDS` and at once after each step (`step_taken`), and
    runs the work the denoising thread hands it (`later`: recording a cancelled
    member). `stop()` polls a last time and runs what is left."""

    def __init__(
        self,
        monitors: Callable[[], list[StepMonitor]],
        interval: float = CANCEL_FLAG_CHECK_SECONDS,
    ) -> None:
        self._monitors = monitors
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._later: list[Callable[[], Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="step-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def step_taken(self) -> None:
        self._wake.set()

    def later(self, work: Callable[[], Any]) -> None:
        with self._lock:
            self._later.append(work)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._round()
        self._round()  # what the last steps left

    def _round(self) -> None:
        with self._lock:
            work, self._later = self._later, []
        for item in work:
            try:
                item()
            except Exception:
                logger.exception("step watcher: deferred work failed")
        for monitor in self._monitors():
            monitor.poll()


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
