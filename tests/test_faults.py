"""Fault injection with real processes (issue 5): workers SIGKILLed mid-job, a job that
kills every worker that runs it, Redis losing every message, SIGTERM to a busy worker
and to an API holding a synchronous request, worker recycling.

Everything runs on a stack of its own (tests/support/fault_stack.py), with short leases and a
reconciler every second, so the shared `live_stack` never sees a fault. Nothing here
asserts a duration: recovery times are measured and printed (`pytest -s`), and the
figures in docs/reliability.md come from these runs. Racing submits for the last
credits are covered by tests/test_credits.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli import stack
from common.models import Job, JobStatus, LedgerReason
from devstack import postgres
from devstack import redis as redis_service
from devstack.ports import free_port
from devstack.process import is_running, pidfile_path, stop_pidfile
from tests.support.fault_stack import STEADY, FaultStack, Worker, fault_stack
from tests.support.helpers import image_b64, job_body
from tests.support.outages import s3_down
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import Receiver, webhook_receiver

CREDITS = 100_000
# About 3-10 s on the tiny model with one torch thread: longer than a lease (3 s), so
# the heartbeat must keep it, and long enough to be killed half-way.
SLOW_STEPS = 100


def slow_body(**overrides: Any) -> dict[str, Any]:
    return job_body(
        image=image_b64(128, 128),
        samples=1,
        num_inference_steps=SLOW_STEPS,
        strength=0.99,
        scheduler="DPM2 Karras",
        **overrides,
    )


def quick_body(**overrides: Any) -> dict[str, Any]:
    return job_body(num_inference_steps=20, strength=0.3, **overrides)  # 20 credits


TIMINGS: dict[str, float] = {}


def measured(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 2)
    print(f"\n[faults] {name}: {seconds:.1f}s")


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FaultStack]:
    with fault_stack(tmp_path_factory.mktemp("faults"), tiny_model_dir) as stack_:
        yield stack_
    if TIMINGS:
        print("\n[faults] timings: " + json.dumps(TIMINGS))


@pytest.fixture
def account(faults: FaultStack) -> Iterator[tuple[str, str]]:
    account_id, key = faults.create_account(CREDITS, name="faults")
    yield account_id, key
    faults.cancel_unfinished(account_id)
    faults.stop_workers(keep=STEADY)  # each test starts the workers it needs


@pytest.fixture
def steady(faults: FaultStack) -> Worker:
    """A plain worker, kept up from one test that asks for it to the next."""
    return faults.steady_worker()


@pytest.fixture(autouse=True)
def _no_worker_but_the_tests_own(request: pytest.FixtureRequest, faults: FaultStack) -> None:
    if "steady" not in request.fixturenames:
        faults.stop_workers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as server:
        yield server


def status_of(faults: FaultStack, job_id: uuid.UUID) -> JobStatus:
    return faults.job(job_id).status


def wait_status(
    faults: FaultStack, job_id: uuid.UUID, *statuses: JobStatus, timeout: float = 600
) -> float:
    """Until the job is in one of `statuses`; returns the seconds that took (for docs)."""
    started = time.monotonic()
    wait_until(lambda: status_of(faults, job_id) in statuses, f"{job_id} {statuses}", timeout)
    return time.monotonic() - started


def charged_once(faults: FaultStack, account_id: str, costs: list[int]) -> None:
    assert faults.ledger(account_id) == [(LedgerReason.GRANT, CREDITS)] + [
        (LedgerReason.JOB_DEBIT, -cost) for cost in costs
    ]


def failed_and_refunded_once(
    faults: FaultStack, account: tuple[str, str], job_id: uuid.UUID, cost: int = 20
) -> None:
    """The account's only job ended FAILED, as its owner sees it, refunded exactly once."""
    account_id, key = account
    assert faults.ledger(account_id) == [
        (LedgerReason.GRANT, CREDITS),
        (LedgerReason.JOB_DEBIT, -cost),
        (LedgerReason.JOB_REFUND, cost),
    ]
    with faults.client(key) as client:
        status = client.get(f"/v2/requests/{job_id}/status")
    assert status.status_code == 422
    assert status.json()["status"] == "FAILED"


# --- a worker dies mid-job -------------------------------------------------------------


