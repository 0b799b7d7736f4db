"""The services the API calls, on the real PostgreSQL without HTTP in between (the
database tier, docs/development.md "Tests"): each test runs in a transaction rolled back
at its end (the `db` fixture), so what one writes no other sees."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from common import account_admin, accounts, credits, jobs, status_read
from common.db import session_scope
from common.models import Account, AccountStatus, JobStatus, LedgerReason
from common.refusals import Conflict
from tests.support.db import rolled_back_session
from tests.support.helpers import job_row


def _account(db: Session, credits_: int = 0) -> tuple[Account, str]:
    account, key = account_admin.create_account(db, f"svc-{uuid.uuid4().hex[:8]}", credits_)
    return account, key.raw


@pytest.mark.usefixtures("services_env")
def test_what_a_test_commits_is_gone_after_it() -> None:
    name = f"rolled-back-{uuid.uuid4()}"
    with rolled_back_session() as session:
        accounts.create_account(session, name)
        session.commit()  # a service's commit: a savepoint here
        assert session.execute(select(Account).where(Account.name == name)).scalar_one()
    with session_scope() as other:
        assert other.execute(select(Account).where(Account.name == name)).first() is None


def test_a_key_is_found_by_its_raw_value_only_and_says_why_it_is_refused(db: Session) -> None:
    account, raw = _account(db)
    found = accounts.find_key(db, raw)
    assert found is not None and found.account.id == account.id
    assert accounts.find_key(db, raw + "x") is None
    assert accounts.authenticate(db, raw) is not None

    second = account_admin.create_key(db, account.id, "second")
    account_admin.revoke_key(db, second.key.id)
    states = accounts.key_states(db, [found.id, second.key.id, uuid.uuid4()])
    assert states == {  # an unknown key is absent: the API answers it "invalid"
        found.id: (None, AccountStatus.ACTIVE),
        second.key.id: (states[second.key.id][0], AccountStatus.ACTIVE),
    }
    assert states[second.key.id][0] is not None  # revoked

    account_admin.set_status(db, account.id, AccountStatus.SUSPENDED)
    assert accounts.key_states(db, [found.id])[found.id][1] == AccountStatus.SUSPENDED
    assert accounts.authenticate(db, raw) is None


def test_account_facts_count_jobs_in_flight_keys_and_the_newest_ledger(db: Session) -> None:
    account, _ = _account(db, credits_=50)
    account_admin.add_credits(db, account.id, 7)
    db.add_all(
        [
            job_row(account.id, JobStatus.QUEUED),
            job_row(account.id, JobStatus.PROCESSING),
            job_row(account.id, JobStatus.COMPLETED),
        ]
    )
    account_admin.create_key(db, account.id, "two")
    db.flush()
    facts = account_admin.account_facts(db, account.id)
    assert facts.jobs_in_flight == 2
    assert facts.active_keys == 2
    assert [(e.amount, e.reason) for e in facts.recent_ledger] == [
        (7, LedgerReason.GRANT),
        (50, LedgerReason.GRANT),
    ]
    assert credits.balance_of(db, account.id) == 57


def test_job_lookups_are_one_query_and_stay_in_their_account(db: Session) -> None:
    mine, _ = _account(db)
    theirs, _ = _account(db)
    queued, done = job_row(mine.id, JobStatus.QUEUED), job_row(mine.id, JobStatus.CANCELLED)
    done.idempotency_key, done.request_hash = "order-1", "h" * 64
    other = job_row(theirs.id, JobStatus.FAILED)
    db.add_all([queued, done, other])
    db.flush()

    missing = uuid.uuid4()
    assert jobs.statuses(db, [queued.id, done.id, missing]) == {
        queued.id: JobStatus.QUEUED,
        done.id: JobStatus.CANCELLED,
    }
    assert jobs.terminal_among(db, [queued.id, done.id, other.id, missing]) == {done.id, other.id}
    assert jobs.by_idempotency_key(db, mine.id, "order-1") is done
    assert jobs.by_idempotency_key(db, theirs.id, "order-1") is None  # another tenant's key


def test_the_status_read_answers_only_for_the_keys_own_jobs(db: Session) -> None:
    mine, my_key = _account(db, credits_=9)
    theirs, _ = _account(db)
    queued, other = job_row(mine.id, JobStatus.QUEUED), job_row(theirs.id, JobStatus.QUEUED)
    db.add_all([queued, other])
    db.flush()
    conn = db.connection()

    assert status_read.read(conn, my_key + "x", queued.id) is None  # unknown key
    found = status_read.read(conn, my_key, queued.id)
    assert found is not None and found.job is not None
    assert (found.key.balance, found.key.revoked_at, found.key.account_status) == (
        9,
        None,
        AccountStatus.ACTIVE,
    )
    assert (found.job.id, found.job.status) == (queued.id, JobStatus.QUEUED)
    assert found.queue_position == 0  # alone in its account's line: next
    nothing = status_read.read(conn, my_key, other.id)  # another tenant's job: no such job
    assert nothing is not None and nothing.job is None and nothing.queue_position is None


def test_a_cancel_after_the_last_step_loses_to_the_completion_and_stays_charged(
    db: Session,
) -> None:
    """The worker checks a cancel request between denoising steps only: one arriving
    after the last step leaves the job to complete, charged, and the refunding end
    (`finish_cancelled`) can no longer happen. The owner's later cancel is a 409."""
    account, _ = _account(db, credits_=100)
    job = job_row(account.id, JobStatus.PROCESSING, cost=20)
    job.lease_owner = "worker-1"
    db.add(job)
    db.flush()
    credits.debit_for_job(db, account.id, job.id, 20)

    assert jobs.cancel(db, job.id, account.id)[1] is False  # requested, not ended
    assert jobs.complete(db, job.id, ["out/0.jpg"], {}, lease_owner="worker-1")
    assert jobs.finish_cancelled(db, job.id, lease_owner="worker-1") is None
    db.expire_all()
    done = jobs.get_job(db, job.id)
    assert done is not None and done.status == JobStatus.COMPLETED
    assert done.cancel_requested_at is not None  # asked, too late
    assert credits.balance_of(db, account.id) == 80
    with pytest.raises(Conflict, match="only QUEUED and PROCESSING"):
        jobs.cancel(db, job.id, account.id)
