"""Dynamic batching on the live worker (tiny model, MAX_BATCH_IMAGES=8): compatible
jobs of different tenants share one pipeline call, each keeps its own result, metrics,
cancellation and failure."""

from __future__ import annotations

import base64
import io
import re
import uuid
from types import ModuleType
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from common import credits
from common.db import session_scope
from common.models import JobStatus
from common.settings import get_settings
from common.storage import get_storage
from tests.support.helpers import image_b64, insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.pausing import gpu_workers_paused
from tests.support.reads import balance, ledger_of, ledger_sum, load_job
from tests.support.waiting import wait_until
from worker.prefetch import InputPrefetcher

SHAPE = {"image": image_b64(64, 64), "scheduler": "Euler a", "strength": 0.5}
# Long enough to cancel mid-call, short enough to finish: 197 step callbacks at 128².
MEDIUM = {
    "image": image_b64(128, 128),
    "num_inference_steps": 100,
    "strength": 0.99,
    "scheduler": "DPM2 Karras",
}


@pytest.fixture
def execute() -> ModuleType:
    """worker.execute (torch, diffusers), imported by the tests that run it rather than
    by this module: `make test-fast` collects the module without running its tests and
    never imports torch (tests/test_layout.py)."""
    from worker import execute as module

    return module


def pixels(job_id: str, index: int = 0) -> np.ndarray:
    key = load_job(job_id).output_keys[index]
    return np.asarray(Image.open(io.BytesIO(get_storage().get(key))).convert("RGB"), dtype=int)


def test_compatible_jobs_of_two_tenants_share_a_call_and_keep_their_own_results(
    live_stack: Stack,
) -> None:
    _, key_a = live_stack.create_account(credits=1000)
    _, key_b = live_stack.create_account(credits=1000)
    body_a = job_body(**SHAPE, prompt="a lighthouse", seed=11)
    body_b = job_body(**SHAPE, prompt="a forest", negative_prompt="fog", samples=2, seed=5)
    with live_stack.client(key_a) as a, live_stack.client(key_b) as b:
        with gpu_workers_paused():
            job_a = a.post("/v2/ssd-img2img", json=body_a).json()["request_id"]
            job_b = b.post("/v2/ssd-img2img", json=body_b).json()["request_id"]
        assert wait_terminal(a, f"/v2/requests/{job_a}/status")["status"] == "COMPLETED"
        assert wait_terminal(b, f"/v2/requests/{job_b}/status")["status"] == "COMPLETED"
        # The same request of B again, alone this time.
        alone = b.post("/v2/ssd-img2img", json=body_b).json()["request_id"]
        assert wait_terminal(b, f"/v2/requests/{alone}/status")["status"] == "COMPLETED"
        result_b = b.get(f"/v2/requests/{job_b}").json()

    ran_a, ran_b, ran_alone = load_job(job_a), load_job(job_b), load_job(alone)
    assert ran_a.started_at == ran_b.started_at  # one claim
    assert ran_a.metrics["batch_size"] == ran_b.metrics["batch_size"] == 2
    assert ran_alone.metrics["batch_size"] == 1
    assert ran_a.metrics["inference_time"] == ran_b.metrics["inference_time"]
    assert len(ran_a.output_keys) == 1 and len(ran_b.output_keys) == 2
    assert len(result_b["output"]) == 2 and result_b["seed"] == 5
    # Each sample is the image the job gives alone (JPEGs of images equal within the
    # pipeline's batching tolerance, tests/worker/test_batching.py).
    for index in (0, 1):
        assert np.abs(pixels(job_b, index) - pixels(alone, index)).max() <= 8
    # ...and not another job's.
    assert np.abs(pixels(job_a) - pixels(job_b)).max() > 8


