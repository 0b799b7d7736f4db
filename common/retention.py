"""Result retention: a finished job's objects (its input PNG and output JPEGs) are
deleted RESULT_RETENTION_SECONDS after it finished; its row stays, with `expired_at`.

The CPU worker runs `sweep()` every RETENTION_SWEEP_SECONDS (background/
retention_tasks.py), and every replica does: each batch of expired jobs is picked with
`SELECT ... FOR UPDATE SKIP LOCKED`, its objects are deleted, and the jobs are marked
in the transaction that holds their locks, so concurrent sweeps share the work instead
of repeating it. A sweep that dies between the deletion and the commit leaves the jobs
unmarked: the next one deletes again (a missing object is no error) and marks them.

`sweep_orphaned_inputs()` (every ORPHAN_SWEEP_SECONDS) deletes inputs that no job row
refers to: a submit stores its input before its job insert commits, and an insert that
never commits leaves the object behind. An input counts as orphaned once it is older
than the retention period, which must therefore exceed the longest submit (seconds):
a shorter period is for tests only. A bucket lifecycle rule expiring `inputs/` and
`outputs/` after a little more than the period is a fine backstop in production.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from common import images, storage
from common.db import session_scope
from common.models import Job, JobState
from common.settings import Settings, get_settings
from common.storage import Storage, get_storage

logger = logging.getLogger(__name__)

# The predicate of the partial index ix_jobs_finished_at_unexpired, spelled the same way
# (as SQL text, not bound parameters) so that the planner can use the index.
_UNEXPIRED_TERMINAL = text("expired_at IS NULL AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')")


def retention_period(settings: Settings | None = None) -> timedelta:
    return timedelta(seconds=(settings or get_settings()).result_retention_seconds)


def describe_period(period: timedelta) -> str:
    """'7 days', '24 hours', '1 hour', '90 minutes', '2 seconds': for messages."""
    seconds = int(period.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        # Whole days from two on: "24 hours" says it more plainly than "1 day".
        if seconds >= size * (2 if unit == "day" else 1) and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def expiry_time(job: JobState, period: timedelta, now: datetime) -> datetime | None:
    """When the job's objects expired, or None while they are kept.

    A job is expired once swept, and also once its period is over but the sweep has not
    come yet (it runs every RETENTION_SWEEP_SECONDS): clients see the same deadline
    whatever the sweep's lag, and never get links to objects about to vanish.
    """
    if job.expired_at is not None:
        return job.expired_at
    if job.finished_at is not None and job.status.is_terminal:
        deadline = job.finished_at + period
        if deadline <= now:
            return deadline
    return None


def seconds_left(job: Job, period: timedelta, now: datetime) -> float | None:
    """Seconds until a finished job's objects expire (None: not finished)."""
    if job.finished_at is None:
        return None
    return (job.finished_at + period - now).total_seconds()


def presigned_url_ttl(job: Job, wanted: int, period: timedelta, now: datetime) -> int | None:
    """How long a presigned URL of the job's outputs may live: `wanted` seconds, but
    never past the objects' deletion; None once they expired (no URL is worth giving)."""
    if expiry_time(job, period, now) is not None:
        return None
    left = seconds_left(job, period, now)
    return wanted if left is None else max(1, min(wanted, int(left)))


def expired_message(job_id: uuid.UUID, when: datetime, period: timedelta) -> str:
    return (
        f"the outputs of request {job_id} expired at {when.isoformat()} "
        f"(results are kept {describe_period(period)})"
    )


def job_object_keys(job_id: uuid.UUID, account_id: uuid.UUID, row: dict[str, Any]) -> set[str]:
    """Every object a job may have: its input, its recorded outputs, and the output keys
    a worker may have uploaded without recording them (a job cancelled or failed
    while its outputs were being uploaded)."""
    keys = {row["input_key"], *row["output_keys"]}
    samples = int((row["params"] or {}).get("samples") or 0)
    keys.update(storage.output_key(account_id, job_id, index) for index in range(samples))
    return keys


@dataclass(frozen=True)
class BatchResult:
    locked: int  # jobs this sweep held the locks of
    expired: list[uuid.UUID]  # of those, the ones whose objects are gone and now marked


