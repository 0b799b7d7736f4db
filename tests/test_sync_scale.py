"""A hundred synchronous (v1) requests waiting at once on ONE API process: while they
wait the database sees only the process's periodic re-check, not a query per waiter,
and when their jobs end every one of them is answered.

Ten jobs go through the real worker (JPEG answers); the other ninety are ended at once,
as an operator or a reconciler would end them: FAILED in PostgreSQL, then announced on
the notification channel. That wakes ninety waiters in the same instant (the moment
that needs threads and pooled connections) without ninety generations' CPU time; the
full run through the worker is `bench/sync_waiters.py`.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass

import httpx
from PIL import Image
from sqlalchemy import text

from common import jobs, notify
from common.db import session_scope
from common.models import Account, JobStatus
from tests.support.extra_api import HeldApi, held_api, queued_job_ids, run_on_the_workers
from tests.support.helpers import image_b64, job_body
from tests.support.live import Stack

WAITERS = 100
THROUGH_THE_WORKER = 10
RECHECK_SECONDS = 1.0
WINDOW_SECONDS = 4.0
# The counter covers every client of the database, so the window is compared with one
# of the same length just before the requests, with the same stack idle around it (the
# CPU worker's webhook sweep every 0.5 s in tests, ~30 transactions; a reconcile or
# retention sweep now and then: 80-odd in all on a busy machine). While they wait, this
# process's re-check adds at most ~6 in the window, about 2 transactions each (pool
# pre-ping + query). Polling per waiter, even once in the window, would add at least
# WAITERS (100); every 1 s, ~WAITERS × 8.
MAX_EXTRA_WINDOW_TRANSACTIONS = WAITERS // 2
ENDED_BY_TEST = "ended by the scale test"


def database_transactions() -> int:
    """Transactions PostgreSQL has counted for this database, all clients together."""
    with session_scope() as session:
        return int(
            session.execute(
                text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).scalar_one()
        )


def end_jobs(job_ids: list[uuid.UUID]) -> None:
    with session_scope() as session:
        for job_id in job_ids:
            assert jobs.fail(session, job_id, ENDED_BY_TEST)
    for job_id in job_ids:  # after the commit, as the worker does
        notify.publish_job_finished(job_id, JobStatus.FAILED)


@dataclass(frozen=True)
class Outcome:
    responses: list[httpx.Response]
    idle_transactions: int
    window_transactions: int
    through_worker: set[str]
    ended: set[str]


async def _until_all_wait(api: HeldApi, requests: list[asyncio.Task[httpx.Response]]) -> None:
    # A request's job message reaches the held queue only after its waiter is
    # registered, and no worker reads that queue.
    deadline = time.monotonic() + 300
    while await asyncio.to_thread(api.queued_messages) < len(requests):
        answered = [r for r in requests if r.done()]
        assert not answered, answered[0].result().text
        assert time.monotonic() < deadline, "the requests were never all accepted"
        await asyncio.sleep(0.1)


async def _window_transactions(api: HeldApi) -> int:
    """The database's transactions, all clients together, over WINDOW_SECONDS."""
    await asyncio.to_thread(api.flush_database_statistics)  # what came before counted
    before = await asyncio.to_thread(database_transactions)
    await asyncio.sleep(WINDOW_SECONDS)
    await asyncio.to_thread(api.flush_database_statistics)  # the window counted
    return await asyncio.to_thread(database_transactions) - before


async def _scenario(api: HeldApi, key: str, account_id: str) -> Outcome:
    body = job_body(image=image_b64(64, 64), strength=0.05, base64=False)  # 1 denoising step
    limits = httpx.Limits(max_connections=WAITERS, max_keepalive_connections=WAITERS)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"x-api-key": key}, timeout=600, limits=limits
    ) as client:
        idle = await _window_transactions(api)
        requests = [
            asyncio.create_task(client.post("/v1/ssd-img2img", json=body)) for _ in range(WAITERS)
        ]
        await _until_all_wait(api, requests)

        window = await _window_transactions(api)
        assert not any(r.done() for r in requests)

        job_ids = await asyncio.to_thread(queued_job_ids, account_id)
        assert len(job_ids) == WAITERS
        to_worker, to_end = job_ids[:THROUGH_THE_WORKER], job_ids[THROUGH_THE_WORKER:]
        run_on_the_workers(to_worker)
        await asyncio.to_thread(end_jobs, to_end)
        responses = await asyncio.gather(*requests)
    return Outcome(
        list(responses), idle, window, {str(j) for j in to_worker}, {str(j) for j in to_end}
    )


def test_a_hundred_waiters_on_one_process(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=WAITERS * 20)
    with held_api(
        live_stack,
        "scale",
        SYNC_WAIT_TIMEOUT_SECONDS="600",
        SYNC_WAIT_RECHECK_SECONDS=str(RECHECK_SECONDS),
        # One tenant's hundred jobs at once, past the default per-tenant caps.
        DEFAULT_MAX_JOBS_IN_FLIGHT=str(WAITERS),
        DEFAULT_RATE_LIMIT_PER_MINUTE=str(10 * WAITERS),
        DEFAULT_MAX_STREAMS=str(WAITERS),
    ) as api:
        outcome = asyncio.run(_scenario(api, key, account_id))

    print(
        f"\n{WAITERS} waiters: {outcome.window_transactions} transactions in {WINDOW_SECONDS}s"
        f" ({outcome.idle_transactions} with none)"
    )
    extra = outcome.window_transactions - outcome.idle_transactions
    assert extra <= MAX_EXTRA_WINDOW_TRANSACTIONS, (
        outcome.window_transactions,
        outcome.idle_transactions,
    )
    by_id = {r.headers["x-request-id"]: r for r in outcome.responses}
    assert set(by_id) == outcome.through_worker | outcome.ended
    for request_id in outcome.through_worker:
        assert by_id[request_id].status_code == 200, by_id[request_id].text
        assert Image.open(io.BytesIO(by_id[request_id].content)).size == (64, 64)
    for request_id in outcome.ended:
        assert by_id[request_id].status_code == 422, by_id[request_id].text
        assert ENDED_BY_TEST in by_id[request_id].json()["error"]
    # Ninety refunds; ten charges.
    with session_scope() as session:
        account = session.get(Account, uuid.UUID(account_id))
        assert account is not None
        assert account.balance == (WAITERS - THROUGH_THE_WORKER) * 20