def test_sigkill_mid_job_completes_on_another_worker_charged_once(
    faults: FaultStack, account: tuple[str, str], receiver: Receiver
) -> None:
    account_id, key = account
    workers = [faults.start_worker(f"gpu-kill-{i}", wait=False) for i in (1, 2)]
    for worker in workers:  # loaded side by side
        worker.wait_ready()
    job_id = faults.submit(
        key, slow_body(webhook_url=receiver.url("/kill"), webhook_events_filter=["completed"])
    )
    wait_status(faults, job_id, JobStatus.PROCESSING)
    # The lease names the claiming worker's pid (common.leases.new_owner).
    owner = faults.job(job_id).lease_owner or ""
    busy = next(w for w in workers if f":{w.pid}/" in owner)
    busy.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert busy.wait_exit() == -signal.SIGKILL

    # The other worker takes the job once the dead worker's lease expired.
    wait_until(lambda: faults.job(job_id).attempts == 2, "claimed again", timeout=600)
    reclaimed = time.monotonic()
    wait_status(faults, job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    done = time.monotonic()

    job = faults.job(job_id)
    assert job.status == JobStatus.COMPLETED, job.error
    # Claimed twice: by the killed worker, then by the other one, whose heartbeat kept
    # the lease through a job longer than a lease (a lost lease means a third claim).
    assert job.attempts == 2
    assert f":{busy.pid}/" not in (job.lease_owner or "")
    charged_once(faults, account_id, [SLOW_STEPS])
    with faults.client(key) as client:
        result = client.get(f"/v2/requests/{job_id}")
        assert result.status_code == 200
        assert len(result.json()["output"]) == 1
    # One terminal webhook, signed, under one webhook-id, though two workers ran it.
    with faults.client(key) as client:
        secret = client.get("/v2/webhooks/secret").json()["secret"]
        (delivered,) = receiver.wait_for("/kill", 1)
        payload = delivered.verify(secret)
        assert payload["type"] == "job.completed"
        assert payload["data"]["request_id"] == str(job_id)
        assert payload["data"]["status"] == "COMPLETED"
        listed = client.get("/v2/webhooks/deliveries", params={"request_id": str(job_id)})
        (delivery,) = listed.json()["deliveries"]
    assert delivery["webhook_id"] == delivered.headers["webhook-id"]
    assert len(receiver.at("/kill")) == 1
    measured("sigkill: kill -> claimed by the other worker", reclaimed - killed)
    measured("sigkill: kill -> completed", done - killed)
    measured("sigkill: job run time", float(job.metrics["inference_time"]))


def test_job_that_kills_every_worker_fails_after_max_attempts_refunded_once(
    faults: FaultStack, account: tuple[str, str]
) -> None:
    """WORKER_TEST_CRASH_PROMPT (worker/fault_hooks.py, test-only): the worker SIGKILLs
    itself on claiming a job with this prompt, as on a job that crashes the GPU driver.
    The test plays the supervisor of two workers: it restarts every worker that dies,
    while the other one, already up, takes the job back once the lease expires."""
    _, key = account
    sentinel = f"crash-{uuid.uuid4().hex[:8]}"
    crash_env = {"WORKER_TEST_CRASH_PROMPT": sentinel}
    workers = [faults.start_worker(f"gpu-crash-{i}", False, crash_env) for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    job_id = faults.submit(key, quick_body(prompt=sentinel))
    started = time.monotonic()
    deaths = 0
    while not status_of(faults, job_id).is_terminal:
        for i, worker in enumerate(workers):
            if not worker.alive:
                assert worker.wait_exit() == -signal.SIGKILL
                deaths += 1
                assert deaths <= 3, "the job was run again after MAX_ATTEMPTS"
                workers[i] = faults.start_worker(
                    f"gpu-crash-{deaths + 1}", wait=False, extra_env=crash_env
                )
        time.sleep(0.1)
    failed = time.monotonic()

    job = faults.job(job_id)
    assert job.status == JobStatus.FAILED
    assert job.attempts == 3 == deaths
    assert "3 attempts" in (job.error or "")
    failed_and_refunded_once(faults, account, job_id)

    # The worker that is up now is healthy: other jobs still run.
    other = faults.submit(key, quick_body())
    wait_status(faults, other, JobStatus.COMPLETED)
    measured("crash loop: submit -> FAILED after 3 deaths", failed - started)


# --- PostgreSQL restarts, object storage goes away -----------------------------------


def test_postgres_restart_during_a_burst_of_submits_no_500_every_accepted_job_completes(
    faults: FaultStack, account: tuple[str, str], steady: Worker
) -> None:
    account_id, key = account
    port = int(faults.env["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
    answers: list[httpx.Response] = []
    broken: list[Exception] = []  # a connection error or timeout fails the test too
    stop = threading.Event()

    def submit_until_stopped(first_seed: int) -> None:
        with faults.client(key) as client:
            for seed in range(first_seed, first_seed + 1000):
                if stop.is_set():
                    return
                try:
                    answers.append(client.post("/v2/ssd-img2img", json=quick_body(seed=seed)))
                except httpx.HTTPError as exc:
                    broken.append(exc)
                    return
                time.sleep(0.2)

    def accepted() -> list[uuid.UUID]:
        return [uuid.UUID(a.json()["request_id"]) for a in answers if a.status_code == 200]

    submitters = [threading.Thread(target=submit_until_stopped, args=(n * 1000,)) for n in range(3)]
    for submitter in submitters:
        submitter.start()
    try:
        wait_until(lambda: len(accepted()) >= 3, "accepting before the restart")
        postgres.stop_postgres(faults.state_dir)
        stopped = time.monotonic()
        wait_until(lambda: any(a.status_code == 503 for a in answers), "a 503", timeout=60)
        time.sleep(2)
        postgres.start_postgres(faults.state_dir, port=port, fast=True)
        restarted = time.monotonic()
        before = len(accepted())
        wait_until(lambda: len(accepted()) >= before + 3, "accepting after the restart")
        recovered = time.monotonic()
    finally:
        stop.set()
        for submitter in submitters:
            submitter.join(120)

    # Every answer was a success or a 503 with a JSON error: never a 500.
    assert not broken, broken
    assert {a.status_code for a in answers} == {200, 503}
    refused = [a for a in answers if a.status_code == 503]
    assert all(a.json()["error"] and int(a.headers["retry-after"]) > 0 for a in refused)
    for job_id in accepted():
        wait_status(faults, job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    done = time.monotonic()
    # Every job of the account (a submit cut off by the restart may have committed and
    # answered 503: it must run too) completed, each charged once.
    jobs_of_account = Job.account_id == uuid.UUID(account_id)
    total = faults.count_jobs(jobs_of_account)
    assert total >= len(accepted())
    assert faults.count_jobs(jobs_of_account, Job.status == JobStatus.COMPLETED) == total
    assert (
        faults.ledger(account_id)
        == [(LedgerReason.GRANT, CREDITS)] + [(LedgerReason.JOB_DEBIT, -20)] * total
    )
    measured("postgres restart: stop -> start (outage)", restarted - stopped)
    measured("postgres restart: start -> submits accepted again", recovered - restarted)
    measured(f"postgres restart: start -> all {total} jobs completed", done - restarted)


def test_redis_down_at_submit_the_job_is_accepted_and_run(
    faults: FaultStack, account: tuple[str, str], steady: Worker
) -> None:
    account_id, key = account
    port = int(faults.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    redis_service.stop_redis(faults.state_dir)
    try:
        asked = time.monotonic()
        job_id = faults.submit(key, quick_body())  # accepted: committed, then not sent
        answered = time.monotonic()
        # Accepted and kept. The worker may already have claimed it without any message:
        # it also looks in PostgreSQL every WORKER_POLL_SECONDS.
        assert faults.job(job_id).status in (
            JobStatus.QUEUED,
            JobStatus.PROCESSING,
            JobStatus.COMPLETED,
        )
    finally:
        redis_service.start_redis(faults.state_dir, port=port)
    back = time.monotonic()
    wait_status(faults, job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    done = time.monotonic()
    job = faults.job(job_id)
    assert job.status == JobStatus.COMPLETED, job.error
    assert job.attempts == 1
    charged_once(faults, account_id, [20])
    measured("redis down: submit answered in", answered - asked)
    measured("redis down: redis back -> job completed", done - back)


def test_redis_lost_mid_job_the_job_finishes_and_the_rate_limit_comes_back(
    faults: FaultStack, account: tuple[str, str], steady: Worker
) -> None:
    """Redis holds the live progress and the rate-limit counters, PostgreSQL the job: a
    job running when Redis goes away finishes; its status answers without `step`; the
    limit fails open meanwhile and counts again once Redis is back."""
    account_id, key = account
    limit = 20
    with faults.admin() as admin:
        response = admin.patch(
            f"/accounts/{account_id}/limits", json={"rate_limit_per_minute": limit}
        )
        assert response.status_code == 200, response.text
    port = int(faults.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    worker = steady
    job_id = faults.submit(key, slow_body())
    wait_status(faults, job_id, JobStatus.PROCESSING, JobStatus.COMPLETED)
    with faults.client(key) as client:
        url = f"/v2/requests/{job_id}/status"
        redis_service.stop_redis(faults.state_dir)
        try:
            assert faults.job(job_id).status == JobStatus.PROCESSING  # lost mid-job
            for _ in range(limit + 5):  # past the limit: it fails open
                during = client.get(url)
                assert during.status_code == 200, during.text
                assert during.json()["status"] in ("PROCESSING", "COMPLETED")
                assert during.json().get("step") is None  # the progress lives in Redis
            wait_status(faults, job_id, JobStatus.COMPLETED, JobStatus.FAILED, timeout=120)
        finally:
            redis_service.start_redis(faults.state_dir, port=port)
        job = faults.job(job_id)
        assert job.status == JobStatus.COMPLETED, job.error
        assert job.attempts == 1
        assert worker.alive
        charged_once(faults, account_id, [SLOW_STEPS])

        def refused() -> bool:
            return client.get(url).status_code == 429

        # Counted again (after the limiter's back-off): within the limit, then 429.
        wait_until(refused, "a 429 once Redis is back", timeout=60)
        assert client.get(url).headers.get("retry-after") is not None


def test_storage_down_when_a_worker_runs_the_job_fails_it_cleanly_refunded(
    faults: FaultStack, account: tuple[str, str]
) -> None:
    _, key = account
    job_id = faults.submit(key, quick_body())  # its input is stored; no worker runs yet
    with s3_down(faults.state_dir, faults.env):
        worker = faults.start_worker("gpu-s3")
        took = wait_status(faults, job_id, JobStatus.FAILED, JobStatus.COMPLETED)
    job = faults.job(job_id)
    assert job.status == JobStatus.FAILED
    assert (job.error or "").startswith("object storage failed")
    failed_and_refunded_once(faults, account, job_id)
    # Storage is back: the same worker runs the next job.
    assert worker.alive
    other = faults.submit(key, quick_body())
    wait_status(faults, other, JobStatus.COMPLETED)
    measured("storage down: worker ready -> job FAILED and refunded", took)


# --- Redis loses every message --------------------------------------------------------


def test_redis_flushall_with_jobs_queued_all_complete(
    faults: FaultStack, account: tuple[str, str]
) -> None:
    account_id, key = account
    count = 5
    # No GPU worker yet: the wake-ups wait in Redis, and are lost there.
    job_ids = [faults.submit(key, quick_body(seed=i)) for i in range(count)]
    redis = faults.redis()
    assert redis.llen("gpu") >= 1
    redis.flushall()
    flushed = time.monotonic()
    faults.start_worker("gpu-flush")
    ready = time.monotonic()
    for job_id in job_ids:
        wait_status(faults, job_id, JobStatus.COMPLETED, JobStatus.FAILED)
    done = time.monotonic()

    jobs = [faults.job(job_id) for job_id in job_ids]
    assert [job.status for job in jobs] == [JobStatus.COMPLETED] * count
    assert all(job.attempts == 1 for job in jobs)  # each ran once
    # Nothing needed the reconciler: the worker claims from PostgreSQL, wake-up or not.
    assert all(job.dispatch_count == 0 for job in jobs)
    charged_once(faults, account_id, [20] * count)
    measured(f"flushall: {count} jobs, flush -> all completed", done - flushed)
    measured(f"flushall: {count} jobs, worker ready -> all completed", done - ready)


# --- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_busy_worker_finishes_its_job_and_takes_no_new_one(
    faults: FaultStack, account: tuple[str, str]
) -> None:
    account_id, key = account
    worker = faults.start_worker("gpu-term")
    running = faults.submit(key, slow_body())
    wait_status(faults, running, JobStatus.PROCESSING)
    waiting = faults.submit(key, quick_body())
    worker.signal(signal.SIGTERM)
    asked = time.monotonic()
    # The supervisor's replacement starts at once (it loads while the old one finishes).
    following = faults.start_worker("gpu-term-next", wait=False)
    assert worker.wait_exit() == 0  # a clean exit, after the job
    exited = time.monotonic()

    job = faults.job(running)
    assert job.status == JobStatus.COMPLETED, job.error
    assert job.attempts == 1
    assert "Warm shutdown" in worker.log() or "warm shutdown" in worker.log().lower()

    # Its message was kept: the next worker runs it, and it was claimed only by that one
    # (never by the stopping worker).
    wait_status(faults, waiting, JobStatus.COMPLETED)
    queued = faults.job(waiting)
    assert queued.attempts == 1
    assert f":{following.pid}/" in (queued.lease_owner or "")
    charged_once(faults, account_id, [SLOW_STEPS, 20])
    measured("sigterm worker: signal -> exit (job finished)", exited - asked)


def test_sigterm_api_refuses_new_connections_and_drains_a_waiting_v1_call(
    faults: FaultStack, account: tuple[str, str]
) -> None:
    """uvicorn's graceful shutdown: the listening socket closes at once, requests in
    flight (a v1 call waiting for its job) are answered, then the process exits."""
    _, key = account
    port = free_port()
    name = "api-drain"
    url = f"http://127.0.0.1:{port}"
    stack.start_api(faults.state_dir, {**faults.env, "API_URL": url}, port, name=name)
    pidfile = pidfile_path(faults.state_dir, name)
    try:
        wait_until(lambda: _healthy(url), "healthy")
        answers: list[httpx.Response] = []

        def call_v1() -> None:
            with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=600) as client:
                answers.append(client.post("/v1/ssd-img2img", json=quick_body(base64=False)))

        caller = threading.Thread(target=call_v1)
        before = faults.count_jobs(Job.status == JobStatus.QUEUED)
        caller.start()
        # Its job is committed (no worker runs, so it stays QUEUED): the call now waits.
        wait_until(lambda: faults.count_jobs(Job.status == JobStatus.QUEUED) > before, "queued")
        api_pid = int(pidfile.read_text())
        signal_at = time.monotonic()
        os.kill(api_pid, signal.SIGTERM)
        wait_until(lambda: not _accepts(url), "refusing connections", timeout=30)
        refusing = time.monotonic()
        assert caller.is_alive() and not answers  # still waiting, not cut off

        faults.start_worker("gpu-drain")
        caller.join(600)
        answered = time.monotonic()
        assert len(answers) == 1
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].headers["content-type"] == "image/jpeg"
        wait_until(lambda: not is_running(api_pid), "the API exited", timeout=60)
        measured("sigterm api: signal -> new connections refused", refusing - signal_at)
        measured("sigterm api: signal -> waiting v1 call answered", answered - signal_at)
    finally:
        stop_pidfile(pidfile, timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _accepts(url: str) -> bool:
    """False once a connection is refused. A connection reset while the socket closes
    (the kernel had queued it) is not a refusal yet: asked again."""
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return False
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return True


# --- recycling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "jobs"),
    [("WORKER_MAX_JOBS", "2", 2), ("WORKER_MAX_RSS_MB", "1", 1)],  # any worker has > 1 MiB
)
def test_worker_recycles_itself(
    faults: FaultStack, account: tuple[str, str], setting: str, value: str, jobs: int
) -> None:
    _, key = account
    worker = faults.start_worker("gpu-recycle", extra_env={setting: value})
    for _ in range(jobs):  # one at a time: no job waits long enough to be re-sent
        job_id = faults.submit(key, quick_body())
        wait_status(faults, job_id, JobStatus.COMPLETED)
    assert worker.wait_exit() == 0  # exits by itself, cleanly, for its supervisor
    assert "recycling this worker" in worker.log() and setting in worker.log()
    left = faults.submit(key, quick_body())
    faults.start_worker("gpu-recycle-next")  # what the supervisor does
    wait_status(faults, left, JobStatus.COMPLETED)
    assert faults.job(left).attempts == 1
