"""Job state transitions. Each one is a single conditional UPDATE, so two processes
racing on one job (a repeated Celery message, say) can never both win."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from common import credits
from common.models import Job, JobStatus


def get_job(session: Session, job_id: uuid.UUID, account_id: uuid.UUID | None = None) -> Job | None:
    """A job by id; scoped to one account when `account_id` is given (tenant isolation)."""
    query = select(Job).where(Job.id == job_id)
    if account_id is not None:
        query = query.where(Job.account_id == account_id)
    return session.execute(query).scalar_one_or_none()


def queue_position(session: Session, job: Job) -> int | None:
    """Jobs queued before this one, across all tenants (0 = next), or None if not queued.

    Only a count is revealed, never whose jobs they are.
    """
    if job.status != JobStatus.QUEUED:
        return None
    return session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED, Job.created_at < job.created_at)
    ).scalar_one()


def claim(session: Session, job_id: uuid.UUID) -> Job | None:
    """QUEUED -> PROCESSING. None when the job is already claimed, terminal or unknown."""
    return session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.PROCESSING,
            started_at=func.now(),
            attempts=Job.attempts + 1,
        )
        .returning(Job)
    ).scalar_one_or_none()


def complete(
    session: Session, job_id: uuid.UUID, output_keys: list[str], metrics: dict[str, Any]
) -> bool:
    """PROCESSING -> COMPLETED; False if the job was no longer ours to finish."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.PROCESSING)
        .values(
            status=JobStatus.COMPLETED,
            output_keys=output_keys,
            metrics=metrics,
            finished_at=func.now(),
            error=None,
        )
        .returning(Job.id)
    ).scalar_one_or_none()
    return result is not None


def fail(
    session: Session, job_id: uuid.UUID, error: str, metrics: dict[str, Any] | None = None
) -> bool:
    """Any non-terminal state -> FAILED, refunding the job's credits exactly once."""
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.PROCESSING]))
        .values(
            status=JobStatus.FAILED,
            error=error[:2000],
            finished_at=func.now(),
            metrics=metrics or {},
        )
        .returning(Job)
    ).scalar_one_or_none()
    if job is None:
        return False
    credits.refund_job(session, job)
    return True


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def utcnow() -> datetime:
    return datetime.now(UTC)


def list_jobs(
    session: Session,
    account_id: uuid.UUID,
    *,
    limit: int,
    status: JobStatus | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[Job]:
    """One account's jobs, newest first, strictly after the keyset `before` if given.

    Keyset pagination on (created_at, id): stable under concurrent inserts, and served
    by the (account_id, created_at) index whatever the page.
    """
    query = select(Job).where(Job.account_id == account_id)
    if status is not None:
        query = query.where(Job.status == status)
    if before is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*before))
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.execute(query).scalars())
