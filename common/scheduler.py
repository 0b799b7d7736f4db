"""The scheduler: which queued jobs a GPU worker runs next, decided in PostgreSQL.

PostgreSQL is the queue of record. A worker asks `claim_next` for work; the answer is
the head of the fair order across accounts, plus (batching) the compatible jobs that
come right after it in that order. Redis messages only wake workers (common/tasks.py).
The full design, and why: docs/scheduling.md.

**Fair order** (weighted fair queuing with virtual time, "stride scheduling"). Every
account has, per worker pool, a *pass*: the GPU work it was served, divided by its
weight (`accounts.scheduling_weight`, default 1). The next job is the oldest queued job
of the account with the least pass; claiming it adds its estimated work (`job_work`)
over the weight to that pass. Over any stretch of time in which two accounts both have
queued work, each gets GPU work in proportion to its weight. An account that had
nothing queued enters at the pool's virtual time (the least pass of the accounts with
queued work): it saves up no credit while idle, so it cannot monopolise the GPUs
afterwards, and it starts at once, behind at most one more job of each account already
waiting. Within one account: first in, first out (`queue_seq`).

The bookkeeping (`account_queues`: pass, queued count and work, line numbers) is kept
by PostgreSQL itself, by the trigger `jobs_track_queue` (migration 0007), on every
change of a job in or out of QUEUED, whoever makes it.

**Batching.** A batch is always a run of consecutive jobs of the fair order that share
a `batch_key` (output size, scheduler, steps, strength, guidance), up to
MAX_BATCH_IMAGES images: it starts with the scheduler's choice and stops at the first
job that does not fit. Batching therefore never changes who goes first; it only runs
neighbours in one pipeline call. Nothing waits for a batch to fill.
"""

from __future__ import annotations

import functools
import heapq
import math
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, ScalarSelect, TextClause, column, text
from sqlalchemy.orm import Session

from common import jobs
from common.models import Job, JobState, JobStatus
from common.schedulers import SECOND_ORDER_SCHEDULERS

# Work unit: one denoising step of one 1024×1024 image (UNet cost grows with the pixels).
_UNIT_PIXELS = 1024 * 1024


def job_work(params: dict[str, Any]) -> float:
    """The estimated GPU work of a job, in UNet steps of a 1024² image: what its claim
    charges its account. Proportional to samples × denoising steps × pixels, twice for
    schedulers that evaluate the UNet twice per step."""
    steps = max(1, int(params["num_inference_steps"] * params["strength"]))
    order = 2 if params["scheduler"] in SECOND_ORDER_SCHEDULERS else 1
    pixels = params["width"] * params["height"]
    return params["samples"] * steps * order * pixels / _UNIT_PIXELS


# --------------------------------------------------------------------------- claiming


@dataclass(frozen=True)
class Candidate:
    """One queued job seen by a claim, with its account's state."""

    account_id: uuid.UUID
    account_pass: float
    weight: int
    job_id: uuid.UUID
    batch_key: str | None
    work: float
    images: int
    created_at: datetime


@dataclass
class _Line:
    """One account's queued jobs as far as the claim read them."""

    pass_: float
    weight: int
    jobs: list[Candidate] = field(default_factory=list)
    taken: int = 0
    complete: bool = True  # False: the account may have more jobs than were read

    def next_job(self) -> Candidate | None:
        return self.jobs[self.taken] if self.taken < len(self.jobs) else None


