"""Waiting for jobs to finish inside the API process, without polling per waiter.

One `JobWaiters` per API process holds, for each job that synchronous (v1) requests
wait for, the asyncio events of those requests. Two background tasks set the events:

- a Redis pub/sub subscriber (one connection per process, whatever the number of
  waiters) that wakes the waiters of a job when a worker announces it finished;
- a sweeper that, every `sync_wait_recheck_seconds` and right after each
  (re)subscription, asks PostgreSQL in ONE query which of all the waited-for jobs are
  terminal, covering notifications Redis lost (pub/sub is at-most-once, and a worker
  that cannot reach Redis publishes nothing).

A woken waiter reads its job once from PostgreSQL, the source of truth. Waiting holds
neither a database connection nor a threadpool thread: only an asyncio event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import redis.asyncio as aioredis
from fastapi import FastAPI
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from common import notify
from common.db import session_scope
from common.models import TERMINAL_STATUSES, Job
from common.settings import get_settings

logger = logging.getLogger(__name__)

# How long one read of the channel blocks; between reads redis-py sends its health-check
# PING, so a silently dead connection is noticed and replaced.
_READ_TIMEOUT_SECONDS = 5.0
_HEALTH_CHECK_SECONDS = 15
_MAX_BACKOFF_SECONDS = 10.0


def terminal_job_ids(job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `job_ids` are in a terminal state: one query, whatever their number."""
    with session_scope() as session:
        rows = session.execute(
            select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(TERMINAL_STATUSES))
        )
        return set(rows.scalars())


class JobWaiters:
    def __init__(
        self,
        redis_url: str,
        recheck_seconds: float,
        find_terminal: Callable[[list[uuid.UUID]], set[uuid.UUID]] = terminal_job_ids,
    ) -> None:
        self._redis_url = redis_url
        self._recheck_seconds = recheck_seconds
        self._find_terminal = find_terminal
        self._events: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._sweep_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop its events belong to
        self.subscribed = False  # whether notifications are being received right now
        self.subscriptions = 0  # successful (re)subscriptions since start

    @contextlib.contextmanager
    def register(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set when `job_id` may have finished. Register BEFORE the job can run
        (before enqueueing it), or its notification can come and go unseen."""
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]

    def waiting_count(self) -> int:
        return sum(len(events) for events in self._events.values())

    def wake(self, job_id: uuid.UUID) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def start(self) -> None:
        if not self._tasks:
            self.loop = asyncio.get_running_loop()
            self._tasks = [
                asyncio.create_task(self._subscribe_forever(), name="job-waiters-subscriber"),
                asyncio.create_task(self._sweep_forever(), name="job-waiters-sweeper"),
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
                    await pubsub.subscribe(notify.JOB_EVENTS_CHANNEL)
                    self.subscribed = True
                    self.subscriptions += 1
                    backoff = 0.5
                    # Whatever finished while we were not subscribed was announced to
                    # nobody: ask the database once for all current waiters.
                    self._sweep_now.set()
                    while True:
                        message = await pubsub.get_message(timeout=_READ_TIMEOUT_SECONDS)
                        if message is not None and message.get("type") == "message":
                            event = notify.decode(message["data"])
                            if event is not None:
                                self.wake(event.job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "job notifications lost (Redis); waiters fall back to the %.0fs re-check "
                    "until the subscription is back",
                    self._recheck_seconds,
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), self._recheck_seconds)
            self._sweep_now.clear()
            if not self._events:
                continue  # nobody waits: no query at all
            try:
                finished = await run_in_threadpool(self._find_terminal, list(self._events))
            except Exception:
                logger.warning("re-checking waited-for jobs failed", exc_info=True)
                continue
            for job_id in finished:
                self.wake(job_id)


def job_waiters(app: FastAPI) -> JobWaiters:
    """The process's registry, started on first use if the lifespan did not start it
    (an app driven without its lifespan, e.g. a TestClient outside `with`)."""
    waiters: JobWaiters | None = getattr(app.state, "job_waiters", None)
    # asyncio events belong to one loop; a registry left from another loop is unusable.
    if waiters is None or waiters.loop not in (None, asyncio.get_running_loop()):
        settings = get_settings()
        waiters = JobWaiters(settings.redis_url, settings.sync_wait_recheck_seconds)
        app.state.job_waiters = waiters
    waiters.start()
    return waiters


@contextlib.asynccontextmanager
async def job_waiters_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Subscribe at startup, so the first v1 request finds notifications flowing."""
    waiters = job_waiters(app)
    try:
        yield
    finally:
        await waiters.stop()
        app.state.job_waiters = None
