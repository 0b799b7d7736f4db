"""Job state transitions. Each one is a single conditional UPDATE, so two processes
racing on one job (two workers, a worker and the reconciler) can never both win.

Each transition also registers what must follow its commit (common/after_commit.py):
the job-finished notice for v1 waiters and event streams, the cancel flag, the
progress cleanup, and (through record_job_event) its webhook deliveries. Nothing is
sent if the transaction rolls back; callers never send these by hand."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, String, func, select, tuple_, type_coerce, update
from sqlalchemy.orm import Session

from common import cancel_flags, credits, notify, progress
from common.after_commit import after_commit
from common.models import TERMINAL_STATUSES, Job, JobStatus
from common.refusals import Conflict, NotFound
from common.webhooks.events import account_listens, record_job_event


def in_state(*statuses: JobStatus) -> ColumnElement[bool]:
    """The condition of a transition of jobs named by id: the job is in one of
    `statuses`.

    Compared as `status || ''` on purpose, so that PostgreSQL cannot answer it from an
    index on status and always finds the rows by primary key. With a plain `status =
    'PROCESSING'`, the planner takes an index on status (the (status, created_at) one, or
    the in-flight partial index) whenever its statistics saw few jobs in that state (a
    fleet idle at the last ANALYZE), and walks every entry that went through PROCESSING
    since the last vacuum: 140–200 buffers per lease renewal and completion under load
    instead of about 6 (docs/scheduling.md "Scale"; tests/test_transitions_db.py)."""
    return (type_coerce(Job.status, String) + "").in_([status.value for status in statuses])


def get_job(session: Session, job_id: uuid.UUID, account_id: uuid.UUID | None = None) -> Job | None:
    """A job by id; scoped to one account when `account_id` is given (tenant isolation)."""
    query = select(Job).where(Job.id == job_id)
    if account_id is not None:
        query = query.where(Job.account_id == account_id)
    return session.execute(query).scalar_one_or_none()


def by_idempotency_key(session: Session, account_id: uuid.UUID, key: str) -> Job | None:
    """The account's job submitted with this Idempotency-Key, if any."""
    return session.execute(
        select(Job).where(Job.account_id == account_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


def statuses(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobStatus]:
    """The status of each of `job_ids` that exists: one query, whatever their number."""
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
    return {job_id: status for job_id, status in rows}


def terminal_among(session: Session, job_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `job_ids` are in a terminal state: one query, whatever their number."""
    rows = session.execute(
        select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_STATUSES))
    )
    return set(rows.scalars())


_transitions = logging.getLogger("jobs")


def log_transition(
    session: Session,
    job: Job | tuple[uuid.UUID, uuid.UUID],
    to_status: JobStatus,
    from_status: JobStatus | None,
    **fields: str,
) -> None:
    """One log line per job transition, once committed (never for a rolled-back one).
    `job`: the row, or its (id, account_id)."""
    job_id, account_id = (job.id, job.account_id) if isinstance(job, Job) else job
    line = {
        "event": "job_transition",
        "job_id": str(job_id),
        "account_id": str(account_id),
        "from_status": from_status.value if from_status is not None else None,
        "to_status": to_status.value,
        **fields,
    }
    message = f"job {job_id}: {line['from_status'] or 'new'} -> {to_status.value}"
    after_commit(session, partial(_transitions.info, message, extra=line))


def claim(
    session: Session,
    job_id: uuid.UUID,
    lease_owner: str | None = None,
    lease_seconds: float = 60,
) -> Job | None:
    """QUEUED -> PROCESSING for one named job. None when the job is already claimed,
    terminal or unknown. Workers do not name jobs: they claim the scheduler's choice
    (common.scheduler.claim_next); this is for tests and tools."""
    started = start(session, [job_id], lease_owner, lease_seconds)
    return started[0] if started else None


def start(
    session: Session,
    job_ids: Sequence[uuid.UUID],
    lease_owner: str | None = None,
    lease_seconds: float = 60,
) -> list[Job]:
    """QUEUED -> PROCESSING for those of `job_ids` still QUEUED; returns them.

    With `lease_owner`, they are leased to it for `lease_seconds` (renewed by
    common.leases.renew); only the lease's owner may then record their results.
    """
    if not job_ids:
        return []
    lease: dict[str, Any] = {}
    if lease_owner is not None:
        lease = {
            "lease_owner": lease_owner,
            "lease_expires_at": func.now() + timedelta(seconds=lease_seconds),
        }
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), in_state(JobStatus.QUEUED))
        .values(
            status=JobStatus.PROCESSING,
            started_at=func.now(),
            attempts=Job.attempts + 1,
            **lease,
        )
        .returning(Job, account_listens()),
        execution_options={"synchronize_session": False},
    ).all()
    started = [job for job, _ in rows]
    for job, listens in rows:
        worker = {"worker": lease_owner} if lease_owner is not None else {}
        log_transition(session, job, JobStatus.PROCESSING, JobStatus.QUEUED, **worker)
        # job.started webhooks (an outbox)
        record_job_event(session, job, "started", account_listens=listens)
        # An earlier attempt's steps must not show as this one's; event streams learn
        # the job is PROCESSING.
        after_commit(session, partial(progress.clear, job.id))
        after_commit(session, partial(progress.publish_started, job.id))
    return started


def _held_by(lease_owner: str | None) -> list[Any]:
    """The job is PROCESSING and, with `lease_owner`, still held by it: the conditions
    of a write that only the job's current lease owner may make."""
    if lease_owner is None:
        return [in_state(JobStatus.PROCESSING)]
    return [in_state(JobStatus.PROCESSING), Job.lease_owner == lease_owner]


def complete(
    session: Session,
    job_id: uuid.UUID,
    output_keys: list[str],
    metrics: dict[str, Any],
    lease_owner: str | None = None,
) -> bool:
    """PROCESSING -> COMPLETED; False if the job was no longer ours to finish (with
    `lease_owner`: if that worker's lease was taken back meanwhile)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, *_held_by(lease_owner))
        .values(
            status=JobStatus.COMPLETED,
            output_keys=output_keys,
            metrics=metrics,
            finished_at=func.now(),
            error=None,
        )
        .returning(Job, account_listens())
    ).one_or_none()
    if row is None:
        return False
    job, listens = row
    worker = {"worker": lease_owner} if lease_owner is not None else {}
    log_transition(session, job, JobStatus.COMPLETED, JobStatus.PROCESSING, **worker)
    record_job_event(session, job, "completed", account_listens=listens)  # job.completed
    _announce_end(session, job)
    return True


def fail(
    session: Session,
    job_id: uuid.UUID,
    error: str,
    metrics: dict[str, Any] | None = None,
    lease_owner: str | None = None,
) -> bool:
    """Any non-terminal state -> FAILED, refunding the job's credits exactly once.

    A worker passes its `lease_owner`: it may fail only the job it still holds.
    """
    # Without an owner (an operator, the reconciler): any non-terminal state.
    failable = (
        _held_by(lease_owner)
        if lease_owner is not None
        else [in_state(JobStatus.QUEUED, JobStatus.PROCESSING)]
    )
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, *failable)
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
    log_transition(session, job, JobStatus.FAILED, None, error=error[:200])
    _ended_refunded(session, job)
    return True


def cancel_queued(session: Session, job_id: uuid.UUID, account_id: uuid.UUID) -> Job | None:
    """QUEUED -> CANCELLED at once, refunding the job exactly once. None when the job is
    not the account's or not QUEUED. The worker's claim takes only QUEUED jobs, so the
    job's message, when it comes, is dropped: a cancelled job never runs."""
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.account_id == account_id, in_state(JobStatus.QUEUED))
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested_at=func.now(),
            finished_at=func.now(),
        )
        .returning(Job)
    ).scalar_one_or_none()
    if job is not None:
        log_transition(session, job, JobStatus.CANCELLED, JobStatus.QUEUED)
        _ended_refunded(session, job)
    return job