def expire_batch(
    session: Session, store: Storage, *, period: timedelta, now: datetime, batch_size: int
) -> BatchResult:
    """Lock up to `batch_size` expired, unswept jobs (skipping those another sweep
    holds), delete their objects and mark them. The caller commits, releasing the locks.

    A job whose objects could not all be deleted stays unmarked, for the next sweep.
    """
    rows = (
        session.execute(
            select(Job.id, Job.account_id, Job.input_key, Job.output_keys, Job.params)
            .where(_UNEXPIRED_TERMINAL, Job.finished_at < now - period)
            .order_by(Job.finished_at)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        .mappings()
        .all()
    )
    if not rows:
        return BatchResult(locked=0, expired=[])
    keys_of = {row["id"]: job_object_keys(row["id"], row["account_id"], dict(row)) for row in rows}
    failed = store.delete_many(key for keys in keys_of.values() for key in keys)
    done = [job_id for job_id, keys in keys_of.items() if not keys & failed.keys()]
    if failed:
        logger.warning(
            "retention: %d objects not deleted (%s); %d jobs left for the next sweep",
            len(failed),
            ", ".join(sorted(set(failed.values()))),
            len(keys_of) - len(done),
        )
    if done:
        session.execute(update(Job).where(Job.id.in_(done)).values(expired_at=now))
    return BatchResult(locked=len(rows), expired=done)


def sweep(
    *,
    store: Storage | None = None,
    period: timedelta | None = None,
    now: datetime | None = None,
    batch_size: int = 100,
    max_batches: int = 50,
    database_url: str | None = None,
) -> list[uuid.UUID]:
    """Expire every job finished more than `period` before `now` (defaults: the settings
    and the database's clock), one transaction per batch. Returns the jobs expired.

    At most `max_batches` per call, so that one call never runs for long; the next
    scheduled call goes on where this one stopped.
    """
    store = store or get_storage()
    period = period if period is not None else retention_period()
    expired: list[uuid.UUID] = []
    for _ in range(max_batches):
        with session_scope(database_url) as session:
            at = now if now is not None else session.execute(select(func.now())).scalar_one()
            batch = expire_batch(session, store, period=period, now=at, batch_size=batch_size)
        expired.extend(batch.expired)
        if batch.locked < batch_size or not batch.expired:
            break  # nothing more to do, or only jobs that keep failing: next sweep
    if expired:
        logger.info("retention: expired %d jobs", len(expired))
    return expired


def _job_id_of_input(key: str) -> uuid.UUID | None:
    """The job id of `inputs/{account}/{job}.{png,jpg,webp}` (common.storage.input_key),
    or None for any other key."""
    parts = key.split("/")
    if len(parts) != 3:
        return None
    name, _, extension = parts[2].partition(".")
    if extension not in images.EXTENSIONS:
        return None
    try:
        uuid.UUID(parts[1])
        return uuid.UUID(name)
    except ValueError:
        return None


def sweep_orphaned_inputs(
    *,
    store: Storage | None = None,
    period: timedelta | None = None,
    now: datetime | None = None,
    database_url: str | None = None,
) -> list[str]:
    """Delete input objects older than `period` that no job row refers to. Returns
    their keys. Safe to run concurrently: deleting an object twice is no error."""
    store = store or get_storage()
    period = period if period is not None else retention_period()
    if now is None:
        with session_scope(database_url) as session:
            now = session.execute(select(func.now())).scalar_one()
    cutoff = now - period
    deleted: list[str] = []
    for page in store.list_pages("inputs/"):
        candidates: dict[uuid.UUID, str] = {}
        for key, modified in page:
            job_id = _job_id_of_input(key)
            if job_id is not None and modified < cutoff:
                candidates[job_id] = key
        if not candidates:
            continue
        with session_scope(database_url) as session:
            known = set(
                session.execute(select(Job.id).where(Job.id.in_(list(candidates)))).scalars()
            )
        orphans = [key for job_id, key in candidates.items() if job_id not in known]
        failed = store.delete_many(orphans)
        deleted.extend(key for key in orphans if key not in failed)
    if deleted:
        logger.info("retention: deleted %d orphaned inputs", len(deleted))
    return deleted