def plan(
    candidates: Sequence[Candidate],
    max_images: int,
    *,
    per_account: int,
    accounts_cut: bool,
) -> list[uuid.UUID]:
    """The jobs to claim, head first: the fair order's next job, then the jobs right
    after it in that order as long as they share its batch key and fit in
    `max_images` images.

    `candidates`: the first `per_account` queued jobs (in line order) of the accounts
    with the least pass; `accounts_cut`: whether accounts with a greater pass were left
    unread, in which case planning stops before one of them could come next.
    """
    lines: dict[uuid.UUID, _Line] = {}
    for c in candidates:
        line = lines.setdefault(c.account_id, _Line(c.account_pass, c.weight))
        line.jobs.append(c)
    if not lines:
        return []
    for line in lines.values():
        line.complete = len(line.jobs) < per_account
    # Accounts not read have a pass of at least the last one read.
    horizon = max(line.pass_ for line in lines.values()) if accounts_cut else math.inf

    def entry(account_id: uuid.UUID) -> tuple[float, datetime, str, uuid.UUID] | None:
        line = lines[account_id]
        job = line.next_job()
        if job is None:
            return None
        # Ties go to the account whose next job is older.
        return (line.pass_, job.created_at, str(account_id), account_id)

    heap = [e for e in (entry(a) for a in lines) if e is not None]
    heapq.heapify(heap)
    chosen: list[Candidate] = []
    images = 0
    while heap:
        pass_, _, _, account_id = heap[0]
        line = lines[account_id]
        job = line.next_job()
        assert job is not None
        if chosen:
            if pass_ > horizon or job.batch_key is None or job.batch_key != chosen[0].batch_key:
                break
            if images + job.images > max_images:
                break
        chosen.append(job)
        images += job.images
        if images >= max_images or job.batch_key is None:
            break
        heapq.heappop(heap)
        line.taken += 1
        line.pass_ += job.work / line.weight
        following = entry(account_id)
        if following is not None:
            heapq.heappush(heap, following)
        elif not line.complete:
            break  # this account's next job was not read: it might come next
    return [c.job_id for c in chosen]


# The accounts with the least pass, and the first queued jobs of each, locked as they
# are read, skipping what another claim holds, so that concurrent claims never plan the
# same job. Own accounts: each claim also takes a transaction-level advisory lock on the
# accounts it reads (skipping those another claim holds), so that concurrent claims
# spread over accounts instead of all planning the head of one line. An advisory lock,
# not a row lock: the claim's charge updates the account's row at commit (migration
# 0008), and a row lock taken here would make that update wait, in other claims of the
# account, for this claim's whole transaction.
#
# The limits are written into the text (one statement per worker setting) rather than
# bound: PostgreSQL then plans the statement once per connection and reuses it. Bound,
# they made it plan every claim afresh (~0.2-0.9 ms, more than running it), its
# one-size plan having to allow for any LIMIT.
_CANDIDATES = """
    SELECT q.account_id, q.pass, coalesce(a.scheduling_weight, 1) AS weight,
           j.id, j.batch_key, j.work, j.images, j.created_at
    FROM ({accounts_query}) AS q
    JOIN accounts AS a ON a.id = q.account_id
    CROSS JOIN LATERAL (
        SELECT id, batch_key, work, (params ->> 'samples')::int AS images, created_at,
               queue_seq
        FROM jobs
        WHERE jobs.account_id = q.account_id AND jobs.queue = :queue
          AND jobs.status = 'QUEUED' AND jobs.queue_seq >= q.head_seq
        ORDER BY queue_seq LIMIT {per_account}
        FOR UPDATE SKIP LOCKED) AS j
    ORDER BY q.pass, q.account_id, j.queue_seq
"""
_LEAST_SERVED = """
    SELECT account_id, pass, head_seq FROM account_queues
    WHERE queue = :queue AND queued > 0
    ORDER BY pass, account_id LIMIT {limit}
"""
# Own accounts: among the OWN_WINDOW accounts of least pass, the first ones no other
# claim holds. The lock is tried row by row as the Limit pulls them (the inner LIMIT
# bounds how many it can ever be tried on, whatever the plan).
OWN_WINDOW = 64
CLAIM_LOCK_CLASS = 0x55D1  # first key of the advisory locks of claims (pg_locks.classid)
_OWN_ACCOUNTS = """
    SELECT account_id, pass, head_seq FROM ({window}) AS least
    WHERE pg_try_advisory_xact_lock({lock_class}, hashtext(account_id::text || :queue))
    ORDER BY pass, account_id LIMIT {limit}
"""


def _reads(max_images: int) -> tuple[int, int]:
    """How many accounts a claim of up to `max_images` images reads, and how many
    queued jobs of each: enough to plan a full batch and to see who could come next."""
    return max(2, max_images + 1), max(1, max_images)


