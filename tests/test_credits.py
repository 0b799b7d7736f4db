"""Credits: exact debits, refunds exactly once, no overdraw under real concurrency,
and the balance always equal to the sum of the ledger."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from common import credits, jobs
from common.db import session_scope
from common.models import CreditLedgerEntry, Job, JobStatus, LedgerReason
from common.tasks import WAKE_GPU, get_celery, wake_gpu_workers
from tests.support.extra_api import run_on_the_workers
from tests.support.helpers import insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.reads import balance, ledger_sum


def test_concurrent_submits_never_overdraw(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=100)
    body = job_body(samples=1, num_inference_steps=20)  # 20 credits each: 5 affordable

    def submit(_: int) -> int:
        with live_stack.client(key) as client:
            return client.post("/v2/ssd-img2img", json=body).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(submit, range(12)))

    assert sorted(codes) == [200] * 5 + [406] * 7
    assert balance(account_id) == 0
    assert ledger_sum(account_id) == 0
    with session_scope() as session:
        count = session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == uuid.UUID(account_id))
        ).scalar_one()
    assert count == 5


def test_failed_job_is_refunded_once_and_served_as_422(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=100)
    # A job whose input object does not exist: the worker must fail it cleanly.
    job_id = insert_job(
        account_id, JobStatus.QUEUED, cost=20, input_key=f"inputs/{account_id}/missing.png"
    )
    with session_scope() as session:
        credits.debit_for_job(session, uuid.UUID(account_id), job_id, 20)
    run_on_the_workers([job_id])
    base = f"{live_stack.api_url}/v2/requests/{job_id}"
    with live_stack.client(key) as client:
        assert wait_terminal(client, f"{base}/status")["status"] == "FAILED"
        status = client.get(f"{base}/status")
        result = client.get(base)
    assert status.status_code == 422 and result.status_code == 422
    assert result.json()["status"] == "FAILED"
    assert "object storage failed" in result.json()["error"]  # its input is missing
    assert balance(account_id) == 100 == ledger_sum(account_id)

    # Failing it again (a repeated message, a reconciler) neither refunds nor changes it.
    with session_scope() as session:
        assert jobs.fail(session, job_id, "again") is False
        job = session.get(Job, job_id)
        assert job is not None
        assert credits.refund_job(session, job) is False
    assert balance(account_id) == 100 == ledger_sum(account_id)
    with session_scope() as session:
        refunds = session.execute(
            select(func.count())
            .select_from(CreditLedgerEntry)
            .where(
                CreditLedgerEntry.job_id == job_id,
                CreditLedgerEntry.reason == LedgerReason.JOB_REFUND,
            )
        ).scalar_one()
    assert refunds == 1


def test_repeated_wake_ups_run_the_job_once(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=100)
    with live_stack.client(key) as client:
        data = client.post("/v2/ssd-img2img", json=job_body()).json()
        # Redis may deliver a message twice, and wake-ups of the release before named
        # their job: all of them only wake the worker, which claims from PostgreSQL.
        for _ in range(3):
            wake_gpu_workers()
        get_celery().send_task(WAKE_GPU, args=[data["request_id"]], queue="gpu")
        assert wait_terminal(client, data["status_url"])["status"] == "COMPLETED"
        # Let the extra wake-ups be consumed: a later job completes after them.
        later = client.post("/v2/ssd-img2img", json=job_body()).json()
        wait_terminal(client, later["status_url"])
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(data["request_id"]))
        assert job is not None
        assert job.attempts == 1
        assert job.status == JobStatus.COMPLETED
