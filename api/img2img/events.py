"""`GET /v2/requests/{id}/events`: a job's life as server-sent events, from queued to done.

Events (each `data:` is one JSON object):

- `status`: the status body (as `GET .../status`), when the stream opens and whenever
  the status or the queue position changes (QUEUED with `queue_position`, PROCESSING);
- `progress`: `request_id`, `step`, `total_steps`, `progress` (0-1), `eta_seconds`, as
  the worker reports them (a few per second at most; a slow reader skips steps);
- `completed`, `failed` or `cancelled`: the result body (as `GET /v2/requests/{id}`),
  then the stream ends. A job already finished gets only this event.
- `error`: `{"error", "status"}` (401 or 403) when the stream's API key is revoked or its
  account suspended while it is open; then the stream ends (the job itself goes on).

A comment line (`: keepalive`) after `EVENTS_KEEPALIVE_SECONDS` without an event keeps
proxies from closing an idle stream. The stream holds no database connection and no
thread while it waits: it sleeps on its inbox in the process's `JobEventHub`
(api/job_events.py) and reads the job from PostgreSQL only when its state changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentAccount, SettingsDep, StorageDep, caller_key_id
from api.errors import ApiError, error_responses, parse_id
from api.img2img import live_progress
from api.img2img.views import result_response, status_body
from api.job_events import Inbox, JobEventHub, job_events
from api.metrics import EVENT_STREAMS
from api.open_work import Slot, Work, open_work
from common import jobs, progress
from common.db import session_scope
from common.limits import effective_limits
from common.models import JobStatus
from common.settings import Settings
from common.storage import Storage

router = APIRouter(tags=["ssd-img2img"])

_DESCRIPTION = """Server-sent events (`text/event-stream`) of one request until it ends:
`status` (QUEUED with `queue_position`, PROCESSING), `progress` (`step`, `total_steps`,
`progress`, `eta_seconds`), then one of `completed`, `failed`, `cancelled` carrying the
result body of `GET /v2/requests/{id}`, and the stream closes. `: keepalive` comments
after 15 s without an event (EVENTS_KEEPALIVE_SECONDS)."""


@dataclass(frozen=True)
class Snapshot:
    """The job as read once: its status body, or, once it is over, its final event."""

    status: JobStatus
    status_body: dict[str, Any]
    final: tuple[str, str] | None  # (event name, JSON body) of a finished job
    attempt: int  # claims so far: a job taken back and claimed again counts one more


def _exists(job_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    with session_scope() as session:
        return jobs.get_job(session, job_id, account_id=account_id) is not None


def _snapshot(
    job_id: uuid.UUID,
    account_id: uuid.UUID,
    request: Request,
    settings: Settings,
    store: Storage,
) -> Snapshot | None:
    with session_scope() as session:
        job = jobs.get_job(session, job_id, account_id=account_id)
        if job is None:
            return None
        body = status_body(session, job, settings).model_dump()
        final = None
        if job.status.is_terminal:
            response = result_response(job, request, settings, store)
            final = (job.status.value.lower(), bytes(response.body).decode())
        return Snapshot(job.status, body, final, job.attempts)


@dataclass
class _Read:
    started_at: float
    task: asyncio.Task[Snapshot | None]


# The read in progress of each job (and base URL, which the result's links carry): the
# streams of one job woken by the same news share one database read instead of making
# one each (a finished job followed by 200 streams is one read, not 200). A task of its
# own, so that a stream whose client goes away cancels only its own wait.
_reads: dict[tuple[uuid.UUID, str], _Read] = {}


async def shared_snapshot(stream: _Stream, not_before: float) -> Snapshot | None:
    """The job's snapshot from a read started at `not_before` or later: the one in
    progress if it started late enough, else a new one that later streams may join."""
    key = (stream.job_id, str(stream.request.base_url))
    current = _reads.get(key)
    if current is None or current.started_at < not_before:
        current = _Read(time.monotonic(), asyncio.ensure_future(_read(stream)))
        _reads[key] = current
        current.task.add_done_callback(functools.partial(_forget, key, current))
    return await asyncio.shield(current.task)


async def _read(stream: _Stream) -> Snapshot | None:
    return await run_in_threadpool(
        _snapshot, stream.job_id, stream.account_id, stream.request, stream.settings, stream.store
    )


def _forget(key: tuple[uuid.UUID, str], read: _Read, task: asyncio.Task[Snapshot | None]) -> None:
    if _reads.get(key) is read:
        del _reads[key]
    if not task.cancelled():
        task.exception()  # retrieved (each waiter raises it): no "never retrieved" warning


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


def _progress_event(job_id: uuid.UUID, report: progress.Progress) -> str:
    fields = live_progress.from_report(report)
    body = {"request_id": str(job_id), "status": JobStatus.PROCESSING.value, **fields}
    return _event("progress", json.dumps(body))


class _Stream:
    """One client's stream: what it has sent so far decides what is news."""

    def __init__(
        self,
        job_id: uuid.UUID,
        account_id: uuid.UUID,
        request: Request,
        settings: Settings,
        store: Storage,
        key_id: uuid.UUID | None = None,
    ) -> None:
        self.job_id = job_id
        self.account_id = account_id
        self.key_id = key_id  # its API key: the stream ends if it is revoked
        self.request = request
        self.settings = settings
        self.store = store
        self.status: JobStatus | None = None
        self.status_body: dict[str, Any] = {}
        self.step_sent = -1
        self.attempt = 0
        self.done = False

    async def read(self, not_before: float) -> list[str]:
        """Read the job (a read started at `not_before` or later, maybe shared with the
        job's other streams); the events that says, if any."""
        snap = await shared_snapshot(self, not_before)
        if snap is None:  # the row vanished (an account removed): nothing more to say
            self.done = True
            return []
        if snap.final is not None:
            self.done = True
            return [_event(*snap.final)]
        events = []
        if (snap.status, snap.status_body.get("queue_position")) != (
            self.status,
            self.status_body.get("queue_position"),
        ):
            events.append(_event("status", json.dumps(snap.status_body)))
        if (snap.status, snap.attempt) != (self.status, self.attempt):
            # A job taken back and claimed again counts its steps anew, even when this
            # stream never saw it QUEUED in between (the new claim's "started" notice
            # brought it here).
            self.step_sent = -1
        self.status, self.status_body, self.attempt = snap.status, snap.status_body, snap.attempt
        step = snap.status_body.get("step")
        if snap.status == JobStatus.PROCESSING and step is not None and step > self.step_sent:
            self.step_sent = step
            events.append(_event("progress", json.dumps(_progress_fields(snap.status_body))))
        return events

    async def on_news(self, inbox: Inbox) -> list[str]:
        if inbox.refusal is not None:  # the key was revoked, or the account suspended
            self.done = True
            refusal = {"error": inbox.refusal.message, "status": inbox.refusal.status_code}
            return [_event("error", json.dumps(refusal))]
        arrived_at = inbox.arrived_at
        report, recheck, swept = inbox.take()
        events: list[str] = []
        state_changed = swept is not None and swept.status != self.status
        # Progress of a job we still think QUEUED: its "started" notice was lost or is late.
        started_unseen = report is not None and self.status == JobStatus.QUEUED
        if recheck or state_changed or started_unseen:
            events += await self.read(not_before=arrived_at)
            if self.done:
                return events
        elif (
            swept is not None
            and self.status == JobStatus.QUEUED
            and swept.queue_position != self.status_body.get("queue_position")
        ):
            self.status_body = {**self.status_body, "queue_position": swept.queue_position}
            events.append(_event("status", json.dumps(self.status_body)))
        if (
            report is not None
            and self.status == JobStatus.PROCESSING
            and report.step > self.step_sent
        ):
            self.step_sent = report.step
            events.append(_progress_event(self.job_id, report))
        return events


