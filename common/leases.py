"""Leases of workers on the jobs they run.

A worker claims a job with a lease (common.jobs.claim: `lease_owner`, `lease_expires_at`)
and renews it while the job runs; its final write is conditional on still owning it.
A worker that dies stops renewing: once the lease has expired, the reconciler
(common/reconcile.py) takes the job back. A worker that was merely slow to renew and
lost its lease meanwhile cannot overwrite what the job's next owner records.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection
from datetime import timedelta

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from common.jobs import in_state
from common.models import Job, JobStatus


def new_owner(worker: str | None = None) -> str:
    """A fresh owner name for one claim: who (host, pid) plus a random part, so that a
    worker that claims the same job again later is a different owner."""
    who = worker or f"{socket.gethostname()}:{os.getpid()}"
    return f"{who}/{uuid.uuid4().hex[:12]}"[:200]


def renew(session: Session, job_id: uuid.UUID, owner: str, lease_seconds: float) -> bool:
    """Push the lease's expiry `lease_seconds` past now; False when `owner` no longer
    holds it (the job was taken back, or ended)."""
    return job_id in renew_all(session, [job_id], owner, lease_seconds)


def renew_all(
    session: Session, job_ids: Collection[uuid.UUID], owner: str, lease_seconds: float
) -> set[uuid.UUID]:
    """`renew` for the jobs of one claim (a batch), in one statement; returns those
    `owner` still holds."""
    if not job_ids:
        return set()
    renewed = session.execute(
        update(Job)
        .where(
            Job.id.in_(job_ids),
            in_state(JobStatus.PROCESSING),
            Job.lease_owner == owner,
        )
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    ).scalars()
    return set(renewed)
