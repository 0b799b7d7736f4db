"""Leases (issue 5): only the worker holding a job's lease may renew it or record its
end, and a worker whose lease was taken back stops denoising at its next step."""

from __future__ import annotations

import uuid

import pytest

from common import jobs, leases
from common.db import session_scope
from common.models import Job, JobStatus
from tests.support.helpers import insert_job
from tests.support.live import Stack
from tests.support.waiting import wait_until
from worker.heartbeat import LeaseHeartbeat
from worker.step_monitor import LeaseLost, StepMonitor


def claimed_by(account_id: str, owner: str) -> uuid.UUID:
    job_id = insert_job(account_id, JobStatus.QUEUED)
    with session_scope() as session:
        assert jobs.claim(session, job_id, lease_owner=owner, lease_seconds=60) is not None
    return job_id


def give_lease_to(job_id: uuid.UUID, owner: str) -> None:
    """What the reconciler and another worker's claim do together: the job is now
    another claim's."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_owner = owner


def test_only_the_lease_owner_renews_and_records_the_end(live_stack: Stack) -> None:
    account_id, _ = live_stack.create_account(credits=0)
    job_id = claimed_by(account_id, "worker-a/1")
    give_lease_to(job_id, "worker-b/2")
    with session_scope() as session:
        assert not leases.renew(session, job_id, "worker-a/1", 60)
        assert not jobs.complete(session, job_id, ["k"], {}, lease_owner="worker-a/1")
        assert not jobs.fail(session, job_id, "late", lease_owner="worker-a/1")
        assert jobs.request_cancel(session, job_id, uuid.UUID(account_id)) is not None
        assert jobs.finish_cancelled(session, job_id, lease_owner="worker-a/1") is None
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.PROCESSING
        assert leases.renew(session, job_id, "worker-b/2", 60)
        ended = jobs.finish_cancelled(session, job_id, lease_owner="worker-b/2")
        assert ended is not None and ended.status == JobStatus.CANCELLED


def test_a_worker_that_lost_its_lease_stops_at_the_next_step(live_stack: Stack) -> None:
    account_id, _ = live_stack.create_account(credits=0)
    job_id = claimed_by(account_id, "worker-a/1")
    try:
        with LeaseHeartbeat([job_id], "worker-a/1", lease_seconds=60, period=0.05) as heartbeat:
            monitor = StepMonitor(job_id, lease_lost=lambda: heartbeat.lost(job_id))
            monitor(1, 10)  # still held: the step goes on
            give_lease_to(job_id, "worker-b/2")
            wait_until(lambda: heartbeat.lost(job_id), "the heartbeat noticing", timeout=30)
            with pytest.raises(LeaseLost):
                monitor(2, 10)
    finally:  # end it, or the reconciler would send it to the shared worker later
        with session_scope() as session:
            jobs.fail(session, job_id, "ended by the test")


def test_a_job_past_the_longest_run_time_loses_its_lease_and_stops(live_stack: Stack) -> None:
    """After `max_seconds` (BROKER_VISIBILITY_TIMEOUT_SECONDS) the heartbeat stops
    renewing; once the lease ran out the job is no longer the worker's, and it stops."""
    account_id, _ = live_stack.create_account(credits=0)
    job_id = claimed_by(account_id, "worker-a/1")
    try:
        with LeaseHeartbeat(
            [job_id], "worker-a/1", lease_seconds=0.5, period=0.05, max_seconds=0.2
        ) as heartbeat:
            monitor = StepMonitor(job_id, lease_lost=lambda: heartbeat.lost(job_id))
            monitor(1, 10)
            wait_until(lambda: heartbeat.lost(job_id), "the lease given up", timeout=30)
            with pytest.raises(LeaseLost):
                monitor(2, 10)
    finally:
        with session_scope() as session:
            jobs.fail(session, job_id, "ended by the test")