@functools.cache
def candidates_statement(max_images: int, shared: bool) -> TextClause:
    """The candidate query of a claim of up to `max_images` images (`_reads`: which
    accounts of least pass, and how many of their first jobs). `shared`: for when every
    account with queued work is held by other claims (fewer busy accounts than claiming
    workers): read them all the same; concurrent claims of one account take different
    jobs of it."""
    accounts, per_account = _reads(max_images)
    if shared:
        accounts_query = _LEAST_SERVED.format(limit=accounts)
    else:
        accounts_query = _OWN_ACCOUNTS.format(
            window=_LEAST_SERVED.format(limit=OWN_WINDOW),
            lock_class=CLAIM_LOCK_CLASS,
            limit=accounts,
        )
    return text(_CANDIDATES.format(accounts_query=accounts_query, per_account=per_account))


def choose(rows: Sequence[Any], max_images: int) -> list[uuid.UUID]:
    """The jobs a claim takes, head first, from the rows of its candidate query."""
    accounts, per_account = _reads(max_images)
    candidates = [Candidate(*row) for row in rows]
    return plan(
        candidates,
        max_images,
        per_account=per_account,
        accounts_cut=len({c.account_id for c in candidates}) >= accounts,
    )


def claim_next(
    session: Session,
    queue: str,
    lease_owner: str,
    lease_seconds: float,
    max_images: int = 1,
) -> list[Job]:
    """Claim the next work of worker pool `queue`: the fair order's next job and, with
    `max_images` > 1, its batch companions; all leased to `lease_owner`. Returns the
    jobs now PROCESSING, head first; [] when nothing is queued (or everything at the
    head of the queue is being claimed by others this instant). Commit promptly: the
    jobs read are locked until then, and their accounts' charges wait for the commit."""
    rows = session.execute(candidates_statement(max_images, False), {"queue": queue}).all()
    if not rows:
        rows = session.execute(candidates_statement(max_images, True), {"queue": queue}).all()
    if not rows:
        return []
    chosen = choose(rows, max_images)
    started = {job.id: job for job in jobs.start(session, chosen, lease_owner, lease_seconds)}
    return [started[job_id] for job_id in chosen if job_id in started]


# --------------------------------------------------------------- position and ETA

# The jobs that will start before a queued job, as far as the fair order knows now: the
# jobs ahead of it in its account's line, plus, for every other account with queued
# work, those of its jobs whose virtual start (pass + k × mean work / weight) comes
# before this job's; at an equal start, the older job goes first (as in `plan`), judged
# by the other account's line head. Costs one look-up in the job's own line and one per
# account whose pass is below the job's virtual start: never a pass over queued jobs.
_POSITION_SQL = """
    WITH me AS (
        SELECT j.account_id, j.queue, j.created_at, q.pass, q.queued, q.queued_work,
               coalesce(a.scheduling_weight, 1) AS weight,
               least(greatest(j.queue_seq - (
                   SELECT h.queue_seq FROM jobs AS h
                   WHERE h.account_id = j.account_id AND h.queue = j.queue
                     AND h.status = 'QUEUED' AND h.queue_seq >= q.head_seq
                   ORDER BY h.queue_seq LIMIT 1), 0), greatest(q.queued - 1, 0)) AS ahead
        FROM jobs AS j
        JOIN account_queues AS q ON q.account_id = j.account_id AND q.queue = j.queue
        JOIN accounts AS a ON a.id = j.account_id
        WHERE j.id = :job_id AND j.status = 'QUEUED'
    ), mine AS (
        SELECT *, pass + ahead * queued_work / greatest(queued, 1) / weight AS vstart FROM me
    ), tol AS (
        -- passes are sums of floats: equal starts may differ in the last bits
        SELECT *, 1e-9 * greatest(1.0, abs(vstart)) AS eps FROM mine
    )
    SELECT tol.ahead + coalesce((
        SELECT sum(least(o.queued, greatest(0, CASE
            -- an equal start (rare): only then is the other line's head looked up
            WHEN abs(o.x - round(o.x)) <= 1e-6 AND (
                SELECT h.created_at FROM jobs AS h
                WHERE h.account_id = o.account_id AND h.queue = o.queue
                  AND h.status = 'QUEUED' AND h.queue_seq >= o.head_seq
                ORDER BY h.queue_seq LIMIT 1) < tol.created_at
            THEN round(o.x) + 1
            ELSE ceil(o.x - 1e-6) END)))
        FROM (SELECT q.account_id, q.queue, q.queued, q.head_seq,
                     -- how many of its jobs' starts fit before this job's
                     (tol.vstart - q.pass) / greatest(
                         q.queued_work / q.queued / coalesce(a.scheduling_weight, 1),
                         1e-9) AS x
              FROM account_queues AS q JOIN accounts AS a ON a.id = q.account_id
              WHERE q.queue = tol.queue AND q.queued > 0
                AND q.pass <= tol.vstart + tol.eps AND q.account_id <> tol.account_id) AS o
        ), 0)
    FROM tol
"""
_POSITION = text(_POSITION_SQL)


