"""Live progress: step i of N in the status body while a job runs (kept in Redis, not in
PostgreSQL), and the server-sent event stream of a job from queued to completed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from common import cancel_flags, jobs
from common import progress as progress_store
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import get_settings
from tests.support.helpers import TERMINAL, image_b64, insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.pausing import gpu_workers_paused
from tests.support.reads import load_job
from tests.support.sse import EventLog, read_stream, stream_in_thread
from tests.support.waiting import wait_until
from worker.step_monitor import CANCEL_FLAG_CHECK_SECONDS, JobCancelled, StepMonitor

# Many step callbacks for little work: DPM2 is second order, so 100 × 0.99 gives about
# 2 × 99 callbacks; a small image keeps each one short on the tiny model.
MANY_STEPS = {
    "image": image_b64(64, 64),
    "samples": 1,
    "num_inference_steps": 100,
    "strength": 0.99,
    "scheduler": "DPM2 Karras",
}


# For the event stream: enough callbacks for several progress events, fewer to wait for.
SOME_STEPS = {**MANY_STEPS, "num_inference_steps": 30}


@contextmanager
def updates_counted(account_id: str) -> Iterator[Callable[[], int]]:
    """For the block, a trigger counts the updates of the account's job rows, whoever
    makes them; yields the count so far. Only this account's rows: the live stack's
    other jobs (earlier tests', another pool's, the reconciler's sweeps) never count."""
    statements = [
        "CREATE TABLE progress_check_updates (account_id uuid NOT NULL)",
        """CREATE FUNCTION progress_check_count() RETURNS trigger AS $$
        BEGIN
            INSERT INTO progress_check_updates VALUES (NEW.account_id);
            RETURN NEW;
        END $$ LANGUAGE plpgsql""",
        """CREATE TRIGGER progress_check_count AFTER UPDATE ON jobs
        FOR EACH ROW EXECUTE FUNCTION progress_check_count()""",
    ]
    with session_scope() as session:
        for statement in statements:
            session.execute(text(statement))

    def count() -> int:
        with session_scope() as session:
            counted = session.execute(
                text("SELECT count(*) FROM progress_check_updates WHERE account_id = :id"),
                {"id": uuid.UUID(account_id)},
            )
            return int(counted.scalar_one())

    try:
        yield count
    finally:
        with session_scope() as session:
            session.execute(text("DROP TRIGGER progress_check_count ON jobs"))
            session.execute(text("DROP FUNCTION progress_check_count()"))
            session.execute(text("DROP TABLE progress_check_updates"))


def poll_until_terminal(client: Any, status_url: str, timeout: float = 600) -> list[dict]:
    """Every status body seen, at ~20 Hz, until the job is over."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        body: dict = client.get(status_url).json()
        seen.append(body)
        if body["status"] in TERMINAL:
            return seen
        assert time.monotonic() < deadline, f"still {body['status']} after {timeout}s"
        time.sleep(0.05)


def test_status_shows_live_progress_without_database_writes_per_step(
    live_stack: Stack,
) -> None:
    account_id, key = live_stack.create_account(credits=10_000)
    with updates_counted(account_id) as updates, live_stack.client(key) as client:
        submitted = client.post("/v2/ssd-img2img", json=job_body(**MANY_STEPS))
        assert submitted.status_code == 200, submitted.text
        seen = poll_until_terminal(client, submitted.json()["status_url"])
        updated = updates()

    final = seen[-1]
    assert final["status"] == "COMPLETED", final
    assert final["progress"] == 1.0
    for body in seen:
        if body["status"] == "QUEUED":
            assert body["progress"] == 0.0
            assert body["queue_position"] is not None
    running = [b for b in seen if b["status"] == "PROCESSING" and b["step"] is not None]
    assert running, "no progress seen while the job ran"
    totals = {b["total_steps"] for b in running}
    assert len(totals) == 1, totals
    total = totals.pop()
    # The pipeline's own count: DPM2 evaluates twice per step, so more than 99.
    assert total > 99, total
    steps = [b["step"] for b in running]
    assert steps == sorted(steps), steps
    assert all(1 <= step <= total for step in steps)
    assert any(0 < b["progress"] < 1 for b in running), running
    for body in running:
        assert body["progress"] == round(body["step"] / total, 4)
        assert body["eta_seconds"] is None or body["eta_seconds"] >= 0
    assert any(b["eta_seconds"] is not None for b in running)

    # The claim and the completion; besides those two, only the worker's lease
    # renewals write the row: one per LEASE_RENEW interval, whatever the number of
    # steps (+1 for a renewal in flight).
    job = load_job(submitted.json()["request_id"])
    assert job.started_at is not None and job.finished_at is not None
    running_for = (job.finished_at - job.started_at).total_seconds()
    renewals = int(running_for / get_settings().lease_renew_seconds) + 1
    assert 2 <= updated <= 2 + renewals, (
        f"{updated} updates of the job for {total} steps in {running_for:.1f}s"
    )


def _read_events(live_stack: Stack, key: str, url: str) -> EventLog:
    with live_stack.client(key) as client:
        return read_stream(client, url, EventLog())


def test_event_stream_from_queued_to_completed(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=10_000)
    _, other_key = live_stack.create_account(credits=10)
    with live_stack.client(key) as client, live_stack.client(key) as streamer:
        with gpu_workers_paused():  # so that the stream certainly sees the job QUEUED
            submitted = client.post("/v2/ssd-img2img", json=job_body(**SOME_STEPS)).json()
            events_url = f"/v2/requests/{submitted['request_id']}/events"
            log = stream_in_thread(streamer, events_url)
            wait_until(lambda: len(log.events) >= 1 or log.closed.is_set(), "streaming", 60)
            first = log.events[0]
            assert first.name == "status"
            assert first.data["status"] == "QUEUED"
            assert first.data["queue_position"] is not None
            assert first.data["request_id"] == submitted["request_id"]
            # Another tenant's job is a 404, as on every endpoint; so is a bad id.
            with live_stack.client(other_key) as other:
                response = other.get(events_url)
                assert response.status_code == 404
                assert response.json() == {"error": "request not found"}
                assert other.get("/v2/requests/not-a-uuid/events").status_code == 404
        assert log.closed.wait(600), "the stream did not end"

    assert log.error is None, log.error
    assert log.status_code == 200
    assert log.content_type is not None
    assert log.content_type.startswith("text/event-stream")
    names = log.names()
    assert names[-1] == "completed", names
    assert names.count("completed") == 1
    processing = names.index("status", 1)  # the second status event: PROCESSING
    assert log.events[processing].data["status"] == "PROCESSING"
    progress = [e.data for e in log.events if e.name == "progress"]
    assert progress, names
    assert names.index("progress") > processing
    steps = [p["step"] for p in progress]
    assert steps == sorted(set(steps)), steps  # strictly increasing
    for p in progress:
        assert p["request_id"] == submitted["request_id"]
        assert 0 < p["progress"] <= 1
        assert 1 <= p["step"] <= p["total_steps"]
    result = log.events[-1].data
    assert result["status"] == "COMPLETED"
    assert len(result["output"]) == 1
    assert result["seed"] == 7

    # A finished job's stream is its final event, at once.
    done = _read_events(live_stack, key, events_url)
    assert done.names() == ["completed"]
    assert done.events[0].data["output"] is not None


def test_step_monitor_throttles_reports_and_sees_cancel_requests(live_stack: Stack) -> None:
    """The worker's step callback, driven by a fake clock against the real Redis and
    PostgreSQL: throttled reports, the Redis cancel flag, and the database fallback."""
    account_id, key = live_stack.create_account(credits=1000)
    with live_stack.client(key) as client:
        with gpu_workers_paused():
            submitted = client.post("/v2/ssd-img2img", json=job_body()).json()
            job_id = uuid.UUID(submitted["request_id"])
            with session_scope() as session:  # as if a worker had claimed it
                assert jobs.claim(session, job_id) is not None
            _drive_step_monitor(job_id, uuid.UUID(account_id))
        # The job's message, consumed now, finds it claimed and is dropped.
        final = wait_terminal(client, submitted["status_url"])
    assert final["status"] == "CANCELLED"


def _drive_step_monitor(job_id: uuid.UUID, account_id: uuid.UUID) -> None:
    now = [100.0]
    tick = 1 / 64  # exact in binary: the 0.25 s throttle falls exactly on a step

    monitor = StepMonitor(job_id, clock=lambda: now[0], cancel_db_check_seconds=5)
    written: list[int] = []
    for step in range(1, 41):
        now[0] += tick
        monitor(step, 40)  # the denoising thread: no I/O
        monitor.poll()  # the watcher's round after it: Redis and PostgreSQL
        report = progress_store.read(job_id)
        assert report is not None
        if not written or report.step != written[-1]:
            written.append(report.step)
    assert written == [1, 17, 33, 40], written  # the first, one per 0.25 s, the last
    report = progress_store.read(job_id)
    assert report is not None
    assert report.eta_seconds == 0

    # The watcher reads the Redis flag at most every CANCEL_FLAG_CHECK_SECONDS; the step
    # after the read that saw it raised stops.
    now[0] += CANCEL_FLAG_CHECK_SECONDS
    monitor.poll()  # reads the flag: not raised
    cancel_flags.raise_flag(job_id)
    now[0] += tick
    monitor.poll()  # too soon to read it again
    monitor(41, 80)  # goes on
    now[0] += CANCEL_FLAG_CHECK_SECONDS
    monitor.poll()  # reads it
    with pytest.raises(JobCancelled) as stopped:
        monitor(42, 80)
    assert (stopped.value.done, stopped.value.total) == (42, 80)
    cancel_flags.clear(job_id)

    # Without the flag (lost with Redis), the database column stops it at the next
    # database check.
    with session_scope() as session:
        assert jobs.request_cancel(session, job_id, account_id) is not None
    cancel_flags.clear(job_id)  # the flag request_cancel raised, lost
    monitor = StepMonitor(job_id, clock=lambda: now[0], cancel_db_check_seconds=5)
    now[0] += 1
    monitor.poll()  # no database check yet
    monitor(1, 40)
    now[0] += 5
    monitor.poll()  # the database check
    with pytest.raises(JobCancelled):
        monitor(2, 40)

    # Then the worker's transition: once, with the refund.
    with session_scope() as session:
        assert jobs.finish_cancelled(session, job_id) is not None
    with session_scope() as session:
        assert jobs.finish_cancelled(session, job_id) is None
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == JobStatus.CANCELLED
    progress_store.clear(job_id)


def test_a_quiet_stream_says_keepalive_and_nothing_else(live_stack: Stack) -> None:
    """A job that stays QUEUED (in a pool no worker serves): after its `status` event
    the stream sends `: keepalive` comments (EVENTS_KEEPALIVE_SECONDS, 1 s here) and no
    event, counted from the last thing sent."""
    account_id, key = live_stack.create_account()
    job_id = insert_job(account_id, JobStatus.QUEUED)
    with live_stack.client(key) as client:
        log = stream_in_thread(client, f"/v2/requests/{job_id}/events")
        wait_until(lambda: log.comments.count("keepalive") >= 3, "three keepalives", 30)
        assert log.status_code == 200
        assert log.names() == ["status"]
        assert log.events[0].data["status"] == "QUEUED"
        assert not log.closed.is_set()
        # Its end still arrives (and leaves no QUEUED job behind in the shared pool).
        assert client.post(f"/v2/requests/{job_id}/cancel").status_code == 200
        assert log.closed.wait(30)
    assert log.names() == ["status", "cancelled"]
