"""Claims under contention, against PostgreSQL: what a claim locks, for how long, and
what it costs per claim (docs/scheduling.md "Scale").

- A claim's charge to its account (migration 0008) is made at commit: until then the
  account's row is not locked, so other claims of that account do not wait on it.
- Concurrent claims spread over accounts through advisory locks, and take them on the
  accounts they read only, whatever the plan.
- The candidate query is planned once per connection, not at every claim.
- A transition of a job whose account has no webhook endpoint sends no look-up of its
  own (the UPDATE's RETURNING says so); a lease renewal is one statement, committed on
  its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.exc import OperationalError

from common import jobs, leases, scheduler
from common.db import autocommit_session, get_engine, session_scope
from common.models import JobStatus, WebhookDelivery, WebhookEndpoint
from tests.support.helpers import insert_account, insert_job

OWNER = "contention-test-worker"


def _pool() -> str:
    """A worker pool of this test alone: no other test's queued jobs are in it."""
    return f"contention-{uuid.uuid4().hex[:8]}"


def _account_queue(account_id: uuid.UUID, pool: str) -> tuple[float, int]:
    with session_scope() as session:
        row = session.execute(
            text("SELECT pass, queued FROM account_queues WHERE account_id = :a AND queue = :q"),
            {"a": account_id, "q": pool},
        ).one()
    return float(row[0]), int(row[1])


def test_a_claims_charge_is_made_at_commit_without_locking_the_account_before(
    services_env: object,
) -> None:
    pool = _pool()
    account = insert_account("charge-at-commit")
    job_id = insert_job(str(account), JobStatus.QUEUED, queue=pool)
    before_pass, before_queued = _account_queue(account, pool)
    assert before_queued == 1
    with session_scope() as claimer:
        [started] = jobs.start(claimer, [job_id], OWNER, 60)
        work = started.work
        # Claimed, not committed: another claim of the account can still take its row.
        with get_engine().connect() as other:
            row = other.execute(
                text(
                    "SELECT pass, queued FROM account_queues "
                    "WHERE account_id = :a AND queue = :q FOR UPDATE NOWAIT"
                ),
                {"a": account, "q": pool},
            ).one()
            other.rollback()
        assert (float(row[0]), int(row[1])) == (before_pass, 1)
    after_pass, after_queued = _account_queue(account, pool)
    assert after_queued == 0
    assert after_pass == pytest.approx(before_pass + work)  # weight 1
    _end(job_id)


def _end(job_id: uuid.UUID) -> None:
    """Leave no job PROCESSING: other tests' plans depend on how many are."""
    with session_scope() as session:
        assert jobs.fail(session, job_id, "test over")


def test_a_claim_that_rolls_back_charges_nothing(services_env: object) -> None:
    pool = _pool()
    account = insert_account("charge-rolled-back")
    job_id = insert_job(str(account), JobStatus.QUEUED, queue=pool)
    before = _account_queue(account, pool)
    with pytest.raises(RuntimeError), session_scope() as claimer:
        assert jobs.start(claimer, [job_id], OWNER, 60)
        raise RuntimeError("the claim fails before its commit")
    assert _account_queue(account, pool) == before


def _advisory_locks(conn: Any) -> int:
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = :class AND pid = pg_backend_pid()"
            ),
            {"class": scheduler.CLAIM_LOCK_CLASS},
        ).scalar_one()
    )


def test_concurrent_claims_take_different_accounts_and_lock_only_those(
    services_env: object,
) -> None:
    pool = _pool()
    for n in range(6):
        account = str(insert_account(f"spread-{n}"))
        for _ in range(2):
            insert_job(account, JobStatus.QUEUED, queue=pool)
    own = scheduler.candidates_statement(1, shared=False)
    with get_engine().connect() as first, get_engine().connect() as second:
        a = {row.account_id for row in first.execute(own, {"queue": pool})}
        b = {row.account_id for row in second.execute(own, {"queue": pool})}
        # Two accounts each (max_images 1: the head and the one that could come next),
        # not the same two, and no advisory lock on any account the claim did not read.
        assert len(a) == len(b) == 2
        assert not a & b
        assert _advisory_locks(first) == 2
        assert _advisory_locks(second) == 2
        # Everything at the head held: the shared query still reads an account.
        first.rollback()
        shared = scheduler.candidates_statement(1, shared=True)
        assert {row.account_id for row in second.execute(shared, {"queue": pool})}
        first.rollback()
        second.rollback()


