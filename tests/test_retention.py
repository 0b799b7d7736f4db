"""Result retention against the real stack: the sweep (common/retention.py) deletes the
objects of expired jobs from SeaweedFS and marks the jobs in PostgreSQL; the API then
answers 410 on their response URL. Also: the authenticated output download, the
OUTPUT_URL_MODE=api links, and presigned URLs that S3 refuses once tampered or expired.

The stack's CPU worker keeps results for the default period, so most tests call the
sweep in this process with a short period; one runs the real scheduled task in an
extra CPU worker (RESULT_RETENTION_SECONDS=2) on a queue of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import delete, func, select

from api.img2img.expiry import output_urls
from cli import stack
from common import retention, storage
from common.db import session_scope
from common.models import Job, JobStatus
from common.settings import Settings
from common.storage import Storage
from devstack.process import (
    log_path,
    log_tail,
    pidfile_path,
    pidfile_process_alive,
    stop_pidfile,
)
from tests.support.extra_api import held_api
from tests.support.helpers import job_body, wait_terminal
from tests.support.live import Stack


@pytest.fixture(scope="module")
def settings(live_stack: Stack) -> Settings:
    return Settings()  # the stack's settings (services_env put them in os.environ)


@pytest.fixture(scope="module")
def store(settings: Settings) -> Storage:
    return Storage(settings)


def _period(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.result_retention_seconds)


def _completed_job(live_stack: Stack, key: str, **body: Any) -> str:
    with live_stack.client(key) as client:
        submitted = client.post("/v2/ssd-img2img", json=job_body(**body))
        assert submitted.status_code == 200, submitted.text
        final = wait_terminal(client, submitted.json()["status_url"])
    assert final["status"] == "COMPLETED", final
    request_id: str = submitted.json()["request_id"]
    return request_id


def _row(job_id: str | uuid.UUID) -> Job:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(str(job_id)))
        assert job is not None
        return job


def _keys(job: Job) -> list[str]:
    return [job.input_key, *job.output_keys]


def _db_now() -> datetime:
    with session_scope() as session:
        now: datetime = session.execute(select(func.now())).scalar_one()
        return now


def _insert_job(
    store: Storage,
    account_id: str,
    status: JobStatus,
    *,
    age: timedelta,
    samples: int = 1,
    outputs_recorded: bool = True,
) -> Job:
    """A job row written straight to PostgreSQL, `age` old (finished that long ago if
    terminal), with its input and output objects in S3."""
    job_id, account = uuid.uuid4(), uuid.UUID(account_id)
    input_key = storage.input_key(account, job_id)
    store.put(input_key, b"input", "image/png")
    outputs = [storage.output_key(account, job_id, i) for i in range(samples)]
    for key in outputs:
        store.put(key, b"output", "image/jpeg")
    at = _db_now() - age
    job = Job(
        id=job_id,
        account_id=account,
        status=status,
        params={"samples": samples, "num_inference_steps": 20, "prompt": "direct row"},
        seed=1,
        cost=0,
        input_key=input_key,
        output_keys=outputs if outputs_recorded else [],
        metrics={},
        created_at=at,
        started_at=at,
        finished_at=at if status.is_terminal else None,
        error="direct row" if status == JobStatus.FAILED else None,
    )
    with session_scope() as session:
        session.add(job)
    return job


def _delete_rows(jobs: list[Job]) -> None:
    with session_scope() as session:
        session.execute(delete(Job).where(Job.id.in_([job.id for job in jobs])))


def test_sweep_expires_completed_jobs_and_the_api_says_so(
    live_stack: Stack, settings: Settings, store: Storage
) -> None:
    _, key = live_stack.create_account(credits=1000)
    _, other = live_stack.create_account(credits=1000)
    old_id = _completed_job(live_stack, key, samples=2)
    kept_id = _completed_job(live_stack, key)  # submitted after the first one finished
    old, kept = _row(old_id), _row(kept_id)
    assert old.finished_at is not None and kept.finished_at is not None
    assert old.finished_at < kept.finished_at
    with live_stack.client(key) as client:
        old_urls = client.get(f"/v2/requests/{old_id}").json()["output"]
    assert len(old_urls) == 2 and httpx.get(old_urls[0]).status_code == 200

    # A moment when the first job's period is over and the second one's is not.
    period = timedelta(hours=1)
    now = old.finished_at + period + (kept.finished_at - old.finished_at) / 2
    expired = retention.sweep(store=store, period=period, now=now)
    assert old.id in expired and kept.id not in expired

    assert not any(store.exists(k) for k in _keys(old))  # input and both outputs
    assert all(store.exists(k) for k in _keys(kept))
    assert _row(old_id).expired_at == now and _row(kept_id).expired_at is None
    assert httpx.get(old_urls[0]).status_code == 404  # a link handed out before: dead

    with live_stack.client(key) as client:
        gone = client.get(f"/v2/requests/{old_id}")
        status = client.get(f"/v2/requests/{old_id}/status")
        download = client.get(f"/v2/requests/{old_id}/outputs/0")
        listing = client.get("/v2/requests", params={"limit": 10}).json()["requests"]
        kept_result = client.get(f"/v2/requests/{kept_id}")
        kept_status = client.get(f"/v2/requests/{kept_id}/status").json()
        kept_jpeg = client.get(f"/v2/requests/{kept_id}/outputs/0")
    message = retention.expired_message(old.id, now, _period(settings))
    assert gone.status_code == 410
    assert gone.json() == {
        "error": message,
        "status": "COMPLETED",
        "request_id": old_id,
        "expired_at": now.isoformat(),
    }
    assert "results are kept 24 hours" in message
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED" and status.json()["expired"] is True
    assert download.status_code == 410 and download.json()["error"] == message
    flags = {r["request_id"]: r["expired"] for r in listing}
    assert flags == {old_id: True, kept_id: False}

    assert kept_result.status_code == 200 and kept_result.json()["expired"] is False
    assert kept_status["expired"] is False and kept_status["expired_at"] is None
    assert kept_jpeg.status_code == 200
    assert kept_jpeg.headers["content-type"] == "image/jpeg"
    assert kept_jpeg.content == store.get(kept.output_keys[0])

    # Another tenant sees nothing of either job, expired or not.
    with live_stack.client(other) as client:
        for job_id in (old_id, kept_id):
            for path in ("", "/status", "/outputs/0"):
                assert client.get(f"/v2/requests/{job_id}{path}").status_code == 404
        assert client.get("/v2/requests").json()["requests"] == []


def test_sweep_deletes_failed_and_cancelled_inputs_and_leaves_unfinished_jobs(
    live_stack: Stack, settings: Settings, store: Storage
) -> None:
    account, key = live_stack.create_account(credits=1000)
    # Terminal jobs 10 minutes old; a CANCELLED one whose worker uploaded outputs it
    # could no longer record. A PROCESSING job 10 minutes old: never touched.
    age = timedelta(minutes=10)
    failed = _insert_job(store, account, JobStatus.FAILED, age=age, samples=2)
    cancelled = _insert_job(
        store, account, JobStatus.CANCELLED, age=age, samples=2, outputs_recorded=False
    )
    running = _insert_job(store, account, JobStatus.PROCESSING, age=age)
    try:
        expired = retention.sweep(store=store, period=timedelta(minutes=5))
        assert failed.id in expired and cancelled.id in expired
        assert running.id not in expired
        for job in (failed, cancelled):
            assert _row(job.id).expired_at is not None
            outputs = [storage.output_key(job.account_id, job.id, i) for i in (0, 1)]
            assert not any(store.exists(k) for k in [job.input_key, *outputs])
        assert _row(running.id).expired_at is None
        assert all(store.exists(k) for k in _keys(running))
        # Even a sweep that counts every job as finished long ago.
        retention.sweep(store=store, period=timedelta(seconds=1), now=_db_now() + age * 100)
        assert _row(running.id).expired_at is None
        assert all(store.exists(k) for k in _keys(running))

        # FAILED keeps its 422 (the Segmind SDK reads it) and says it expired; no 410:
        # it never had outputs to hand out.
        with live_stack.client(key) as client:
            result = client.get(f"/v2/requests/{failed.id}")
            status = client.get(f"/v2/requests/{failed.id}/status")
            running_status = client.get(f"/v2/requests/{running.id}/status").json()
        assert result.status_code == 422 and result.json()["expired"] is True
        assert result.json()["status"] == "FAILED"
        assert status.status_code == 422 and status.json()["expired"] is True
        assert running_status["status"] == "PROCESSING" and running_status["expired"] is False
    finally:
        _delete_rows([running])  # no other test should meet a job that never ends


def test_concurrent_sweeps_expire_each_job_once(live_stack: Stack, store: Storage) -> None:
    account, _ = live_stack.create_account(credits=1000)
    inserted = [
        _insert_job(store, account, JobStatus.COMPLETED, age=timedelta(minutes=10), samples=2)
        for _ in range(24)
    ]
    mine = {job.id for job in inserted}
    sweeps = 4
    barrier = threading.Barrier(sweeps)
    results: list[list[uuid.UUID]] = [[] for _ in range(sweeps)]
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            barrier.wait()
            # Small batches, so that the sweeps take turns on the same rows.
            results[slot] = retention.sweep(
                store=store, period=timedelta(minutes=5), batch_size=3, max_batches=100
            )
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(sweeps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    claimed = [job_id for result in results for job_id in result if job_id in mine]
    assert sorted(claimed) == sorted(mine)  # every job expired, and by one sweep only
    assert all(_row(job.id).expired_at is not None for job in inserted)
    assert not any(store.exists(k) for job in inserted for k in _keys(job))
    # Nothing left: another sweep finds none of them.
    assert mine.isdisjoint(retention.sweep(store=store, period=timedelta(minutes=5)))


def test_orphaned_inputs_are_swept(live_stack: Stack, store: Storage) -> None:
    account, key = live_stack.create_account(credits=1000)
    job_id = _completed_job(live_stack, key)
    job = _row(job_id)
    # An input whose job insert never committed, and a key that is not an input's.
    orphan = storage.input_key(uuid.UUID(account), uuid.uuid4())
    store.put(orphan, b"orphan", "image/png")
    foreign = f"inputs/{account}/notes.txt"
    store.put(foreign, b"not ours", "text/plain")
    try:
        # Young objects stay, whoever owns them.
        assert orphan not in retention.sweep_orphaned_inputs(store=store, period=timedelta(hours=1))
        assert store.exists(orphan)

        later = _db_now() + timedelta(days=2)
        deleted = retention.sweep_orphaned_inputs(store=store, period=timedelta(days=1), now=later)
        assert orphan in deleted and not store.exists(orphan)
        assert store.exists(job.input_key)  # its job row exists
        assert store.exists(foreign)
    finally:
        store.delete_many([foreign])


@contextmanager
def _retention_worker(live_stack: Stack, **settings: str) -> Iterator[None]:
    """An extra CPU worker with `settings`, on a queue of its own: its beat's ticks go
    to it alone, never to the stack's CPU worker (which has the default period)."""
    name = "background-retention"
    env = {**live_stack.env, "CPU_QUEUE": f"retention-{uuid.uuid4().hex[:8]}", **settings}
    ready = stack.start_background(live_stack.state_dir, env, name=name)
    pidfile = pidfile_path(live_stack.state_dir, name)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            alive = pidfile_process_alive(pidfile)
            assert alive, log_tail(log_path(live_stack.state_dir, name))
            assert time.monotonic() < deadline, f"{name} never became ready"
            time.sleep(0.1)
        yield
    finally:
        stop_pidfile(pidfile, timeout=30)


