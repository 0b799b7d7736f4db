"""The scheduler's planning (common.scheduler.plan), on its own: which jobs one claim
takes from what it read. No services: the fair order and the batching rules as data.
The same rules against PostgreSQL and a real worker: tests/test_fair_order.py."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from common.scheduler import Candidate, job_work, plan

T0 = datetime(2026, 12, 1, tzinfo=UTC)
KEY = "64x64|Euler|20|0.05|7.5"


def line(
    account: uuid.UUID,
    count: int,
    *,
    account_pass: float = 0.0,
    weight: int = 1,
    key: str | None = KEY,
    images: int = 1,
    start: int = 0,
) -> list[Candidate]:
    """`count` queued jobs of one account, in line order, created a second apart."""
    return [
        Candidate(
            account_id=account,
            account_pass=account_pass,
            weight=weight,
            job_id=uuid.uuid4(),
            batch_key=key,
            work=1.0,
            images=images,
            created_at=T0 + timedelta(seconds=start + i),
        )
        for i in range(count)
    ]


def simulate(lines: list[list[Candidate]], claims: int, max_images: int = 1) -> list[uuid.UUID]:
    """The accounts served by `claims` successive claims, as `claim_next` would see them:
    each claim reads the lines afresh, with the passes its predecessors charged."""
    passes = {ln[0].account_id: ln[0].account_pass for ln in lines if ln}
    weights = {ln[0].account_id: ln[0].weight for ln in lines if ln}
    queued = {ln[0].account_id: list(ln) for ln in lines if ln}
    served: list[uuid.UUID] = []
    for _ in range(claims):
        candidates = [
            Candidate(**{**c.__dict__, "account_pass": passes[a]})
            for a, jobs in queued.items()
            for c in jobs[:8]
        ]
        if not candidates:
            break
        taken = plan(candidates, max_images, per_account=8, accounts_cut=False)
        for job_id in taken:
            account = next(a for a, jobs in queued.items() if jobs and jobs[0].job_id == job_id)
            queued[account].pop(0)
            passes[account] += 1.0 / weights[account]
            served.append(account)
        queued = {a: jobs for a, jobs in queued.items() if jobs}
    return served


def test_the_next_job_is_the_oldest_of_the_account_with_the_least_pass() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    a_jobs = line(a, 3, account_pass=5.0)
    b_jobs = line(b, 3, account_pass=2.0, start=100)  # newer, but B was served less
    assert plan(a_jobs + b_jobs, 1, per_account=8, accounts_cut=False) == [b_jobs[0].job_id]
    # A tie goes to the account whose next job is older.
    tied = line(b, 1, account_pass=5.0, start=100)
    assert plan(a_jobs + tied, 1, per_account=8, accounts_cut=False) == [a_jobs[0].job_id]


def test_a_newcomer_waits_for_at_most_one_more_job_of_a_long_backlog() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    # B entered at the queue's virtual time: A's pass (the trigger of migration 0007).
    served = simulate([line(a, 500), line(b, 1, start=1000)], claims=3)
    assert served.index(b) <= 1


def test_equal_backlogs_alternate_and_weights_share_in_proportion() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    served = Counter(simulate([line(a, 200), line(b, 200)], claims=100))
    assert served[a] == served[b] == 50
    served = Counter(simulate([line(a, 200, weight=2), line(b, 200)], claims=99))
    assert (served[a], served[b]) == (66, 33)


def test_a_batch_is_a_run_of_the_fair_order_sharing_one_key() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a_jobs, b_jobs = line(a, 5), line(b, 5, start=10)
    # Fair order A B A B ...: both accounts' compatible jobs share the call.
    taken = plan(a_jobs + b_jobs, 4, per_account=8, accounts_cut=False)
    assert taken == [a_jobs[0].job_id, b_jobs[0].job_id, a_jobs[1].job_id, b_jobs[1].job_id]
    # C comes second in the fair order with another shape: the batch stops before it,
    # so batching never lets A's jobs pass C's.
    c_jobs = line(c, 1, key="128x128|Euler|20|0.05|7.5", start=20)
    taken = plan(a_jobs + c_jobs, 8, per_account=8, accounts_cut=False)
    assert taken == [a_jobs[0].job_id]


def test_a_batch_holds_at_most_max_images_images() -> None:
    a = uuid.uuid4()
    jobs = line(a, 6, images=3)
    assert len(plan(jobs, 8, per_account=8, accounts_cut=False)) == 2  # 6 images; 9 > 8
    assert len(plan(jobs, 1, per_account=8, accounts_cut=False)) == 1  # batching off
    # A head bigger than the limit still runs, alone.
    assert len(plan(line(a, 2, images=4), 2, per_account=8, accounts_cut=False)) == 1


def test_planning_stops_where_what_was_read_ends() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    # Only 2 of A's jobs were read (per_account=2): A may have a third, next in line.
    taken = plan(line(a, 2), 8, per_account=2, accounts_cut=False)
    assert len(taken) == 2
    # Accounts beyond those read may come next once the read ones passed their pass.
    a_jobs = line(a, 3, account_pass=0.0)
    b_jobs = line(b, 3, account_pass=1.5, start=10)
    taken = plan(a_jobs + b_jobs, 8, per_account=8, accounts_cut=True)
    # A at 0, 1 (≤ B's 1.5), then A at 2 > 1.5: an unread account at 1.5 might be next.
    assert taken == [a_jobs[0].job_id, a_jobs[1].job_id, b_jobs[0].job_id]


def test_jobs_without_a_batch_key_run_alone() -> None:
    a = uuid.uuid4()
    assert len(plan(line(a, 3, key=None), 8, per_account=8, accounts_cut=False)) == 1


def test_work_grows_with_samples_steps_pixels_and_scheduler_order() -> None:
    base = {
        "samples": 1,
        "num_inference_steps": 20,
        "strength": 0.5,
        "width": 1024,
        "height": 1024,
        "scheduler": "Euler",
    }
    assert job_work(base) == 10.0
    assert job_work({**base, "samples": 4}) == 40.0
    assert job_work({**base, "width": 512, "height": 512}) == 2.5
    assert job_work({**base, "scheduler": "DPM2 Karras"}) == 20.0
