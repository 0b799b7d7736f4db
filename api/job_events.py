"""What the event streams (`GET /v2/requests/{id}/events`) of one API process learn about
their jobs, without a database connection or a thread per stream.

One `JobEventHub` per API process keeps an inbox per open stream and fills it from:

- ONE Redis pub/sub connection on two channels: the workers' progress channel (a
  "started" notice after each claim, throttled progress reports; common/progress.py)
  and the job-finished channel (common/notify.py);
- ONE sweeper query every `sync_wait_recheck_seconds` giving the status (and queue
  position) of every job some stream follows, because pub/sub is at-most-once: a lost
  "started" or "finished" notice is made up for there, and queued jobs learn their
  new queue position; and one more asking whether any stream's API key was revoked or
  its account suspended (such a stream ends with an `error` event).

A stream sleeps on its inbox's asyncio event and reads its job from PostgreSQL only
when the job's state changed (or may have: a notice, a resubscription).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.deps import refused_keys
from api.errors import ApiError
from api.pubsub import PubSubListener, listener_lifespan, started_listener
from common import jobs, notify, progress, scheduler
from common.db import session_scope
from common.models import JobStatus
from common.settings import get_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweptState:
    status: JobStatus
    queue_position: int | None


def swept_states(job_ids: list[uuid.UUID]) -> dict[uuid.UUID, SweptState]:
    """Status and queue position of each of `job_ids`: one query for the statuses, and
    one per queued job for its position, whose cost does not grow with the queue."""
    with session_scope() as session:
        statuses = jobs.statuses(session, job_ids)
        positions = scheduler.queue_positions(
            session, [job_id for job_id, status in statuses.items() if status == JobStatus.QUEUED]
        )
    # A queued job missing from `positions` was claimed between the two reads: it is next.
    return {
        job_id: SweptState(status, positions.get(job_id, 0) if status == JobStatus.QUEUED else None)
        for job_id, status in statuses.items()
    }


class Inbox:
    """News about one job for one stream; `wake` is set whenever something arrives."""

    def __init__(self, key_id: uuid.UUID | None = None) -> None:
        self.key_id = key_id  # the stream's API key
        self.refusal: ApiError | None = None  # set once that key may no longer be used
        self.wake = asyncio.Event()
        self.latest_progress: progress.Progress | None = None
        self.recheck = False  # read the job again: it started, finished, or news were lost
        self.swept: SweptState | None = None
        self.arrived_at = time.monotonic()  # of the latest news: a read must start later

    def take(self) -> tuple[progress.Progress | None, bool, SweptState | None]:
        """What arrived since the last take, emptying the inbox."""
        news = (self.latest_progress, self.recheck, self.swept)
        self.latest_progress, self.recheck, self.swept = None, False, None
        self.wake.clear()
        return news


class JobEventHub(PubSubListener):
    name = "job-events"
    channels = (progress.PROGRESS_CHANNEL, notify.JOB_EVENTS_CHANNEL)

    def __init__(
        self,
        redis_url: str,
        sweep_seconds: float,
        sweep: Callable[[list[uuid.UUID]], dict[uuid.UUID, SweptState]] = swept_states,
        find_refused: Callable[[list[uuid.UUID]], dict[uuid.UUID, ApiError]] = refused_keys,
    ) -> None:
        super().__init__(redis_url, sweep_seconds)
        self._sweep = sweep
        self._find_refused = find_refused
        self._inboxes: dict[uuid.UUID, set[Inbox]] = {}

    @contextlib.contextmanager
    def register(self, job_id: uuid.UUID, key_id: uuid.UUID | None = None) -> Iterator[Inbox]:
        """An inbox for `job_id`'s news (and `key_id`'s revocation). Register BEFORE
        reading the job, so that nothing happening after the read goes unseen."""
        inbox = Inbox(key_id)
        self._inboxes.setdefault(job_id, set()).add(inbox)
        try:
            yield inbox
        finally:
            inboxes = self._inboxes.get(job_id)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del self._inboxes[job_id]

    def open_streams(self) -> int:
        return sum(len(inboxes) for inboxes in self._inboxes.values())

    def _deliver(self, job_id: uuid.UUID, fill: Callable[[Inbox], None]) -> None:
        now = time.monotonic()
        for inbox in self._inboxes.get(job_id, ()):
            fill(inbox)
            inbox.arrived_at = now
            inbox.wake.set()

    def on_subscribed(self) -> None:
        # Whatever happened while we were not subscribed was announced to nobody: every
        # stream reads its job once.
        for job_id in list(self._inboxes):
            self._deliver(job_id, _set_recheck)

    def on_message(self, channel: str, data: str | bytes) -> None:
        """Dispatch one pub/sub message to the inboxes of its job."""
        if channel == progress.PROGRESS_CHANNEL:
            notice = progress.decode(data)
            if notice is None or notice.job_id not in self._inboxes:
                return
            if notice.kind == "progress" and notice.progress is not None:
                fill = functools.partial(_set_progress, report=notice.progress)
                self._deliver(notice.job_id, fill)
            else:
                self._deliver(notice.job_id, _set_recheck)
        elif channel == notify.JOB_EVENTS_CHANNEL:
            finished = notify.decode(data)
            if finished is not None:
                self._deliver(finished.job_id, _set_recheck)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            if not self._inboxes:
                continue  # no stream open: no query at all
            try:
                states = await run_in_threadpool(self._sweep, list(self._inboxes))
                inboxes = [inbox for group in self._inboxes.values() for inbox in group]
                keys = list({i.key_id for i in inboxes if i.key_id is not None})
                refused = await run_in_threadpool(self._find_refused, keys) if keys else {}
            except Exception:
                logger.warning("sweeping the jobs of open event streams failed", exc_info=True)
                continue
            for job_id, state in states.items():
                self._deliver(job_id, functools.partial(_set_swept, state=state))
            for inbox in inboxes:  # revoked or suspended meanwhile: the stream ends
                if inbox.key_id in refused:
                    inbox.refusal = refused[inbox.key_id]
                    inbox.wake.set()


def _set_recheck(inbox: Inbox) -> None:
    inbox.recheck = True


def _set_progress(inbox: Inbox, *, report: progress.Progress) -> None:
    inbox.latest_progress = report  # the latest wins: a slow stream skips steps


def _set_swept(inbox: Inbox, *, state: SweptState) -> None:
    inbox.swept = state


_STATE_ATTR = "job_events"


def job_events(app: FastAPI) -> JobEventHub:
    """The process's hub, started on first use."""
    settings = get_settings()
    return started_listener(
        app,
        _STATE_ATTR,
        lambda: JobEventHub(settings.redis_url, settings.sync_wait_recheck_seconds),
    )


def job_events_lifespan(app: FastAPI) -> contextlib.AbstractAsyncContextManager[None]:
    """Subscribe at startup, so the first stream finds events flowing."""
    return listener_lifespan(app, _STATE_ATTR, job_events)