def test_scheduled_sweep_expires_results(live_stack: Stack, settings: Settings) -> None:
    _, key = live_stack.create_account(credits=1000)
    job_id = _completed_job(live_stack, key)
    job = _row(job_id)
    store = Storage(settings)
    assert all(store.exists(k) for k in _keys(job))

    with (
        _retention_worker(
            live_stack,
            RESULT_RETENTION_SECONDS="2",
            RETENTION_SWEEP_SECONDS="1",
            ORPHAN_SWEEP_SECONDS="3600",
        ),
        live_stack.client(key) as client,
    ):
        deadline = time.monotonic() + 120
        while (result := client.get(f"/v2/requests/{job_id}")).status_code == 200:
            assert time.monotonic() < deadline, "the scheduled sweep never expired the job"
            time.sleep(0.2)
    assert result.status_code == 410, result.text
    assert result.json()["status"] == "COMPLETED" and result.json()["request_id"] == job_id
    assert f"the outputs of request {job_id} expired at " in result.json()["error"]
    assert _row(job_id).expired_at is not None
    assert not any(store.exists(k) for k in _keys(job))


def test_output_url_mode_api_links_to_the_authenticated_download(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=1000)
    _, other = live_stack.create_account(credits=1000)
    job_id = _completed_job(live_stack, key, samples=2)
    with held_api(live_stack, "outputs", OUTPUT_URL_MODE="api") as api:
        with httpx.Client(base_url=api.url, headers={"x-api-key": key}, timeout=60) as client:
            urls = client.get(f"/v2/requests/{job_id}").json()["output"]
            assert urls == [f"{api.url}/v2/requests/{job_id}/outputs/{i}" for i in (0, 1)]
            jpegs = [client.get(url) for url in urls]
            out_of_range = client.get(f"/v2/requests/{job_id}/outputs/2")
            negative = client.get(f"/v2/requests/{job_id}/outputs/-1")
        anonymous = httpx.get(urls[0])
        foreign = httpx.get(urls[0], headers={"x-api-key": other})
    for response in jpegs:
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert response.content[:3] == b"\xff\xd8\xff"
    assert jpegs[0].content != jpegs[1].content  # seed and seed + 1
    assert out_of_range.status_code == 404 and "2 outputs" in out_of_range.json()["error"]
    assert negative.status_code == 400 and "index" in negative.json()["error"]
    assert anonymous.status_code == 401
    assert foreign.status_code == 404