def test_the_candidate_query_is_planned_once_per_connection(services_env: object) -> None:
    pool = _pool()
    account = str(insert_account("generic-plan"))
    insert_job(account, JobStatus.QUEUED, queue=pool)
    own = scheduler.candidates_statement(1, shared=False)
    with get_engine().connect() as conn:
        # psycopg prepares a statement at its 5th run (and forgets its statements at a
        # ROLLBACK: commit); PostgreSQL then tries 5 custom plans before settling on
        # the generic one if it is no worse.
        for _ in range(15):
            assert conn.execute(own, {"queue": pool}).all()
            conn.commit()
        generic, custom = conn.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '%pg_try_advisory_xact_lock%'"
            )
        ).one()
    assert generic >= 5, (generic, custom)


@contextmanager
def _statements() -> Iterator[list[str]]:
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_transition_asks_for_webhook_endpoints_only_in_its_update(
    services_env: object,
) -> None:
    quiet, listening = insert_account("no-endpoint"), insert_account("endpoint")
    with session_scope() as session:
        session.add(
            WebhookEndpoint(
                account_id=listening, url="https://hooks.example.com/x", events=["completed"]
            )
        )
    for account in (quiet, listening):
        job_id = insert_job(str(account), JobStatus.QUEUED)
        with _statements() as sent, session_scope() as session:
            assert jobs.start(session, [job_id], OWNER, 60)
            assert jobs.complete(session, job_id, [], {}, lease_owner=OWNER)
        lookups = [s for s in sent if "webhook_endpoints" in s and not s.startswith("UPDATE")]
        with session_scope() as session:
            deliveries = session.execute(
                select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job_id)
            ).all()
        if account == quiet:
            assert lookups == [], lookups
            assert deliveries == []
        else:
            # The endpoint listens to `completed` only: looked up at both transitions,
            # one delivery.
            assert len(lookups) == 2, lookups
            assert len(deliveries) == 1


def test_nowait_shows_the_lock_a_committed_claim_no_longer_holds(services_env: object) -> None:
    """Control for the first test: NOWAIT does fail on a row another transaction holds."""
    pool = _pool()
    account = insert_account("nowait-control")
    insert_job(str(account), JobStatus.QUEUED, queue=pool)
    lock = text(
        "SELECT 1 FROM account_queues WHERE account_id = :a AND queue = :q FOR UPDATE NOWAIT"
    )
    with get_engine().connect() as holder, get_engine().connect() as other:
        holder.execute(lock, {"a": account, "q": pool})
        with pytest.raises(OperationalError):
            other.execute(lock, {"a": account, "q": pool})
        holder.rollback()
        other.rollback()


def test_a_lease_renewal_in_an_autocommit_session_commits_on_its_own(
    services_env: object,
) -> None:
    """The heartbeat's renewal (worker/heartbeat.py) is one statement with no BEGIN or
    COMMIT round trips: another connection sees it before the session ends."""
    account = insert_account("renew-autocommit")
    job_id = insert_job(str(account), JobStatus.QUEUED)
    with session_scope() as session:
        [job] = jobs.start(session, [job_id], OWNER, 60)
        first_expiry = job.lease_expires_at
    with autocommit_session() as session:
        assert leases.renew_all(session, [job_id], OWNER, 600) == {job_id}
        with get_engine().connect() as other:
            seen = other.execute(
                text("SELECT lease_expires_at FROM jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one()
    assert first_expiry is not None and seen > first_expiry + timedelta(seconds=500)
    _end(job_id)
