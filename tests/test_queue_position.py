"""Queue positions in the fair order, and what one costs: the same whatever the queue's
length (PostgreSQL's own buffer counts for the position query, 10,000 queued jobs vs
100), where the COUNT over every earlier queued job it replaces grows with it.

On a database of their own: the old count scans every queued job in the database, and
in the shared one other tests' jobs (and the planner's choices over them) were in its
figures (tests/support/db.py `own_database`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from common import scheduler
from common.db import get_engine, session_scope
from common.models import Job
from tests.support.db import own_database
from tests.support.helpers import insert_account

# QUEUED jobs `first`..`last` of one account in pool `queue`, one second apart.
_JOBS = text(
    """
    INSERT INTO jobs (id, account_id, status, queue, params, seed, cost, input_key,
                      output_keys, attempts, work, metrics, created_at)
    SELECT gen_random_uuid(), :account, 'QUEUED', :queue,
           '{"width": 64, "height": 64, "scheduler": "Euler", "num_inference_steps": 20,
             "strength": 0.5, "guidance_scale": 7.5, "samples": 1, "prompt": "p"}',
           1, 0, 'inputs/none.png', '[]', 0, 1.0, '{}',
           now() - interval '1 day' + make_interval(secs => :offset + n)
    FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS n
    """
)
_CHUNK = 500


@pytest.fixture
def positions_db(services_env: tuple[object, dict[str, str]]) -> Iterator[dict[str, str]]:
    with own_database(services_env[1], "queue_positions") as env:
        yield env


_LINE = text(
    "SELECT id FROM jobs WHERE account_id = :account AND queue = :queue "
    "AND status = 'QUEUED' ORDER BY queue_seq"
)


def _queue(counts: list[int]) -> tuple[str, list[list[uuid.UUID]]]:
    """A fresh pool with one account per entry of `counts`, in that order; returns the
    pool and each account's queued job ids in line order."""
    queue = f"position-{uuid.uuid4().hex[:8]}"
    lines = []
    for order, count in enumerate(counts):  # later accounts' jobs are newer
        account = insert_account("position")
        # In transactions of 500 jobs: the trigger updates the account's queue row once
        # per job, and within one transaction each update walks the row's versions so
        # far (10,000 in one transaction take ~20 s; in twenty, ~2 s).
        for first in range(0, count, _CHUNK):
            with session_scope() as session:
                session.execute(
                    _JOBS,
                    {
                        "account": account,
                        "queue": queue,
                        "first": first + 1,
                        "last": min(count, first + _CHUNK),
                        "offset": order * 1e5,
                    },
                )
        with session_scope() as session:
            lines.append(list(session.execute(_LINE, {"account": account, "queue": queue})))
    # The inserts left a dead version of the account's queue row per job (the trigger
    # updates it per job); autovacuum and index clean-up remove them in service.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE account_queues, jobs"))
    return queue, [[row[0] for row in line] for line in lines]


def _position(job_id: uuid.UUID) -> int | None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return scheduler.queue_position(session, job)


def _buffers(query: Any, params: dict[str, Any]) -> int:
    """Shared buffers the query touched (hit or read), from EXPLAIN (ANALYZE, BUFFERS)."""
    with session_scope() as session:
        # A serial plan: a parallel one counts the workers' buffers apart (a big jobs
        # table late in the suite gets one), which made the comparison meaningless.
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        sql = query.text if hasattr(query, "text") else str(query)
        plan = session.execute(
            text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params
        ).scalar_one()
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


_OLD_COUNT = text(
    "SELECT count(*) FROM jobs WHERE status = 'QUEUED' AND created_at < "
    "(SELECT created_at FROM jobs WHERE id = :id)"
)


def test_positions_follow_the_fair_order(positions_db: object) -> None:
    _, (a, b) = _queue([6, 3])
    # The fair order: A B A B A B A A A (equal passes; a tie goes to the older job: A's).
    assert [_position(job) for job in a] == [0, 2, 4, 6, 7, 8]
    assert [_position(job) for job in b] == [1, 3, 5]


def test_a_position_costs_the_same_with_10000_jobs_queued_as_with_100(
    positions_db: object,
) -> None:
    costs = {}
    old_costs = {}
    for size in (100, 10_000):
        _, (line, _) = _queue([size, 5])
        last = line[-1]
        assert _position(last) == size - 1 + 5  # the other account's 5 come first too
        costs[size] = _buffers(scheduler._POSITION, {"job_id": last})
        old_costs[size] = _buffers(_OLD_COUNT, {"id": last})
    # The count it replaced reads every earlier queued job: for 9,900 more of them, at
    # least one more index page per few hundred (an entry of the (status, created_at)
    # index takes over 16 bytes of an 8 kB page), however the planner reads them. The
    # position reads a few index pages either way (a deeper b-tree costs a page per
    # probe: logarithmic, never linear).
    assert old_costs[10_000] - old_costs[100] >= 9_900 // 500, old_costs
    assert costs[10_000] <= 1.5 * costs[100], costs