def test_cancelling_one_member_ends_it_at_once_and_the_others_go_on(live_stack: Stack) -> None:
    account_a, key_a = live_stack.create_account(credits=1000)
    account_b, key_b = live_stack.create_account(credits=1000)
    with live_stack.client(key_a) as a, live_stack.client(key_b) as b:
        with gpu_workers_paused():
            job_a = a.post("/v2/ssd-img2img", json=job_body(**MEDIUM)).json()["request_id"]
            job_b = b.post("/v2/ssd-img2img", json=job_body(**MEDIUM, seed=3)).json()["request_id"]
        wait_until(
            lambda: a.get(f"/v2/requests/{job_a}/status").json().get("step") is not None,
            "the batch denoising",
        )
        assert a.post(f"/v2/requests/{job_a}/cancel").status_code == 202
        wait_until(lambda: load_job(job_a).status == JobStatus.CANCELLED, "A cancelled")
        # A ended while the call still ran for B.
        assert load_job(job_b).status == JobStatus.PROCESSING
        assert wait_terminal(b, f"/v2/requests/{job_b}/status")["status"] == "COMPLETED"

    ended_a, ended_b = load_job(job_a), load_job(job_b)
    assert ended_a.started_at == ended_b.started_at  # they were one call
    assert ended_a.metrics["steps_done"] < ended_a.metrics["steps_total"]
    assert ended_a.output_keys == [] and len(ended_b.output_keys) == 1
    assert [reason.value for reason, _ in ledger_of(job_a)] == ["job_debit", "job_refund"]
    assert [reason.value for reason, _ in ledger_of(job_b)] == ["job_debit"]
    assert balance(account_a) == 1000 == ledger_sum(account_a)
    assert balance(account_b) == 1000 - 100 == ledger_sum(account_b)


def test_the_call_stops_once_every_member_is_cancelled(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=1000)
    with live_stack.client(key) as client:
        with gpu_workers_paused():
            ids = [
                client.post("/v2/ssd-img2img", json=job_body(**MEDIUM, seed=s)).json()["request_id"]
                for s in (1, 2)
            ]
        wait_until(
            lambda: client.get(f"/v2/requests/{ids[0]}/status").json().get("step") is not None,
            "the batch denoising",
        )
        for job_id in ids:
            assert client.post(f"/v2/requests/{job_id}/cancel").status_code == 202
        for job_id in ids:
            assert wait_terminal(client, f"/v2/requests/{job_id}/status")["status"] == "CANCELLED"
        # The worker left the call: the next job runs to its end.
        after = client.post("/v2/ssd-img2img", json=job_body(**SHAPE)).json()["request_id"]
        assert wait_terminal(client, f"/v2/requests/{after}/status")["status"] == "COMPLETED"
    for job_id in ids:
        ended = load_job(job_id)
        assert ended.metrics["batch_size"] == 2
        assert ended.metrics["steps_done"] < ended.metrics["steps_total"]


def test_a_member_whose_input_is_unreadable_fails_alone(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=1000)
    with live_stack.client(key) as client:
        with gpu_workers_paused():
            bad, good = (
                client.post("/v2/ssd-img2img", json=job_body(**SHAPE, seed=s)).json()["request_id"]
                for s in (1, 2)
            )
            get_storage().put(load_job(bad).input_key, b"not an image", "image/png")
        assert wait_terminal(client, f"/v2/requests/{bad}/status")["status"] == "FAILED"
        assert wait_terminal(client, f"/v2/requests/{good}/status")["status"] == "COMPLETED"
    error = load_job(bad).error or ""
    assert re.fullmatch(r"reading the input image failed \(error id err_[0-9a-f]{12}\)", error)
    assert load_job(good).metrics["batch_size"] == 2
    assert balance(account_id) == 1000 - 20 == ledger_sum(account_id)


