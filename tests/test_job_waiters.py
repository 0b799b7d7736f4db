"""The per-process waiter registry against the real Redis and PostgreSQL: woken by a
notification, by the one-query re-check when a notification is lost, and again after
its Redis connection is cut."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.job_waiters import JobWaiters, terminal_job_ids
from common import accounts, credits, notify
from common.db import session_scope
from common.models import Job, JobStatus

# Generous bounds: they only stop a broken wake-up from hanging the run.
LIVENESS_SECONDS = 30


@pytest.fixture
def redis_url(services_env: tuple[Path, dict[str, str]]) -> str:
    return services_env[1]["REDIS_URL"]


def _job(status: JobStatus) -> uuid.UUID:
    """A job row in `status`, of a fresh account."""
    with session_scope() as session:
        account = accounts.create_account(session, "waiters", initial_credits=100)
        job_id = uuid.uuid4()
        session.add(
            Job(
                id=job_id,
                account_id=account.id,
                status=status,
                params={},
                seed=1,
                cost=20,
                input_key="inputs/none.png",
            )
        )
        session.flush()
        credits.debit_for_job(session, account.id, job_id, 20)
    return job_id


async def _until(condition: Callable[[], bool]) -> None:
    # Polls on purpose: the registry exposes plain flags, not events, for its state.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def _run(redis_url: str, recheck: float, body: Callable[[JobWaiters], Awaitable[None]]) -> None:
    async def main() -> None:
        waiters = JobWaiters(redis_url, recheck_seconds=recheck)
        waiters.start()
        try:
            await asyncio.wait_for(_until(lambda: waiters.subscribed), LIVENESS_SECONDS)
            await body(waiters)
        finally:
            await waiters.stop()

    asyncio.run(main())


def test_notification_wakes_only_that_jobs_waiters(redis_url: str) -> None:
    async def body(waiters: JobWaiters) -> None:
        job, other = uuid.uuid4(), uuid.uuid4()
        with (
            waiters.register(job) as first,
            waiters.register(job) as second,
            waiters.register(other) as unrelated,
        ):
            assert waiters.waiting_count() == 3
            notify.publish_job_finished(job, JobStatus.COMPLETED)
            await asyncio.wait_for(first.wait(), LIVENESS_SECONDS)
            await asyncio.wait_for(second.wait(), LIVENESS_SECONDS)
            assert not unrelated.is_set()
        assert waiters.waiting_count() == 0

    # An hour between re-checks: only the notification can wake anyone here.
    _run(redis_url, 3600, body)


def test_recheck_finds_a_job_whose_notification_was_lost(redis_url: str) -> None:
    finished = _job(JobStatus.FAILED)  # terminal, and nobody announced it
    running = _job(JobStatus.PROCESSING)
    assert terminal_job_ids([finished, running, uuid.uuid4()]) == {finished}

    async def body(waiters: JobWaiters) -> None:
        with waiters.register(finished) as woken, waiters.register(running) as still:
            await asyncio.wait_for(woken.wait(), LIVENESS_SECONDS)
            assert not still.is_set()

    _run(redis_url, 0.2, body)


def test_subscribing_rechecks_at_once_and_survives_losing_redis(redis_url: str) -> None:
    finished_before = _job(JobStatus.COMPLETED)

    async def main() -> None:
        # No periodic re-check for an hour: only the re-check that follows each
        # subscription can find a job that finished while nobody listened.
        waiters = JobWaiters(redis_url, recheck_seconds=3600)
        with waiters.register(finished_before) as woken:
            waiters.start()
            try:
                await asyncio.wait_for(woken.wait(), LIVENESS_SECONDS)
                # Cut every pub/sub connection, as a Redis restart would...
                with redis.Redis.from_url(redis_url) as admin:
                    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await asyncio.wait_for(
                    _until(lambda: waiters.subscriptions >= 2 and waiters.subscribed),
                    LIVENESS_SECONDS,
                )
                # ...and notifications flow again on the new connection.
                job = uuid.uuid4()
                with waiters.register(job) as again:
                    notify.publish_job_finished(job, JobStatus.FAILED)
                    await asyncio.wait_for(again.wait(), LIVENESS_SECONDS)
            finally:
                await waiters.stop()

    asyncio.run(main())


def test_publishing_without_redis_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), retries=0))
    monkeypatch.setattr(notify, "_redis", lambda: unreachable)
    notify.publish_job_finished(uuid.uuid4(), JobStatus.COMPLETED)
    assert "could not publish" in caplog.text


def test_foreign_messages_are_ignored() -> None:
    event = notify.JobFinished(uuid.uuid4(), JobStatus.CANCELLED)
    assert notify.decode(notify.encode(event)) == event
    for junk in ("", "null", "[]", '{"id": "x", "status": "COMPLETED"}', '{"id": 1}', b"\xff"):
        assert notify.decode(junk) is None
