"""The bound of each account line's head (`account_queues.head_seq`, migration 0011),
against PostgreSQL: no QUEUED job is ever below it, it follows the head as jobs leave
the line in any way, and claims start reading there, past the index entries of the jobs
claimed before (docs/scheduling.md "Scale")."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import text

from common import jobs, scheduler
from common.db import get_engine, session_scope
from common.models import JobStatus
from tests.support.helpers import insert_account, insert_job

OWNER = "line-head-test-worker"


def _pool() -> str:
    """A worker pool of this test alone: no other test's queued jobs are in it."""
    return f"line-head-{uuid.uuid4().hex[:8]}"


def _line(account: uuid.UUID, pool: str) -> tuple[int, int | None, int]:
    """(head_seq, the first QUEUED job's queue_seq, next_seq) of the account's line."""
    with session_scope() as session:
        head, first, next_seq = session.execute(
            text(
                "SELECT q.head_seq, (SELECT min(queue_seq) FROM jobs WHERE account_id = "
                ":a AND queue = :q AND status = 'QUEUED'), q.next_seq "
                "FROM account_queues AS q WHERE q.account_id = :a AND q.queue = :q"
            ),
            {"a": account, "q": pool},
        ).one()
    return int(head), first, int(next_seq)


def _seq(job_id: uuid.UUID) -> int:
    with session_scope() as session:
        return int(
            session.execute(
                text("SELECT queue_seq FROM jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one()
        )


def _claim(pool: str) -> list[uuid.UUID]:
    with session_scope() as session:
        return [job.id for job in scheduler.claim_next(session, pool, OWNER, 60)]


def _put_back(job_id: uuid.UUID) -> None:
    """PROCESSING → QUEUED as the reconciler's requeue does (the job keeps its place)."""
    with session_scope() as session:
        session.execute(_PUT_BACK, {"id": job_id})


_PUT_BACK = text(
    "UPDATE jobs SET status = 'QUEUED', lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id = :id AND status = 'PROCESSING'"
)


def _end(*job_ids: uuid.UUID) -> None:
    """Leave no job PROCESSING: other tests' plans depend on how many are."""
    with session_scope() as session:
        for job_id in job_ids:
            jobs.fail(session, job_id, "test over")


def test_the_bound_follows_the_head_through_claims_cancels_and_an_empty_line(
    services_env: object,
) -> None:
    pool = _pool()
    account = insert_account("line-head")
    queued = [insert_job(str(account), JobStatus.QUEUED, queue=pool) for _ in range(5)]
    seqs = [_seq(job_id) for job_id in queued]
    assert _line(account, pool)[:2] == (seqs[0], seqs[0])

    assert _claim(pool) == [queued[0]]
    assert _line(account, pool)[:2] == (seqs[1], seqs[1])
    with session_scope() as session:  # a job behind the head leaves: the head stays
        assert jobs.cancel_queued(session, queued[2], account) is not None
    assert _line(account, pool)[:2] == (seqs[1], seqs[1])
    with session_scope() as session:  # the head leaves: the bound moves to the next
        assert jobs.cancel_queued(session, queued[1], account) is not None
    assert _line(account, pool)[:2] == (seqs[3], seqs[3])
    assert _claim(pool) == [queued[3]]
    assert _claim(pool) == [queued[4]]

    head, first, next_seq = _line(account, pool)
    assert first is None and head == next_seq + 1  # empty: the next place to be given
    newcomer = insert_job(str(account), JobStatus.QUEUED, queue=pool)
    assert _line(account, pool)[:2] == (_seq(newcomer), _seq(newcomer))
    assert _claim(pool) == [newcomer]
    _end(queued[0], queued[3], queued[4], newcomer)


def test_a_job_put_back_in_line_lowers_the_bound_and_runs_first(services_env: object) -> None:
    pool = _pool()
    account = insert_account("line-head-requeue")
    queued = [insert_job(str(account), JobStatus.QUEUED, queue=pool) for _ in range(3)]
    assert _claim(pool) == [queued[0]]
    assert _claim(pool) == [queued[1]]
    assert _line(account, pool)[0] == _seq(queued[2])
    _put_back(queued[0])  # its worker died: it keeps its place, first in line
    assert _line(account, pool)[:2] == (_seq(queued[0]), _seq(queued[0]))
    assert _claim(pool) == [queued[0]]
    assert _claim(pool) == [queued[2]]
    _end(*queued)


def test_a_put_back_committed_while_a_claim_commits_is_not_passed_over(
    services_env: object,
) -> None:
    """The race the bound must survive: a claim of the head commits (and moves the
    bound up) while a job behind the head is put back in line by another transaction
    that commits first. The claim's look-up of the new head must see that job."""
    pool = _pool()
    account = insert_account("line-head-race")
    first, second, third = (
        insert_job(str(account), JobStatus.QUEUED, queue=pool) for _ in range(3)
    )
    with session_scope() as session:
        jobs.start(session, [second], OWNER, 60)  # out of order: `first` stays the head
    assert _line(account, pool)[0] == _seq(first)

    claimer = get_engine().connect()
    claimer.execute(text("UPDATE jobs SET status = 'PROCESSING' WHERE id = :id"), {"id": first})
    claimer_pid = claimer.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with get_engine().connect() as requeuer:
        # Holds the line's row (its enqueue lowered the bound) until it commits.
        requeuer.execute(_PUT_BACK, {"id": second})
        committing = threading.Thread(target=claimer.commit)
        committing.start()
        _wait_for_lock_wait(claimer_pid)  # the claim's commit waits for the row
        requeuer.commit()
    committing.join(timeout=30)
    assert not committing.is_alive()
    claimer.close()

    head, queued_first, _ = _line(account, pool)
    assert queued_first == _seq(second)
    assert head <= _seq(second)
    assert _claim(pool) == [second]
    assert _claim(pool) == [third]
    _end(first, second, third)


def _wait_for_lock_wait(pid: int) -> None:
    deadline = time.monotonic() + 10
    with get_engine().connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            ).scalar_one_or_none()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the claim's commit never waited for the line's row")


def test_a_deleted_head_leaves_a_lower_bound_that_the_next_claim_tightens(
    services_env: object,
) -> None:
    pool = _pool()
    account = insert_account("line-head-delete")
    queued = [insert_job(str(account), JobStatus.QUEUED, queue=pool) for _ in range(3)]
    seqs = [_seq(job_id) for job_id in queued]
    with session_scope() as session:
        session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": queued[0]})
    assert _line(account, pool)[:2] == (seqs[0], seqs[1])  # loose, still a bound
    assert _claim(pool) == [queued[1]]
    assert _line(account, pool)[:2] == (seqs[2], seqs[2])
    _end(queued[1], queued[2])


def _line_buffers(statement: str, params: dict[str, Any]) -> int:
    """Shared buffers one run of `statement` reads in the lines' index (rolled back: a
    claim's statement locks what it reads)."""
    with session_scope() as session:
        plan = session.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement), params
        ).scalar_one()
        session.rollback()

    def in_lines(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Index Name") == "ix_jobs_queued_line":
            own = int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))
        return own + sum(in_lines(child) for child in node.get("Plans", []))

    return in_lines(plan[0]["Plan"])


