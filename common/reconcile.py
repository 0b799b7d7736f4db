"""The reconciler: takes back the jobs of workers that died.

- A PROCESSING job whose lease expired lost its worker (killed, out of memory, machine
  gone): it goes back to QUEUED, first in its account's line, and the GPU workers are
  woken, unless it has had MAX_ATTEMPTS claims already; then it ends FAILED and is
  refunded (a job that kills every worker that runs it must not loop forever). If its
  client asked to cancel it meanwhile, it ends CANCELLED (refunded) instead.
- A QUEUED job waiting REDISPATCH_AFTER_SECONDS unclaimed gets a wake-up for its pool
  (each one doubles the wait, up to 16×). Workers claim from PostgreSQL and poll it
  when idle, so no job depends on a message; this only nudges pools whose workers all
  sleep longer than expected. `--every-queued` wakes them for every QUEUED job at once.

Safe with several replicas running it at once (every CPU worker's beat does, and the
CLI may too): the rows are picked with `FOR UPDATE SKIP LOCKED` and changed in the
transaction that holds their locks; wake-ups and notices leave after its commit.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from common import jobs, tasks
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Re-sends of a QUEUED job wait REDISPATCH_AFTER_SECONDS × 2^n, n at most this.
MAX_BACKOFF_DOUBLINGS = 4
BATCH = 500  # rows of each kind per run; a larger backlog is worked off over the next runs


@dataclass
class ReconcileReport:
    requeued: list[uuid.UUID] = field(default_factory=list)  # lease expired, sent again
    failed: list[uuid.UUID] = field(default_factory=list)  # lease expired, out of attempts
    cancelled: list[uuid.UUID] = field(default_factory=list)  # lease expired, cancel asked
    redispatched: list[uuid.UUID] = field(default_factory=list)  # QUEUED, pool woken again

    def as_dict(self) -> dict[str, object]:
        return {
            "requeued": [str(i) for i in self.requeued],
            "failed": [str(i) for i in self.failed],
            "cancelled": [str(i) for i in self.cancelled],
            "redispatched": [str(i) for i in self.redispatched],
        }

    @property
    def changed(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.redispatched)


def lease_expiry(settings: Settings) -> ColumnElement[Any]:
    """When a PROCESSING job's lease ends. A job claimed without a lease (by a worker of a
    version before leases, during a rolling deploy) counts as leased for the broker's
    visibility timeout, which is meant to exceed the longest job."""
    unleased = Job.started_at + timedelta(seconds=settings.broker_visibility_timeout_seconds)
    return func.coalesce(Job.lease_expires_at, unleased)


def _give_up_message(attempts: int) -> str:
    return (
        f"the worker running this job stopped responding (its lease expired) on each of "
        f"{attempts} attempts; giving up"
    )


def take_back_expired(
    session: Session, settings: Settings, report: ReconcileReport, limit: int = BATCH
) -> None:
    """PROCESSING jobs with an expired lease → QUEUED again, or FAILED/CANCELLED."""
    expiry = lease_expiry(settings)
    rows = session.execute(
        select(Job.id, Job.attempts, Job.cancel_requested_at, Job.queue)
        .where(Job.status == JobStatus.PROCESSING, expiry < func.now())
        .order_by(expiry)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    requeue = []
    pools: Counter[str] = Counter()
    for job_id, attempts, cancel_requested_at, queue in rows:
        if cancel_requested_at is not None:
            if jobs.finish_cancelled(session, job_id, {"attempts": attempts}) is not None:
                report.cancelled.append(job_id)
        elif attempts >= settings.max_attempts:
            if jobs.fail(session, job_id, _give_up_message(attempts)):
                report.failed.append(job_id)
        else:
            requeue.append(job_id)
            pools[queue] += 1
    if requeue:
        requeued = session.execute(
            update(Job)
            .where(Job.id.in_(requeue), jobs.in_state(JobStatus.PROCESSING))
            .values(
                status=JobStatus.QUEUED,
                lease_owner=None,
                lease_expires_at=None,
                dispatched_at=func.now(),
                dispatch_count=Job.dispatch_count + 1,
            )
            .returning(Job.id, Job.account_id)
        ).all()
        for job_id, account_id in requeued:
            jobs.log_transition(
                session,
                (job_id, account_id),
                JobStatus.QUEUED,
                JobStatus.PROCESSING,
                reason="lease expired",
            )
        report.requeued.extend(requeue)
        _wake(session, pools)


def redispatch_lost(
    session: Session,
    settings: Settings,
    report: ReconcileReport,
    limit: int = BATCH,
    every_queued: bool = False,
) -> None:
    """QUEUED jobs sent long enough ago and still not claimed (`every_queued`: all of
    them, e.g. right after a known loss of Redis's data): mark them sent again."""
    last_sent = func.coalesce(Job.dispatched_at, Job.created_at)
    wait_seconds = settings.redispatch_after_seconds * func.power(
        2, func.least(Job.dispatch_count, MAX_BACKOFF_DOUBLINGS)
    )
    overdue = last_sent < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, wait_seconds)
    due = [] if every_queued else [overdue]
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(Job.status == JobStatus.QUEUED, *due)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    ids = [job_id for job_id, _ in rows]
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), jobs.in_state(JobStatus.QUEUED))
            .values(dispatched_at=func.now(), dispatch_count=Job.dispatch_count + 1)
        )
        report.redispatched.extend(ids)
        _wake(session, Counter(queue for _, queue in rows))


def _wake(session: Session, pools: Counter[str]) -> None:
    """Wake each pool's workers, for as many jobs, once the transaction commits."""
    for queue, count in pools.items():
        tasks.wake_after_commit(session, queue, count)


def reconcile(
    settings: Settings | None = None,
    *,
    limit: int = BATCH,
    every_queued: bool = False,
) -> ReconcileReport:
    """One pass, in one transaction; its wake-ups and job-finished notices leave after
    the commit (common/after_commit.py). `every_queued` wakes the pools for every QUEUED
    job (up to `limit`), due or not: for an operator who knows Redis lost its data."""
    settings = settings or get_settings()
    report = ReconcileReport()
    with session_scope() as session:
        take_back_expired(session, settings, report, limit)
        redispatch_lost(session, settings, report, limit, every_queued)
    if report.changed:
        logger.info(
            "reconciled: %d requeued, %d failed, %d cancelled, %d woken again",
            len(report.requeued),
            len(report.failed),
            len(report.cancelled),
            len(report.redispatched),
        )
    return report