def test_a_failed_call_fails_every_member_refunded_once(
    live_stack: Stack,
    execute: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's own batch run, in this process, with a pipeline call that fails."""
    account_id, _ = live_stack.create_account(credits=1000)
    pool = f"failing-{uuid.uuid4().hex[:8]}"  # no worker claims from it but this test
    ids = [
        insert_job(account_id, JobStatus.QUEUED, cost=20, queue=pool, width=64, height=64)
        for _ in range(3)
    ]
    with session_scope() as session:
        for job_id in ids:
            credits.debit_for_job(session, uuid.UUID(account_id), job_id, 20)

    def broken_call(*_: object) -> list[object]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(execute, "generate_batch", broken_call)
    monkeypatch.setattr(execute, "_request", lambda job, store: object())
    settings = get_settings().model_copy(update={"gpu_queue": pool})
    work = execute.claim(settings)
    assert work is not None and {job.id for job in work.jobs} == set(ids)
    execute.execute(work, cast(Any, None), get_storage(), settings)

    error_id = None
    for job_id in ids:
        job = load_job(str(job_id))
        assert job.status == JobStatus.FAILED
        # Tenants read a generic reason and an error id; the detail is only in the log.
        found = re.fullmatch(r"generation failed \(error id (err_[0-9a-f]{12})\)", job.error or "")
        assert found, job.error
        assert error_id in (None, found[1])  # one failure, one id for all its members
        error_id = found[1]
        assert [reason.value for reason, _ in ledger_of(str(job_id))] == [
            "job_debit",
            "job_refund",
        ]
    assert balance(account_id) == 1000 == ledger_sum(account_id)
    logged = [r.getMessage() for r in caplog.records if error_id and error_id in r.getMessage()]
    assert logged and "illegal memory access" in logged[0]  # the detail, under that id


def test_a_member_with_non_finite_pixels_fails_refunded_and_the_others_complete(
    live_stack: Stack, execute: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NaN guard through the worker's batch run: the member whose pixels overflowed
    fails with the guard's message (refunded, nothing uploaded), its batch-mate completes."""
    from worker.pipeline import NON_FINITE_OUTPUT, GenerationResult

    account_id, _ = live_stack.create_account(credits=1000)
    pool = f"nan-{uuid.uuid4().hex[:8]}"  # no worker claims from it but this test
    ids = [
        insert_job(account_id, JobStatus.QUEUED, cost=20, queue=pool, width=64, height=64)
        for _ in range(2)
    ]
    with session_scope() as session:
        for job_id in ids:
            credits.debit_for_job(session, uuid.UUID(account_id), job_id, 20)

    def half_broken(_pipe: object, requests: list[object], *_: object) -> list[GenerationResult]:
        assert len(requests) == 2
        return [
            GenerationResult([], 10, failure=NON_FINITE_OUTPUT),
            GenerationResult([Image.new("RGB", (64, 64), "white")], 10),
        ]

    monkeypatch.setattr(execute, "generate_batch", half_broken)
    monkeypatch.setattr(execute, "_request", lambda job, store: object())
    settings = get_settings().model_copy(update={"gpu_queue": pool})
    work = execute.claim(settings)
    assert work is not None and [job.id for job in work.jobs] == ids
    execute.execute(work, cast(Any, None), get_storage(), settings)

    bad, good = (load_job(str(job_id)) for job_id in ids)
    assert bad.status == JobStatus.FAILED and bad.error == NON_FINITE_OUTPUT
    assert bad.output_keys == []
    assert [reason.value for reason, _ in ledger_of(str(bad.id))] == ["job_debit", "job_refund"]
    assert good.status == JobStatus.COMPLETED and len(good.output_keys) == 1
    assert balance(account_id) == 1000 - 20 == ledger_sum(account_id)


def test_the_next_input_is_read_while_the_gpu_works_and_the_next_claim_uses_it(
    live_stack: Stack, execute: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first claim generates, the prefetcher reads the fair order's next job's
    input; the claim of that job then reads nothing from S3."""
    from worker.pipeline import GenerationResult

    account_id, _ = live_stack.create_account(credits=1000)
    pool = f"prefetch-{uuid.uuid4().hex[:8]}"  # no worker claims from it but this test
    store = get_storage()
    ids, keys = [], []
    for _ in range(2):
        key = f"inputs/{account_id}/{uuid.uuid4()}.png"
        store.put(key, base64.b64decode(image_b64(64, 64)), "image/png")
        keys.append(key)
        ids.append(
            insert_job(
                account_id,
                JobStatus.QUEUED,
                cost=20,
                queue=pool,
                input_key=key,
                width=64,
                height=64,
            )
        )
    with session_scope() as session:
        for job_id in ids:
            credits.debit_for_job(session, uuid.UUID(account_id), job_id, 20)

    read: list[str] = []
    real_get = store.get

    def counted_get(key: str) -> bytes:
        read.append(key)
        return real_get(key)

    monkeypatch.setattr(store, "get", counted_get)
    white = Image.new("RGB", (64, 64), "white")
    monkeypatch.setattr(
        execute,
        "generate_batch",
        lambda _pipe, requests, _on_step: [GenerationResult([white], 10) for _ in requests],
    )
    # One job per claim: the second is the next claim's, the one to guess.
    settings = get_settings().model_copy(update={"gpu_queue": pool, "max_batch_images": 1})
    prefetcher = InputPrefetcher(store, pool)
    try:
        first = execute.claim(settings)
        assert first is not None and [job.id for job in first.jobs] == ids[:1]
        execute.execute(first, cast(Any, None), store, settings, prefetcher=prefetcher)
        prefetcher.wait()
        assert read == keys  # the first's input by its claim, the second's by the prefetch
        second = execute.claim(settings)
        assert second is not None and [job.id for job in second.jobs] == ids[1:]
        execute.execute(second, cast(Any, None), store, settings, prefetcher=prefetcher)
        prefetcher.wait()
    finally:
        prefetcher.close()
    assert read == keys  # the second claim read no input: it was ready
    assert all(load_job(str(job_id)).status == JobStatus.COMPLETED for job_id in ids)
