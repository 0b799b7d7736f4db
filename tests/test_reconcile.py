"""The reconciler (common/reconcile.py) through `ssd-img2img reconcile`, on a database of
its own: which jobs it takes back, fails, cancels and sends again, what it leaves
alone, the messages it sends, and that concurrent runs share the work. The command and
the service run in this process, with the settings of that database
(tests/support/db.py `own_database`).

Time is simulated by back-dating rows, with margins of minutes on each side of every
deadline, so that a slow machine never moves a job across one; the queue is one no
worker consumes, on the shared Redis.
The end-to-end behaviour with real workers is in tests/test_faults.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from common.db import session_scope
from common.models import Account, CreditLedgerEntry, Job, JobStatus, LedgerReason
from common.reconcile import reconcile as reconcile_service
from common.tasks import MAX_WAKEUPS
from tests.support.db import own_database

COST = 20
SETTINGS = {
    "MAX_ATTEMPTS": "3",
    "REDISPATCH_AFTER_SECONDS": "600",  # re-sends wait 600 s, 1200 s, 2400 s, ...
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": "3600",  # jobs claimed without a lease
}


@pytest.fixture
def reconcile_env(services_env: tuple[object, dict[str, str]]) -> Iterator[dict[str, str]]:
    """The shared services' settings, with a fresh migrated database and a queue that
    nothing consumes."""
    env = services_env[1]
    queue = f"reconcile-check-{uuid.uuid4().hex[:8]}"
    with own_database({**env, **SETTINGS, "GPU_QUEUE": queue}, "reconcile_check") as checked:
        yield checked
    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        client.delete(queue)


def reconcile(env: dict[str, str], *options: str) -> dict[str, Any]:
    """`ssd-img2img reconcile --json OPTIONS`: its report."""
    result = CliRunner().invoke(main, ["reconcile", "--json", *options], env=env)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wake_ups(env: dict[str, str]) -> int:
    """Wake-ups waiting in the pool's queue (nothing consumes it here)."""
    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        return int(client.llen(env["GPU_QUEUE"]))


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def seed_jobs(
    env: dict[str, str], jobs: dict[str, dict[str, Any]]
) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """An account (balance 1000, its jobs already debited) and jobs named by the test."""
    ids = {name: uuid.uuid4() for name in jobs}
    account_id = uuid.uuid4()
    with session_scope(env["DATABASE_URL"]) as session:
        session.add(Account(id=account_id, name="reconcile", balance=1000))
        session.flush()
        for name, columns in jobs.items():
            session.add(
                Job(
                    id=ids[name],
                    account_id=account_id,
                    params={"prompt": name},
                    seed=1,
                    cost=COST,
                    input_key=f"inputs/{account_id}/{name}.png",
                    queue=env["GPU_QUEUE"],
                    **columns,
                )
            )
            session.flush()
            session.add(
                CreditLedgerEntry(
                    account_id=account_id,
                    job_id=ids[name],
                    amount=-COST,
                    reason=LedgerReason.JOB_DEBIT,
                )
            )
    return account_id, ids


def processing(attempts: int, lease_in: float | None, **extra: Any) -> dict[str, Any]:
    """A PROCESSING job whose lease ends `lease_in` seconds from now (None: no lease)."""
    return {
        "status": JobStatus.PROCESSING,
        "attempts": attempts,
        "started_at": extra.pop("started_at", ago(30)),
        "lease_owner": None if lease_in is None else "gone:1/abc",
        "lease_expires_at": None if lease_in is None else ago(-lease_in),
        **extra,
    }


def queued(created: float, dispatched: float | None = None, count: int = 0) -> dict[str, Any]:
    """A QUEUED job created `created` seconds ago, re-sent `dispatched` seconds ago."""
    return {
        "status": JobStatus.QUEUED,
        "created_at": ago(created),
        "dispatched_at": None if dispatched is None else ago(dispatched),
        "dispatch_count": count,
    }


