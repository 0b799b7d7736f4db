"""The lease heartbeat: a thread that renews the worker's lease on its job while the
job runs (every LEASE_SECONDS / 3), so the reconciler leaves the job alone.

A thread rather than renewals between denoising steps: the upload, a slow first step
or a long VAE decode must not let the lease run out, and torch releases the GIL while
it computes, so the thread gets to run. Missing one renewal (a database blip) is
harmless: two more fit in the lease.

The thread cannot tell a long job from a hung one (a stuck CUDA call, a deadlock), so
it renews for at most `max_seconds` (BROKER_VISIBILITY_TIMEOUT_SECONDS, the longest a
job may run): then it lets the lease expire and the reconciler takes the job back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import TracebackType

from common import leases
from common.db import session_scope

logger = logging.getLogger(__name__)


class LeaseHeartbeat:
    """`with LeaseHeartbeat(job_id, owner, lease_seconds, period):` renews while inside."""

    def __init__(
        self,
        job_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        period: float,
        max_seconds: float | None = None,
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.period = period
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease taken back: the result will be refused."""
        return self._lost.is_set()

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        deadline = None if self.max_seconds is None else time.monotonic() + self.max_seconds
        while not self._stop.wait(self.period):
            if deadline is not None and time.monotonic() > deadline:
                logger.error(
                    "job %s has run for over %.0fs: no more lease renewals, it will be "
                    "taken back and run again elsewhere (or failed after its last attempt)",
                    self.job_id,
                    self.max_seconds,
                )
                # Once the lease has run out the job is no longer ours: say so, so that
                # a job merely slow (not hung) stops at its next step.
                if not self._stop.wait(self.lease_seconds):
                    self._lost.set()
                return
            try:
                with session_scope() as session:
                    held = leases.renew(session, self.job_id, self.owner, self.lease_seconds)
            except Exception:
                # The database is unreachable for now: the next period tries again.
                logger.warning("could not renew the lease on job %s", self.job_id, exc_info=True)
                continue
            if not held:
                logger.warning(
                    "the lease on job %s was taken back; its result will not be recorded",
                    self.job_id,
                )
                self._lost.set()
                return
