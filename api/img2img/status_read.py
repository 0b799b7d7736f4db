"""What a status poll reads, in one statement: the caller's key with its account, the
job (only if it is the caller's), and its queue position (only if it is QUEUED).

Status polls are most of the API's traffic (Segmind's SDK polls once a second per
job), and on small machines each database round trip costs as much CPU as the rest of
the request (docs/performance.md, "Service path"): one statement on one autocommit
connection instead of a transaction of three."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, case, select
from sqlalchemy.orm import Session, joinedload

from api.deps import INVALID_KEY, MISSING_KEY, usable_key
from api.errors import ApiError
from common import scheduler
from common.accounts import hash_key
from common.models import ApiKey, Job, JobStatus

# Built once, so SQLAlchemy computes its cache key once too.
_READ = (
    select(
        ApiKey,
        Job,
        # The position's own query only runs for a job that is there and QUEUED.
        case((Job.status == JobStatus.QUEUED, scheduler.position_subquery()), else_=None).label(
            "queue_position"
        ),
    )
    .options(joinedload(ApiKey.account))
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.account_id == ApiKey.account_id))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


@dataclass(frozen=True)
class StatusRead:
    key: ApiKey  # usable (unrevoked, account active), its account loaded
    job: Job | None  # None: the caller has no job of that id
    queue_position: int | None  # set when `job` is QUEUED


def read(session: Session, raw_key: str | None, job_id: uuid.UUID | None) -> StatusRead:
    """The caller's key and job `job_id` (None: an id that names nothing). Raises the
    key's 401/403 (api.deps.usable_key); counts nothing against the rate limit."""
    if not raw_key:
        raise ApiError(401, MISSING_KEY)
    row = session.execute(
        _READ, {"job_id": job_id or uuid.UUID(int=0), "key_hash": hash_key(raw_key)}
    ).one_or_none()
    if row is None:
        raise ApiError(401, INVALID_KEY)
    key, job, position = row
    return StatusRead(usable_key(key), job, position)
