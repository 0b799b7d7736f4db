"""Job events become webhook deliveries, in the transaction of the job change itself.

Every job transition that clients may want to hear of calls `record_job_event` inside
its own transaction (common.jobs: claim -> started; complete, fail and cancel ->
completed). That inserts one delivery row per target (an outbox) and queues them once
the transaction commits: a job never changes without its deliveries, and no webhook is
sent for a change that rolled back. Targets, decided when the event happens:

- the job's own `webhook_url`, for the events of its `webhook_events_filter`
  (default: started and completed), unless that URL answered 410 Gone for this job;
- every enabled endpoint of the account whose `events` hold the event.

Each target gets its own delivery, retried on its own; all of one event's deliveries
carry the same `webhook-id`. Progress events are throttled per job
(`maybe_record_progress_event`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, exists, func, insert, select
from sqlalchemy.orm import Session

from common import urlsafety
from common.db import session_scope
from common.models import (
    Job,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEventType,
)
from common.settings import Settings, get_settings
from common.webhooks.queue import send_after_commit
from common.webhooks.signing import new_webhook_id

logger = logging.getLogger(__name__)

EVENT_NAMES = ("started", "progress", "completed")
# Without a filter: no progress, which is chatty and of use to few.
DEFAULT_EVENTS = ("started", "completed")


def event_type(value: str | WebhookEventType) -> WebhookEventType:
    """`started`/`progress`/`completed`, or the full `job.*` type."""
    for kind in WebhookEventType:
        if value in (kind, kind.value, kind.short):
            return kind
    raise ValueError(f"unknown webhook event {value!r}; one of {', '.join(EVENT_NAMES)}")


def check_target_url(url: str, settings: Settings) -> str:
    """The URL, normalised, if webhooks may be sent there: http(s), no credentials, and
    resolving to public addresses only. Raises urlsafety.UrlError saying why not.
    (Checked again at every attempt: what a name resolves to can change.)"""
    return str(urlsafety.check_url(url.strip(), settings.allow_loopback_urls).url)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_data(job: Job, progress: dict[str, int] | None = None) -> dict[str, Any]:
    """`data` of a payload: small, never image bytes. `output` is filled in with fresh
    presigned URLs at every attempt (common.webhooks.delivery), not stored here."""
    return {
        "request_id": str(job.id),
        "status": JobStatus(job.status).value,
        "output": None,
        "expired": False,  # set at the attempt once retention deleted the outputs
        "error": job.error,
        "metrics": dict(job.metrics or {}),
        "progress": progress,
    }


@dataclass(frozen=True)
class Target:
    url: str
    endpoint_id: uuid.UUID | None  # None: the job's own webhook_url


def _answered_gone(session: Session, job_id: uuid.UUID) -> bool:
    """Whether the job's own webhook_url answered 410 Gone to one of its deliveries."""
    return (
        session.execute(
            select(WebhookAttempt.id)
            .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
            .where(
                WebhookDelivery.job_id == job_id,
                WebhookDelivery.endpoint_id.is_(None),
                WebhookAttempt.status_code == 410,
            )
            .limit(1)
        ).first()
        is not None
    )


def account_listens() -> ColumnElement[bool]:
    """Whether a job's account has an enabled webhook endpoint: for the RETURNING of a
    job transition, so that its `record_job_event` can skip the endpoint look-up when
    there is none (most accounts) instead of sending it as a statement of its own."""
    return (
        exists()
        .where(WebhookEndpoint.account_id == Job.account_id, WebhookEndpoint.enabled.is_(True))
        .label("account_listens")
    )


