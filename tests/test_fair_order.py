"""The fair order across tenants, end to end: real PostgreSQL, the API, and the live GPU
worker on the tiny model (batching on, MAX_BATCH_IMAGES=8). Backlogs are queued while
the worker's claims are paused, then it runs them; the order it ran them in is read
from the jobs' `started_at` (one per claim: a batch starts together)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
from sqlalchemy import select

from common.db import session_scope
from common.models import Job, JobStatus
from tests.support.admin import set_limits
from tests.support.helpers import image_b64, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.pausing import gpu_workers_paused
from tests.support.waiting import wait_until

# One denoising step (20 × 0.05) on a 64×64 image: the fastest job the tiny model runs.
QUICK = {"image": image_b64(64, 64), "num_inference_steps": 20, "strength": 0.05}
# Another output size: never in a batch with QUICK jobs.
OTHER_SHAPE = {**QUICK, "image": image_b64(72, 64)}
COST = 20


def submit(client: httpx.Client, count: int, **body: object) -> list[uuid.UUID]:
    def one(seed: int) -> uuid.UUID:
        response = client.post("/v2/ssd-img2img", json=job_body(**{**body, "seed": seed}))
        assert response.status_code == 200, response.text
        return uuid.UUID(response.json()["request_id"])

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def claims(job_ids: Iterable[uuid.UUID]) -> list[list[Job]]:
    """The jobs' claims in the order they happened (jobs claimed together: one batch)."""
    with session_scope() as session:
        rows = session.execute(select(Job).where(Job.id.in_(list(job_ids)))).scalars().all()
    by_start: dict[datetime, list[Job]] = defaultdict(list)
    for job in rows:
        assert job.started_at is not None, job.status
        by_start[job.started_at].append(job)
    return [by_start[start] for start in sorted(by_start)]


def all_over(job_ids: list[uuid.UUID]) -> bool:
    with session_scope() as session:
        statuses = session.execute(select(Job.status).where(Job.id.in_(job_ids))).scalars()
        return all(status.is_terminal for status in statuses)


def cancel_queued(client: httpx.Client, job_ids: Iterable[uuid.UUID]) -> None:
    """End a backlog the test no longer needs (QUEUED → CANCELLED, refunded)."""
    for job_id in job_ids:
        client.post(f"/v2/requests/{job_id}/cancel")


def started_before(newcomer: uuid.UUID, others: list[uuid.UUID]) -> int:
    """How many of `others` started before `newcomer`."""
    count = 0
    for batch in claims([newcomer, *[i for i in others if started(i)]]):
        if any(job.id == newcomer for job in batch):
            return count
        count += len(batch)
    raise AssertionError("the newcomer never started")


def started(job_id: uuid.UUID) -> bool:
    with session_scope() as session:
        return session.get(Job, job_id).started_at is not None  # type: ignore[union-attr]


def gpu_seconds(batches: list[list[Job]], account_id: str) -> float:
    """The account's share of the pipeline time: each call's time split over its jobs."""
    return sum(
        job.metrics["inference_time"] / job.metrics["batch_size"]
        for batch in batches
        for job in batch
        if str(job.account_id) == account_id
    )


def test_a_lone_job_starts_after_at_most_one_more_job_of_a_long_backlog(
    live_stack: Stack,
) -> None:
    _, key_a = live_stack.create_account(credits=30 * COST)
    _, key_b = live_stack.create_account(credits=COST)
    with live_stack.client(key_a) as a, live_stack.client(key_b) as b:
        with gpu_workers_paused():
            backlog = submit(a, 24, **QUICK)
            (lone,) = submit(b, 1, **OTHER_SHAPE)
            status_url = f"/v2/requests/{lone}/status"
            # What B is told while it waits: one job (A's head) goes first.
            assert b.get(status_url).json()["queue_position"] == 1
        assert wait_terminal(b, status_url)["status"] == "COMPLETED"
        ahead = started_before(lone, backlog)
        cancel_queued(a, backlog)
    # One worker: the backlog's head (a tie at the queue's virtual time goes to the
    # older job), then B, though 23 of A's jobs were waiting before it came.
    assert ahead <= 1, ahead
    wait_until(lambda: all_over(backlog), "the backlog over")


def test_a_newcomer_is_not_starved_by_heavy_weights(live_stack: Stack) -> None:
    heavy_id, heavy = live_stack.create_account(credits=40 * COST)
    _, light = live_stack.create_account(credits=40 * COST)
    _, late = live_stack.create_account(credits=COST)
    set_limits(live_stack, heavy_id, scheduling_weight=100)
    with (
        live_stack.client(heavy) as h,
        live_stack.client(light) as lt,
        live_stack.client(late) as c,
    ):
        with gpu_workers_paused():
            heavy_jobs = submit(h, 30, **QUICK)
            light_jobs = submit(lt, 30, **QUICK)
            (newcomer,) = submit(c, 1, **OTHER_SHAPE)
        assert wait_terminal(c, f"/v2/requests/{newcomer}/status")["status"] == "COMPLETED"
        ahead = started_before(newcomer, heavy_jobs + light_jobs)
        # The light account is served too, at its weight, while the heavy one waits.
        wait_until(lambda: started(light_jobs[0]), "the light account served", timeout=120)
        cancel_queued(h, heavy_jobs)
        cancel_queued(lt, light_jobs)
    # At most one more job of each account that was waiting (here both in one batch).
    assert ahead <= 2, ahead
    wait_until(lambda: all_over(heavy_jobs + light_jobs), "the backlogs over")


def _shares(live_stack: Stack, weight_a: int, backlog: int) -> tuple[float, int, int]:
    """A's and B's GPU time ratio over the first ≥100 jobs (whole claims) of two
    backlogs of `backlog` jobs each; and the jobs each got in that window."""
    id_a, key_a = live_stack.create_account(credits=backlog * COST)
    id_b, key_b = live_stack.create_account(credits=backlog * COST)
    if weight_a != 1:
        set_limits(live_stack, id_a, scheduling_weight=weight_a)
    with live_stack.client(key_a) as a, live_stack.client(key_b) as b:
        with gpu_workers_paused():
            jobs_a = submit(a, backlog, **QUICK)
            jobs_b = submit(b, backlog, **QUICK)
        everything = jobs_a + jobs_b
        wait_until(lambda: all_over(everything), "both backlogs done", timeout=600)
    window: list[list[Job]] = []
    for batch in claims(everything):
        window.append(batch)
        if sum(len(x) for x in window) >= 100:
            break
    assert all(job.status == JobStatus.COMPLETED for batch in window for job in batch)
    count_a = sum(1 for batch in window for job in batch if str(job.account_id) == id_a)
    count_b = sum(1 for batch in window for job in batch if str(job.account_id) == id_b)
    return gpu_seconds(window, id_a) / gpu_seconds(window, id_b), count_a, count_b


def test_equal_backlogs_share_the_gpu_equally(live_stack: Stack) -> None:
    ratio, count_a, count_b = _shares(live_stack, weight_a=1, backlog=80)
    assert 0.9 <= ratio <= 1.1, (ratio, count_a, count_b)


def test_weights_two_to_one_share_the_gpu_two_to_one(live_stack: Stack) -> None:
    ratio, count_a, count_b = _shares(live_stack, weight_a=2, backlog=90)
    assert 1.8 <= ratio <= 2.2, (ratio, count_a, count_b)