def _progress_fields(status: dict[str, Any]) -> dict[str, Any]:
    names = ("request_id", "status", "progress", "step", "total_steps", "eta_seconds")
    return {name: status.get(name) for name in names}


async def _run(
    stream: _Stream, hub: JobEventHub, slot: Slot, keepalive_seconds: float
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    # Registered before the first read: nothing after it goes unseen.
    with (
        slot,
        hub.register(stream.job_id, stream.key_id) as inbox,
        EVENT_STREAMS.track_inprogress(),
    ):
        last_sent = loop.time()
        for event in await stream.read(not_before=time.monotonic()):
            yield event
        while not stream.done:
            # Counted from the last thing sent, not the last wake-up: the sweeper wakes
            # every stream every few seconds, mostly with nothing to say.
            wait = last_sent + keepalive_seconds - loop.time()
            if wait <= 0:
                last_sent = loop.time()
                yield ": keepalive\n\n"
                continue
            try:
                async with asyncio.timeout(wait):
                    await inbox.wake.wait()
            except TimeoutError:
                continue
            events = await stream.on_news(inbox)
            if events:
                last_sent = loop.time()
            for event in events:
                yield event


@router.get(
    "/v2/requests/{request_id}/events",
    response_class=StreamingResponse,
    description=_DESCRIPTION,
    responses={
        200: {"description": "The event stream.", "content": {"text/event-stream": {}}},
        **error_responses(401, 404),
    },
)
async def stream_events(
    request_id: str,
    request: Request,
    settings: SettingsDep,
    store: StorageDep,
    account: CurrentAccount,
) -> StreamingResponse:
    job_id = parse_id(request_id, "request")
    # Counted from here until the stream ends (api/open_work.py): 429 past the bound.
    slot = open_work.take(Work.STREAM, account.id, effective_limits(account, settings).max_streams)
    # Checked before the stream starts, so that a missing or another tenant's job is a
    # plain 404 (the stream itself reads the job again, after registering its inbox).
    with _released_on_error(slot):
        if not await run_in_threadpool(_exists, job_id, account.id):
            raise ApiError(404, "request not found")
    stream = _Stream(job_id, account.id, request, settings, store, caller_key_id(request))
    # The stream's end releases the slot; this, a response dropped before it streamed.
    weakref.finalize(stream, slot.release)
    return StreamingResponse(
        _run(stream, job_events(request.app), slot, settings.events_keepalive_seconds),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@contextlib.contextmanager
def _released_on_error(slot: Slot) -> Iterator[None]:
    try:
        yield
    except BaseException:
        slot.release()
        raise
