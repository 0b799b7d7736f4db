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
neither a database connection nor a threadpool thread: only an asyncio event. The same
sweep asks, in one more query, whether any waiter's API key was revoked or its account
suspended: such a wait ends with 401/403 instead of delivering the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.deps import refused_keys
from api.errors import ApiError
from api.pubsub import PubSubListener, listener_lifespan, started_listener
from common import jobs, notify
from common.db import session_scope
from common.settings import get_settings

logger = logging.getLogger(__name__)


def terminal_job_ids(job_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `job_ids` are in a terminal state: one query, whatever their number."""
    with session_scope() as session:
        return jobs.terminal_among(session, job_ids)


class Waiter(asyncio.Event):
    """Set when the job may have finished, or when its key may no longer be used: then
    `refusal` says why (the wait ends with it instead of delivering the result)."""

    def __init__(self, key_id: uuid.UUID | None) -> None:
        super().__init__()
        self.key_id = key_id
        self.refusal: ApiError | None = None


class JobWaiters(PubSubListener):
    name = "job-waiters"
    channels = (notify.JOB_EVENTS_CHANNEL,)

    def __init__(
        self,
        redis_url: str,
        recheck_seconds: float,
        find_terminal: Callable[[list[uuid.UUID]], set[uuid.UUID]] = terminal_job_ids,
        find_refused: Callable[[list[uuid.UUID]], dict[uuid.UUID, ApiError]] = refused_keys,
    ) -> None:
        super().__init__(redis_url, recheck_seconds)
        self._find_terminal = find_terminal
        self._find_refused = find_refused
        self._events: dict[uuid.UUID, set[Waiter]] = {}
        self._sweep_now = asyncio.Event()

    @contextlib.contextmanager
    def register(self, job_id: uuid.UUID, key_id: uuid.UUID | None = None) -> Iterator[Waiter]:
        """An event set when `job_id` may have finished, or when `key_id` was revoked or
        its account suspended. Register BEFORE the job can run (before enqueueing it),
        or its notification can come and go unseen."""
        event = Waiter(key_id)
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

    def on_subscribed(self) -> None:
        # Whatever finished while we were not subscribed was announced to nobody: ask
        # the database once for all current waiters.
        self._sweep_now.set()

    def on_message(self, channel: str, data: str | bytes) -> None:
        event = notify.decode(data)
        if event is not None:
            self.wake(event.job_id)

    async def sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), self._sweep_seconds)
            self._sweep_now.clear()
            if not self._events:
                continue  # nobody waits: no query at all
            try:
                finished = await run_in_threadpool(self._find_terminal, list(self._events))
                waiters = [w for waiting in self._events.values() for w in waiting]
                keys = list({w.key_id for w in waiters if w.key_id is not None})
                refused = await run_in_threadpool(self._find_refused, keys) if keys else {}
            except Exception:
                logger.warning("re-checking waited-for jobs failed", exc_info=True)
                continue
            for job_id in finished:
                self.wake(job_id)
            for waiter in waiters:  # revoked or suspended meanwhile: the wait ends
                if waiter.key_id in refused:
                    waiter.refusal = refused[waiter.key_id]
                    waiter.set()


_STATE_ATTR = "job_waiters"


def job_waiters(app: FastAPI) -> JobWaiters:
    """The process's registry, started on first use."""
    settings = get_settings()
    return started_listener(
        app,
        _STATE_ATTR,
        lambda: JobWaiters(settings.redis_url, settings.sync_wait_recheck_seconds),
    )


def job_waiters_lifespan(app: FastAPI) -> contextlib.AbstractAsyncContextManager[None]:
    """Subscribe at startup, so the first v1 request finds notifications flowing."""
    return listener_lifespan(app, _STATE_ATTR, job_waiters)