def test_download_of_an_unfinished_request_is_refused(live_stack: Stack, store: Storage) -> None:
    account, key = live_stack.create_account(credits=1000)
    running = _insert_job(store, account, JobStatus.PROCESSING, age=timedelta(seconds=0))
    try:
        with live_stack.client(key) as client:
            response = client.get(f"/v2/requests/{running.id}/outputs/0")
        assert response.status_code == 409
        assert "PROCESSING" in response.json()["error"]
    finally:
        _delete_rows([running])


def test_presigned_urls_refused_when_tampered_or_expired(store: Storage) -> None:
    key = f"outputs/{uuid.uuid4()}/{uuid.uuid4()}/0.jpg"
    store.put(key, b"\xff\xd8\xffjpeg", "image/jpeg")
    try:
        url = store.presigned_get_url(key)
        assert httpx.get(url).status_code == 200

        signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
        forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
        tampered = httpx.get(url.replace(signature, forged))
        assert tampered.status_code == 403 and b"SignatureDoesNotMatch" in tampered.content
        other_key = httpx.get(url.replace(key, key.replace("0.jpg", "1.jpg")))
        assert other_key.status_code == 403  # a signature opens its own object only

        short = store.presigned_get_url(key, ttl=1)
        time.sleep(2)
        expired = httpx.get(short)
        assert expired.status_code == 403 and b"expired" in expired.content
    finally:
        store.delete_many([key])