def test_reconcile_takes_back_fails_cancels_and_resends_exactly_the_due_jobs(
    reconcile_env: dict[str, str],
) -> None:
    db_url = reconcile_env["DATABASE_URL"]
    account_id, ids = seed_jobs(
        reconcile_env,
        {
            "expired": processing(attempts=1, lease_in=-10),
            "expired_last_attempt": processing(attempts=3, lease_in=-10),
            "expired_cancel_asked": processing(
                attempts=1, lease_in=-10, cancel_requested_at=ago(20)
            ),
            "leased": processing(attempts=1, lease_in=600),
            # Claimed by a worker without leases (before this version): it counts as
            # leased for the visibility timeout (3600 s here) from its start.
            "unleased_old": processing(attempts=1, lease_in=None, started_at=ago(7200)),
            "unleased_recent": processing(attempts=1, lease_in=None, started_at=ago(600)),
            "queued_lost": queued(created=1200),
            "queued_recent": queued(created=10),
            "resent_backing_off": queued(created=5000, dispatched=1000, count=1),  # waits 1200
            "resent_due": queued(created=5000, dispatched=1300, count=1),
            "completed": {"status": JobStatus.COMPLETED, "lease_expires_at": ago(100)},
        },
    )

    report = reconcile(reconcile_env)

    by_name = {str(job_id): name for name, job_id in ids.items()}

    def named(key: str) -> set[str]:
        return {by_name[job_id] for job_id in report[key]}

    assert named("requeued") == {"expired", "unleased_old"}
    assert named("failed") == {"expired_last_attempt"}
    assert named("cancelled") == {"expired_cancel_asked"}
    assert named("redispatched") == {"queued_lost", "resent_due"}
    # One wake-up of the pool per job put back or overdue, sent after the commit.
    assert wake_ups(reconcile_env) == 4

    with session_scope(db_url) as session:
        jobs: dict[str, Job] = {}
        for name, job_id in ids.items():
            found = session.get(Job, job_id)
            assert found is not None
            session.expunge(found)
            jobs[name] = found
        refunded = set(
            session.execute(
                select(CreditLedgerEntry.job_id).where(
                    CreditLedgerEntry.reason == LedgerReason.JOB_REFUND
                )
            ).scalars()
        )
        balance = session.execute(
            select(Account.balance).where(Account.id == account_id)
        ).scalar_one()
    for name in ("expired", "unleased_old"):
        job = jobs[name]
        assert job.status == JobStatus.QUEUED
        assert (job.lease_owner, job.lease_expires_at) == (None, None)
        assert job.dispatch_count == 1
        assert job.attempts == 1  # the next claim counts the next attempt
    assert jobs["expired_last_attempt"].status == JobStatus.FAILED
    assert "3 attempts" in (jobs["expired_last_attempt"].error or "")
    assert jobs["expired_cancel_asked"].status == JobStatus.CANCELLED
    assert refunded == {ids["expired_last_attempt"], ids["expired_cancel_asked"]}
    assert balance == 1000 + 2 * COST
    assert jobs["leased"].status == jobs["unleased_recent"].status == JobStatus.PROCESSING
    assert jobs["resent_due"].dispatch_count == 2
    assert (jobs["queued_recent"].dispatched_at, jobs["queued_recent"].dispatch_count) == (None, 0)
    assert jobs["resent_backing_off"].dispatch_count == 1
    assert jobs["completed"].status == JobStatus.COMPLETED

    # Right after, nothing is due: every re-sent job waits again, with a longer wait.
    again = reconcile(reconcile_env)
    assert again == {
        "requeued": [],
        "failed": [],
        "cancelled": [],
        "redispatched": [],
    }
    # After a known loss of Redis's data, the operator re-sends every QUEUED job at once.
    every = reconcile(reconcile_env, "--every-queued")
    queued_now = {"expired", "unleased_old", "queued_lost", "queued_recent"}
    queued_now |= {"resent_backing_off", "resent_due"}
    assert {by_name[i] for i in every["redispatched"]} == queued_now


def test_concurrent_reconcilers_share_the_work(reconcile_env: dict[str, str]) -> None:
    """Several replicas at once (FOR UPDATE SKIP LOCKED): every due job is handled by
    exactly one of them, and sent exactly once."""
    count = 120
    _, ids = seed_jobs(
        reconcile_env,
        {f"lost-{i}": queued(created=3000) for i in range(count)}
        | {f"dead-{i}": processing(attempts=1, lease_in=-5) for i in range(count)},
    )
    # The service itself in three threads (click's runner swaps sys.stdout: one at a time).
    with ThreadPoolExecutor(max_workers=3) as pool:
        passes = list(pool.map(lambda _: reconcile_service(), range(3)))
    reports = [json.loads(json.dumps(p.as_dict())) for p in passes]

    handled = [job_id for r in reports for key in ("requeued", "redispatched") for job_id in r[key]]
    assert sorted(handled) == sorted(str(job_id) for job_id in ids.values())
    # One wake-up per job each pass handled, at most MAX_WAKEUPS per pass.
    expected = sum(min(len(r["requeued"]) + len(r["redispatched"]), MAX_WAKEUPS) for r in reports)
    assert wake_ups(reconcile_env) == expected
