"""What the event streams (`GET /v2/requests/{id}/events`) of one API process learn about
their jobs, without a database connection or a thread per stream.

One `JobEventHub` per API process keeps an inbox per open stream and fills it from:

- ONE Redis pub/sub connection on two channels: the workers' progress channel (a
  "started" notice after each claim, throttled progress reports; common/progress.py)
  and the job-finished channel (common/notify.py);
- ONE sweeper query every `sync_wait_recheck_seconds` giving the status (and queue
  position) of every job some stream follows, because pub/sub is at-most-once: a lost
  "started" or "finished" notice is made up for there, and queued jobs learn their
  new queue position.

A stream sleeps on its inbox's asyncio event and reads its job from PostgreSQL only
when the job's state changed (or may have: a notice, a resubscription).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from starlette.concurrency import run_in_threadpool

from common import notify, progress
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import get_settings

logger = logging.getLogger(__name__)

_READ_TIMEOUT_SECONDS = 5.0
_HEALTH_CHECK_SECONDS = 15
_MAX_BACKOFF_SECONDS = 10.0


@dataclass(frozen=True)
class SweptState:
    status: JobStatus
    queue_position: int | None


def swept_states(job_ids: list[uuid.UUID]) -> dict[uuid.UUID, SweptState]:
    """Status and queue position of each of `job_ids`: one query, whatever their number."""
    earlier = aliased(Job)
    position = (
        select(func.count())
        .select_from(earlier)
        .where(earlier.status == JobStatus.QUEUED, earlier.created_at < Job.created_at)
        .correlate(Job)
        .scalar_subquery()
    )
    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.status, position).where(Job.id.in_(job_ids))
        ).all()
    return {
        job_id: SweptState(status, count if status == JobStatus.QUEUED else None)
        for job_id, status, count in rows
    }


class Inbox:
    """News about one job for one stream; `wake` is set whenever something arrives."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.latest_progress: progress.Progress | None = None
        self.recheck = False  # read the job again: it started, finished, or news were lost
        self.swept: SweptState | None = None

    def take(self) -> tuple[progress.Progress | None, bool, SweptState | None]:
        """What arrived since the last take, emptying the inbox."""
        news = (self.latest_progress, self.recheck, self.swept)
        self.latest_progress, self.recheck, self.swept = None, False, None
        self.wake.clear()
        return news


class JobEventHub:
    def __init__(
        self,
        redis_url: str,
        sweep_seconds: float,
        sweep: Callable[[list[uuid.UUID]], dict[uuid.UUID, SweptState]] = swept_states,
    ) -> None:
        self._redis_url = redis_url
        self._sweep_seconds = sweep_seconds
        self._sweep = sweep
        self._inboxes: dict[uuid.UUID, set[Inbox]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribed = False

    @contextlib.contextmanager
    def register(self, job_id: uuid.UUID) -> Iterator[Inbox]:
        """An inbox for `job_id`'s news. Register BEFORE reading the job, so that nothing
        happening after the read goes unseen."""
        inbox = Inbox()
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
        for inbox in self._inboxes.get(job_id, ()):
            fill(inbox)
            inbox.wake.set()

    def _recheck_all(self) -> None:
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

    def start(self) -> None:
        if not self._tasks:
            self.loop = asyncio.get_running_loop()
            self._tasks = [
                asyncio.create_task(self._subscribe_forever(), name="job-events-subscriber"),
                asyncio.create_task(self._sweep_forever(), name="job-events-sweeper"),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _subscribe_forever(self) -> None:
        backoff = 0.5
        while True:
            client = aioredis.Redis.from_url(
                self._redis_url,
                health_check_interval=_HEALTH_CHECK_SECONDS,
                socket_connect_timeout=5,
                socket_keepalive=True,
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(progress.PROGRESS_CHANNEL, notify.JOB_EVENTS_CHANNEL)
                    self.subscribed = True
                    backoff = 0.5
                    # Whatever happened while we were not subscribed was announced to
                    # nobody: every stream reads its job once.
                    self._recheck_all()
                    while True:
                        message = await pubsub.get_message(timeout=_READ_TIMEOUT_SECONDS)
                        if message is not None and message.get("type") == "message":
                            channel = message["channel"]
                            if isinstance(channel, bytes):
                                channel = channel.decode()
                            self.on_message(channel, message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "job events lost (Redis); streams fall back to the %.0fs sweep until the "
                    "subscription is back",
                    self._sweep_seconds,
                    exc_info=True,
                )
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            if not self._inboxes:
                continue  # no stream open: no query at all
            try:
                states = await run_in_threadpool(self._sweep, list(self._inboxes))
            except Exception:
                logger.warning("sweeping the jobs of open event streams failed", exc_info=True)
                continue
            for job_id, state in states.items():
                self._deliver(job_id, functools.partial(_set_swept, state=state))


def _set_recheck(inbox: Inbox) -> None:
    inbox.recheck = True


def _set_progress(inbox: Inbox, *, report: progress.Progress) -> None:
    inbox.latest_progress = report  # the latest wins: a slow stream skips steps


def _set_swept(inbox: Inbox, *, state: SweptState) -> None:
    inbox.swept = state


def job_events(app: FastAPI) -> JobEventHub:
    """The process's hub, started on first use if the lifespan did not start it."""
    hub: JobEventHub | None = getattr(app.state, "job_events", None)
    if hub is None or hub.loop not in (None, asyncio.get_running_loop()):
        settings = get_settings()
        hub = JobEventHub(settings.redis_url, settings.sync_wait_recheck_seconds)
        app.state.job_events = hub
    hub.start()
    return hub


@contextlib.asynccontextmanager
async def job_events_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Subscribe at startup, so the first stream finds events flowing."""
    hub = job_events(app)
    try:
        yield
    finally:
        await hub.stop()
        app.state.job_events = None