def test_a_claim_reads_past_the_jobs_claimed_before_without_waiting_for_a_vacuum(
    services_env: object,
) -> None:
    """3,000 jobs of one account claimed (their entries stay in the line's index until a
    vacuum): the next claim's candidate query reads about as many buffers of the lines'
    index as on a line where nothing was claimed; from a bound at the line's start, many
    times more. (The entries of `account_queues` that each claim's charge leaves behind
    are another matter: docs/scheduling.md "Scale".)"""
    pool = _pool()
    account = insert_account("line-head-dead-entries")
    fresh_pool = _pool()
    fresh_account = insert_account("line-head-fresh")
    with session_scope() as session:
        for target_account, target_pool, count in (
            (account, pool, 3_010),
            (fresh_account, fresh_pool, 10),
        ):
            session.execute(
                text(
                    "INSERT INTO jobs (id, account_id, status, queue, params, seed, cost, "
                    "input_key, output_keys, attempts, work, metrics) "
                    "SELECT gen_random_uuid(), :a, 'QUEUED', :q, jsonb_build_object("
                    "'width', 512, 'height', 512, 'scheduler', 'Euler', "
                    "'num_inference_steps', 20, 'strength', 0.5, 'guidance_scale', 7.5, "
                    "'samples', 1, 'prompt', 'p'), 1, 20, 'inputs/none.png', '[]', 0, 1, '{}' "
                    "FROM generate_series(1, :n)"
                ),
                {"a": target_account, "q": target_pool, "n": count},
            )
    with session_scope() as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'PROCESSING', lease_owner = :owner, "
                "lease_expires_at = now() + interval '60 seconds' WHERE id IN ("
                "SELECT id FROM jobs WHERE account_id = :a AND queue = :q "
                "ORDER BY queue_seq LIMIT 3000)"
            ),
            {"a": account, "q": pool, "owner": OWNER},
        )
    claim = scheduler.candidates_statement(1, True).text
    busy = _line_buffers(claim, {"queue": pool})
    fresh = _line_buffers(claim, {"queue": fresh_pool})
    assert busy <= fresh + 4, (busy, fresh)

    # The same line from a bound at its start (still a valid bound): the dead entries.
    with session_scope() as session:
        session.execute(
            text("UPDATE account_queues SET head_seq = 1 WHERE account_id = :a AND queue = :q"),
            {"a": account, "q": pool},
        )
    loose = _line_buffers(claim, {"queue": pool})
    assert loose >= 5 * busy, (loose, busy)
    with session_scope() as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'FAILED', finished_at = now() "
                "WHERE queue IN (:q, :f) AND status IN ('QUEUED', 'PROCESSING')"
            ),
            {"q": pool, "f": fresh_pool},
        )
