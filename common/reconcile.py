"""The reconciler: makes the queue (Redis, which may lose or repeat messages) agree with
PostgreSQL (the truth) again after a fault.

- A PROCESSING job whose lease expired lost its worker (killed, out of memory, machine
  gone): it goes back to QUEUED and is sent again, unless it has had MAX_ATTEMPTS claims
  already; then it ends FAILED and is refunded (a job that kills every worker that runs
  it must not loop forever). If its client asked to cancel it meanwhile, it ends
  CANCELLED (refunded) instead of running again.
- A QUEUED job whose message was sent REDISPATCH_AFTER_SECONDS ago and is still not
  claimed may have lost its message (Redis restarted without persistence, flushed, a
  failover, an API that could not reach Redis): it is sent again. Every re-send doubles
  the wait (up to 16×), so a long but healthy queue is not flooded with duplicates; a
  duplicate is harmless anyway, since only the first claim of a QUEUED job wins.

Safe with several replicas running it at once (every CPU worker's beat does, and the
CLI may too): the rows are picked with `FOR UPDATE SKIP LOCKED` and changed in the
transaction that holds their locks, and messages are sent only after that commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from common import jobs, notify
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import Settings, get_settings
from common.tasks import enqueue_job

logger = logging.getLogger(__name__)

# Re-sends of a QUEUED job wait REDISPATCH_AFTER_SECONDS × 2^n, n at most this.
MAX_BACKOFF_DOUBLINGS = 4
BATCH = 500  # rows of each kind per run; a larger backlog is worked off over the next runs


@dataclass
class ReconcileReport:
    requeued: list[uuid.UUID] = field(default_factory=list)  # lease expired, sent again
    failed: list[uuid.UUID] = field(default_factory=list)  # lease expired, out of attempts
    cancelled: list[uuid.UUID] = field(default_factory=list)  # lease expired, cancel asked
    redispatched: list[uuid.UUID] = field(default_factory=list)  # QUEUED, message re-sent
    send_errors: int = 0  # messages that could not be sent (the next run sends them)

    def as_dict(self) -> dict[str, object]:
        return {
            "requeued": [str(i) for i in self.requeued],
            "failed": [str(i) for i in self.failed],
            "cancelled": [str(i) for i in self.cancelled],
            "redispatched": [str(i) for i in self.redispatched],
            "send_errors": self.send_errors,
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
        select(Job.id, Job.attempts, Job.cancel_requested_at)
        .where(Job.status == JobStatus.PROCESSING, expiry < func.now())
        .order_by(expiry)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    requeue = []
    for job_id, attempts, cancel_requested_at in rows:
        if cancel_requested_at is not None:
            if jobs.finish_cancelled(session, job_id, {"attempts": attempts}) is not None:
                report.cancelled.append(job_id)
        elif attempts >= settings.max_attempts:
            if jobs.fail(session, job_id, _give_up_message(attempts)):
                report.failed.append(job_id)
        else:
            requeue.append(job_id)
    if requeue:
        session.execute(
            update(Job)
            .where(Job.id.in_(requeue), Job.status == JobStatus.PROCESSING)
            .values(
                status=JobStatus.QUEUED,
                lease_owner=None,
                lease_expires_at=None,
                dispatched_at=func.now(),
                dispatch_count=Job.dispatch_count + 1,
            )
        )
        report.requeued.extend(requeue)


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
    ids = list(
        session.execute(
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, *due)
            .order_by(Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.QUEUED)
            .values(dispatched_at=func.now(), dispatch_count=Job.dispatch_count + 1)
        )
        report.redispatched.extend(ids)


def reconcile(
    settings: Settings | None = None,
    *,
    send: Callable[[str], None] = enqueue_job,
    limit: int = BATCH,
    every_queued: bool = False,
) -> ReconcileReport:
    """One pass: change the rows in one transaction, then (after its commit) send the
    messages and the job-finished notifications. `every_queued` re-sends every QUEUED
    job (up to `limit`), due or not: for an operator who knows Redis lost its data."""
    settings = settings or get_settings()
    report = ReconcileReport()
    with session_scope() as session:
        take_back_expired(session, settings, report, limit)
        redispatch_lost(session, settings, report, limit, every_queued)
    for job_id in report.requeued + report.redispatched:
        try:
            send(str(job_id))
        except Exception:
            # Still QUEUED with a fresh dispatched_at: a later run sends it again.
            report.send_errors += 1
            logger.warning("could not send job %s again", job_id, exc_info=True)
    for job_id in report.failed:
        notify.publish_job_finished(job_id, JobStatus.FAILED)
    for job_id in report.cancelled:
        notify.publish_job_finished(job_id, JobStatus.CANCELLED)
    if report.changed:
        logger.info(
            "reconciled: %d requeued, %d failed, %d cancelled, %d re-sent, %d send errors",
            len(report.requeued),
            len(report.failed),
            len(report.cancelled),
            len(report.redispatched),
            report.send_errors,
        )
    return report