def targets(
    session: Session, job: Job, kind: WebhookEventType, account_listens: bool | None = None
) -> list[Target]:
    """Where an event of `job` goes. `account_listens`: what the transition's
    RETURNING said of the account's endpoints (None: not asked, look them up)."""
    found: list[Target] = []
    params = job.params or {}
    url = params.get("webhook_url")
    if url:
        wanted = params.get("webhook_events_filter") or DEFAULT_EVENTS
        if kind.short in wanted and not _answered_gone(session, job.id):
            found.append(Target(url.strip(), None))
    if account_listens is False:
        return found
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.events).where(
            WebhookEndpoint.account_id == job.account_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    found += [Target(e.url, e.id) for e in endpoints if kind.short in e.events]
    return found


def record_job_event(
    session: Session,
    job: Job,
    kind: str | WebhookEventType,
    *,
    progress: dict[str, int] | None = None,
    account_listens: bool | None = None,
) -> list[uuid.UUID]:
    """Insert the deliveries of one event of `job` (as it is now) into `session`'s
    transaction, and queue them after its commit. Returns their ids (none when nothing
    listens). Call it in the same transaction as the job change that causes it.

    `kind`: "started", "progress" or "completed" (every terminal state, with the job's
    status in the payload); `job.*` names work too. `account_listens`: the transition's
    `account_listens()` column, if it returned one.
    """
    kind = event_type(kind)
    # Most jobs have no listener: then an event costs nothing more when the transition
    # returned `account_listens`, else one SELECT; on every transition of every job
    # (the claim path, docs/scheduling.md "Scale").
    found = targets(session, job, kind, account_listens)
    if not found:
        return []
    try:
        # The writes in a savepoint: should they fail (a bug, a schema out of date), the
        # job's own change still commits. A job stuck PROCESSING is worse than a lost
        # webhook.
        with session.begin_nested():
            ids = _insert_deliveries(session, job, kind, found, progress)
    except Exception:
        logger.exception("could not record the %s webhooks of job %s", kind.value, job.id)
        return []
    send_after_commit(session, ids)
    return ids


def _insert_deliveries(
    session: Session,
    job: Job,
    kind: WebhookEventType,
    found: list[Target],
    progress: dict[str, int] | None,
) -> list[uuid.UUID]:
    webhook_id = new_webhook_id()
    payload = {"type": kind.value, "timestamp": iso_now(), "data": job_data(job, progress)}
    ids = [uuid.uuid4() for _ in found]
    rows = [
        {
            "id": delivery_id,
            "account_id": job.account_id,
            "job_id": job.id,
            "endpoint_id": target.endpoint_id,
            "url": target.url,
            "event_type": kind,
            "webhook_id": webhook_id,
            "payload": payload,
            "state": WebhookDeliveryState.PENDING,
            "attempts": 0,
            "series": 1,
            "series_attempts": 0,
            "next_attempt_at": func.now(),
            # Queued right after the commit; the sweep re-sends only if it is lost.
            "dispatched_at": func.now(),
        }
        for delivery_id, target in zip(ids, found, strict=True)
    ]
    session.execute(insert(WebhookDelivery).values(rows))  # one multi-row INSERT
    return ids


class ProgressThrottle:
    """At most one `allow` per job per `interval` seconds, in this process."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_jobs: int = 1024,
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._max_jobs = max_jobs
        self._last: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, job_id: uuid.UUID) -> bool:
        with self._lock:
            now = self._clock()
            last = self._last.get(job_id)
            if last is not None and now - last < self.interval:
                return False
            self._last[job_id] = now
            self._last.move_to_end(job_id)
            while len(self._last) > self._max_jobs:  # jobs long over
                self._last.popitem(last=False)
            return True


_throttle_lock = threading.Lock()
_throttle: ProgressThrottle | None = None


def _progress_throttle() -> ProgressThrottle:
    global _throttle
    with _throttle_lock:
        if _throttle is None:
            _throttle = ProgressThrottle(get_settings().webhook_progress_interval_seconds)
        return _throttle


def maybe_record_progress_event(job_id: uuid.UUID, done: int, total: int) -> bool:
    """Record a job.progress event (`progress: {done, total}`) for a PROCESSING job, at
    most once per WEBHOOK_PROGRESS_INTERVAL_SECONDS per job in this process; its own
    short transaction. For the GPU worker's step callback: it never raises (a webhook
    problem must not abort a generation) and returns whether deliveries were recorded.
    """
    try:
        if not _progress_throttle().allow(job_id):
            return False
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.PROCESSING:
                return False
            progress = {"done": int(done), "total": int(total)}
            return bool(
                record_job_event(session, job, WebhookEventType.PROGRESS, progress=progress)
            )
    except Exception:
        logger.warning("could not record a progress webhook of job %s", job_id, exc_info=True)
        return False
