"""The lease heartbeat: a thread that renews the worker's lease on the jobs it runs (one
job, or the jobs of a batch) every LEASE_SECONDS / 3, so the reconciler leaves them
alone.

A thread rather than renewals between denoising steps: the upload, a slow first step
or a long VAE decode must not let the lease run out, and torch releases the GIL while
it computes, so the thread gets to run. Missing one renewal (a database blip) is
harmless: two more fit in the lease.

The thread cannot tell a long job from a hung one (a stuck CUDA call, a deadlock), so
it renews for at most `max_seconds` (BROKER_VISIBILITY_TIMEOUT_SECONDS, the longest a
job may run): then it lets the leases expire and the reconciler takes the jobs back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from types import TracebackType

from common import leases
from common.db import autocommit_session

logger = logging.getLogger(__name__)


class LeaseHeartbeat:
    """`with LeaseHeartbeat(job_ids, owner, lease_seconds, period):` renews while inside."""

    def __init__(
        self,
        job_ids: Iterable[uuid.UUID],
        owner: str,
        lease_seconds: float,
        period: float,
        max_seconds: float | None = None,
    ) -> None:
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.period = period
        self.max_seconds = max_seconds
        self._held = set(job_ids)  # renewed at each period
        self._lost: set[uuid.UUID] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{owner}", daemon=True)

    def lost(self, job_id: uuid.UUID) -> bool:
        """True once a renewal found `job_id`'s lease taken back: its result will be refused."""
        with self._guard:
            return job_id in self._lost

    def release(self, job_id: uuid.UUID) -> None:
        """Stop renewing `job_id` (it ended while the others of its batch go on)."""
        with self._guard:
            self._held.discard(job_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing; returns once the thread has ended."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> LeaseHeartbeat:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _mark_lost(self, job_ids: Iterable[uuid.UUID]) -> None:
        with self._guard:
            self._lost.update(job_ids)
            self._held.difference_update(job_ids)

    def _run(self) -> None:
        deadline = None if self.max_seconds is None else time.monotonic() + self.max_seconds
        while not self._stop.wait(self.period):
            with self._guard:
                held = set(self._held)
            if not held:
                continue
            if deadline is not None and time.monotonic() > deadline:
                logger.error(
                    "jobs %s have run for over %.0fs: no more lease renewals, they will be "
                    "taken back and run again elsewhere (or failed after their last attempt)",
                    sorted(map(str, held)),
                    self.max_seconds,
                )
                # Once the leases have run out the jobs are no longer ours: say so, so
                # that jobs merely slow (not hung) stop at their next step.
                if not self._stop.wait(self.lease_seconds):
                    self._mark_lost(held)
                return
            try:
                # One UPDATE: its own transaction, one round trip instead of three.
                with autocommit_session() as session:
                    still = leases.renew_all(session, held, self.owner, self.lease_seconds)
            except Exception:
                # The database is unreachable for now: the next period tries again.
                logger.warning("could not renew the leases of %s", self.owner, exc_info=True)
                continue
            with self._guard:  # a job released meanwhile ended: not lost
                gone = (held - still) & self._held
            if gone:
                logger.warning(
                    "the lease on jobs %s was taken back; their results will not be recorded",
                    sorted(map(str, gone)),
                )
                self._mark_lost(gone)