def test_presigned_urls_never_outlive_the_retention(store: Storage, settings: Settings) -> None:
    """A result read shortly before its objects expire gets URLs that end with them."""
    now = _db_now()
    period = _period(settings)
    job = Job(
        id=uuid.uuid4(),
        account_id=uuid.uuid4(),
        status=JobStatus.COMPLETED,
        output_keys=["outputs/a/b/0.jpg"],
        finished_at=now - period + timedelta(seconds=90),
    )
    (near_expiry,) = output_urls(job, store, settings, "http://api", now)
    assert parse_qs(urlsplit(near_expiry).query)["X-Amz-Expires"] == ["90"]
    job.finished_at = now
    (fresh,) = output_urls(job, store, settings, "http://api", now)
    ttl = str(settings.output_url_ttl_seconds)
    assert parse_qs(urlsplit(fresh).query)["X-Amz-Expires"] == [ttl]


def test_describe_period() -> None:
    describe = retention.describe_period
    assert describe(timedelta(hours=24)) == "24 hours"
    assert describe(timedelta(hours=48)) == "2 days"
    assert describe(timedelta(hours=1)) == "1 hour"
    assert describe(timedelta(minutes=90)) == "90 minutes"
    assert describe(timedelta(seconds=2)) == "2 seconds"
    assert describe(timedelta(days=7)) == "7 days"