def request_cancel(session: Session, job_id: uuid.UUID, account_id: uuid.UUID) -> Job | None:
    """Mark a PROCESSING job for cancellation; its worker stops it between two steps
    (`finish_cancelled`). None when the job is not the account's or not PROCESSING.
    Repeating it is harmless: the first request's time stays."""
    job = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.account_id == account_id, in_state(JobStatus.PROCESSING))
        .values(cancel_requested_at=func.coalesce(Job.cancel_requested_at, func.now()))
        .returning(Job)
    ).scalar_one_or_none()
    if job is not None:  # the worker checks the flag at every step
        after_commit(session, partial(cancel_flags.raise_flag, job.id))
    return job


# Rounds of "cancel if QUEUED, else flag if PROCESSING" in `cancel`; a job changes state
# at most a few times a second, so a third round finding neither is all but impossible.
_CANCEL_ROUNDS = 3


def cancel(session: Session, job_id: uuid.UUID, account_id: uuid.UUID) -> tuple[Job, bool]:
    """Cancel one of the account's jobs. Returns (job, ended): QUEUED → CANCELLED at once
    and refunded (True); PROCESSING → cancellation requested, the worker stops it within
    a denoising step (False). NotFound for an unknown (or another account's) job,
    Conflict when it is already over.

    A job can move between the two conditional updates: put back in the queue by the
    reconciler (its worker's lease expired) after the first missed it. Tried again
    while it is not over."""
    for _ in range(_CANCEL_ROUNDS):
        job = cancel_queued(session, job_id, account_id)
        if job is not None:
            return job, True
        job = request_cancel(session, job_id, account_id)
        if job is not None:
            return job, False
        current = get_job(session, job_id, account_id=account_id)
        if current is None:
            raise NotFound("request not found")
        if current.status.is_terminal:
            raise Conflict(
                f"request {job_id} is {current.status.value}: only QUEUED and PROCESSING "
                "requests can be cancelled"
            )
        session.expire(current)  # the next round must read it afresh
    raise Conflict(f"request {job_id} is changing state; try again")


def cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    """Whether cancelling the job was asked for (the worker's database check)."""
    requested = session.execute(
        select(Job.cancel_requested_at).where(Job.id == job_id)
    ).scalar_one_or_none()
    return requested is not None


def finish_cancelled(
    session: Session,
    job_id: uuid.UUID,
    metrics: dict[str, Any] | None = None,
    lease_owner: str | None = None,
) -> Job | None:
    """PROCESSING -> CANCELLED once its worker stopped on a cancel request, refunding
    the job exactly once. None if the job was not PROCESSING with a cancel request (the
    transition already happened, or the job ended otherwise), or, with `lease_owner`,
    if that worker no longer holds the job."""
    job = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested_at.isnot(None),
            *_held_by(lease_owner),
        )
        .values(status=JobStatus.CANCELLED, finished_at=func.now(), metrics=metrics or {})
        .returning(Job)
    ).scalar_one_or_none()
    if job is not None:
        log_transition(session, job, JobStatus.CANCELLED, JobStatus.PROCESSING)
        _ended_refunded(session, job)
    return job


def _ended_refunded(session: Session, job: Job) -> None:
    """What every refunded end (FAILED, CANCELLED) does in its transaction: the refund,
    exactly once (the ledger's unique index), and the job.completed webhooks."""
    credits.refund_job(session, job)
    record_job_event(session, job, "completed")
    _announce_end(session, job)


def _announce_end(session: Session, job: Job) -> None:
    """After the commit of a terminal state: tell v1 waiters and event streams (they
    must find the row terminal), and drop the job's live progress and cancel flag."""
    after_commit(session, partial(notify.publish_job_finished, job.id, job.status))
    after_commit(session, partial(progress.clear, job.id))
    if job.cancel_requested_at is not None:
        after_commit(session, partial(cancel_flags.clear, job.id))


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
