"""A second API process on the live stack whose jobs go to a worker pool of their own
(GPU_QUEUE), which no worker serves.

Its jobs therefore stay QUEUED for as long as the test wants: the test sees each job's
wake-up arrive in the pool's Redis queue (sent once the job is committed), then lets
the job finish by moving it into the real workers' pool (`run_on_the_workers`), by
failing it, or not at all.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import redis
from sqlalchemy import select, text, update

from cli import stack as cli_stack
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import get_settings
from common.tasks import wake_gpu_workers
from devstack.ports import free_port
from devstack.process import (
    log_path,
    log_tail,
    pidfile_path,
    pidfile_process_alive,
    stop_pidfile,
)
from tests.support.live import Stack


@dataclass(frozen=True)
class HeldApi:
    url: str
    queue: str
    redis_url: str
    application_name: str  # of its PostgreSQL connections

    def flush_database_statistics(self) -> None:
        """Make PostgreSQL's counters include everything this API did so far.

        A backend publishes its counters up to ~10 s after the fact, except when it
        exits: end the API's idle connections and wait for them to go (its pool
        reconnects on the next checkout, pre-ping).
        """
        with session_scope() as session:
            session.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE application_name = :name AND state = 'idle'"
                ),
                {"name": self.application_name},
            )

    def queued_messages(self) -> int:
        """Wake-ups waiting in the held pool's queue: one per job it accepted."""
        with redis.Redis.from_url(self.redis_url) as client:
            return int(client.llen(self.queue))

    def wait_messages(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.queued_messages() < count:
            assert time.monotonic() < deadline, f"{count} messages never reached {self.queue}"
            time.sleep(0.05)


def queued_job_ids(account_id: str) -> list[uuid.UUID]:
    with session_scope() as session:
        rows = session.execute(
            select(Job.id).where(
                Job.account_id == uuid.UUID(account_id), Job.status == JobStatus.QUEUED
            )
        )
        return list(rows.scalars())


def run_on_the_workers(job_ids: list[uuid.UUID]) -> None:
    """Move held jobs into the real workers' pool and wake its workers."""
    pool = get_settings().gpu_queue
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(queue=pool))
    wake_gpu_workers(pool, len(job_ids))


@contextlib.contextmanager
def held_api(live_stack: Stack, name: str, **settings: str) -> Iterator[HeldApi]:
    """Start `api-<name>` with a queue of its own; `settings` are extra env variables."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    queue = f"held-{name}-{uuid.uuid4().hex[:8]}"
    env = {**live_stack.env, "API_URL": url, "PUBLIC_BASE_URL": url, "GPU_QUEUE": queue}
    env.update(settings)
    process = f"api-{name}"
    pidfile = pidfile_path(live_stack.state_dir, process)
    separator = "&" if "?" in env["DATABASE_URL"] else "?"
    env["DATABASE_URL"] += f"{separator}application_name={process}"
    cli_stack.start_api(live_stack.state_dir, env, port, name=process)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert pidfile_process_alive(pidfile), log_tail(log_path(live_stack.state_dir, process))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{process} did not answer /health"
            time.sleep(0.1)
        yield HeldApi(url=url, queue=queue, redis_url=env["REDIS_URL"], application_name=process)
    finally:
        stop_pidfile(pidfile, timeout=30)
