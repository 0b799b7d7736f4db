"""What a status poll reads, in one statement: the caller's key with its account, the
job (only if it is the caller's), and its queue position (only if it is QUEUED).

Status polls are most of the API's traffic (Segmind's SDK polls once a second per
job), and on small machines each database round trip costs as much CPU as the rest of
the request (docs/performance.md, "Service path"): one statement on one autocommit
connection instead of a transaction of three, and a Core row of the few columns the
answer needs, read without an ORM session: loading three ORM objects and the session's
own bookkeeping cost more CPU than the statement itself."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, bindparam, case, select

from common import scheduler
from common.accounts import hash_key
from common.models import Account, AccountStatus, ApiKey, Job, JobStatus

# Built once, so SQLAlchemy computes its cache key once too.
_READ = (
    select(
        ApiKey.id.label("key_id"),
        ApiKey.revoked_at,
        Account.status.label("account_status"),
        Account.balance,
        Account.rate_limit_per_minute,
        Job.id,
        Job.status,
        Job.queue,
        Job.error,
        Job.created_at,
        Job.started_at,
        Job.finished_at,
        Job.expired_at,
        Job.cancel_requested_at,
        # The position's own query only runs for a job that is there and QUEUED.
        case((Job.status == JobStatus.QUEUED, scheduler.position_subquery()), else_=None).label(
            "queue_position"
        ),
    )
    .join(Account, Account.id == ApiKey.account_id)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.account_id == ApiKey.account_id))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


@dataclass(frozen=True, slots=True)
class JobRow:
    """The job's columns a status answer reads (common.models.JobState)."""

    id: uuid.UUID
    status: JobStatus
    queue: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expired_at: datetime | None
    cancel_requested_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyRow:
    """The key's columns the status poll checks before answering (api/img2img/endpoints.py)."""

    key_id: uuid.UUID
    revoked_at: datetime | None
    account_status: AccountStatus
    balance: int
    rate_limit_per_minute: int | None


@dataclass(frozen=True)
class StatusRead:
    key: KeyRow
    job: JobRow | None  # None: the key's account has no job of that id
    queue_position: int | None  # set when `job` is QUEUED


def read(conn: Connection, raw_key: str, job_id: uuid.UUID | None) -> StatusRead | None:
    """The key `raw_key` (None: unknown) and its account's job `job_id` (None: an id
    that names nothing). Checks nothing: the caller decides what a revoked key or a
    suspended account gets."""
    row = conn.execute(
        _READ, {"job_id": job_id or uuid.UUID(int=0), "key_hash": hash_key(raw_key)}
    ).one_or_none()
    if row is None:
        return None
    key = KeyRow(
        row.key_id, row.revoked_at, row.account_status, row.balance, row.rate_limit_per_minute
    )
    if row.id is None:
        return StatusRead(key, None, None)
    job = JobRow(
        row.id,
        row.status,
        row.queue,
        row.error,
        row.created_at,
        row.started_at,
        row.finished_at,
        row.expired_at,
        row.cancel_requested_at,
    )
    position = row.queue_position
    if position is None and job.status == JobStatus.QUEUED:
        position = 0  # as scheduler.queue_position: no line ahead of it, it is next
    return StatusRead(key, job, None if position is None else int(position))