def position_subquery() -> ScalarSelect[Any]:
    """`queue_position` of the job bound as `job_id`, as a scalar subquery: for reading
    it in the same statement as the job itself (NULL unless that job is QUEUED)."""
    return text(_POSITION_SQL).columns(column("position", Integer)).scalar_subquery()


def queue_position(session: Session | Connection, job: JobState) -> int | None:
    """How many jobs will start before `job` (0 = it is next), or None if not queued.

    An estimate in the fair order as it stands now: later arrivals of accounts with
    little use may still go first, a job cancelled ahead in its own line is counted
    until its line's head passes it, and accounts' job sizes are taken at their mean.
    Only a count is revealed, never whose jobs.
    """
    if job.status != JobStatus.QUEUED:
        return None
    position = session.execute(_POSITION, {"job_id": job.id}).scalar_one_or_none()
    # None: claimed since `job` was read (each statement sees the latest commits): next.
    return 0 if position is None else int(position)


def queue_positions(session: Session, job_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """`queue_position` of each of `job_ids` still QUEUED (one query each); a job claimed
    meanwhile is missing."""
    positions: dict[uuid.UUID, int] = {}
    for job_id in job_ids:
        position = session.execute(_POSITION, {"job_id": job_id}).scalar_one_or_none()
        if position is not None:
            positions[job_id] = int(position)
    return positions


@dataclass(frozen=True)
class Pace:
    """How fast a pool works through its queue, from the jobs it finished recently."""

    jobs_per_second: float
    mean_run_seconds: float

    def eta_seconds(self, position: int) -> float:
        """Until a job with `position` jobs before it is done: those jobs at the pool's
        recent rate, then its own run."""
        return round(position / self.jobs_per_second + self.mean_run_seconds, 1)


PACE_WINDOW_SECONDS = 600
_PACE_TTL_SECONDS = 10.0
_pace_cache: dict[str, tuple[float, Pace | None]] = {}
_pace_lock = threading.Lock()

_PACE = text(
    """
    SELECT count(*), extract(epoch FROM now() - min(finished_at)),
           avg(extract(epoch FROM finished_at - started_at))
    FROM jobs
    WHERE finished_at > now() - make_interval(secs => :window) AND status = 'COMPLETED'
      AND expired_at IS NULL AND queue = :queue
    """
)


def recent_pace(session: Session | Connection, queue: str) -> Pace | None:
    """The pool's pace over the last PACE_WINDOW_SECONDS, or None before any job
    finished in it. Read at most every 10 s per process: status polls of queued jobs
    share it, so their cost does not grow with the queue either."""
    now = time.monotonic()
    with _pace_lock:
        cached = _pace_cache.get(queue)
        if cached is not None and now - cached[0] < _PACE_TTL_SECONDS:
            return cached[1]
    count, span, mean_run = session.execute(
        _PACE, {"window": PACE_WINDOW_SECONDS, "queue": queue}
    ).one()
    pace = None
    if count and mean_run is not None:
        span = max(float(span or 0), 1.0)
        pace = Pace(jobs_per_second=count / span, mean_run_seconds=float(mean_run))
    with _pace_lock:
        _pace_cache[queue] = (now, pace)
    return pace
