"""Many synchronous (v1) requests waiting at once on ONE API process.

Starts its own embedded stack (PostgreSQL, Redis, SeaweedFS, one API, one worker on the
tiny model) in a temporary folder. The API sends its jobs to a queue no worker reads,
so the bench decides when jobs may finish. Then, with N requests in flight:

1. hold: all N wait; count PostgreSQL transactions over a window (all clients) and
   read the API process's RSS and thread count;
2. burst: end all N jobs at once (FAILED in PostgreSQL, then the notification, as a
   reconciler would): time until all N are answered;
3. worker: N more requests, released to the real worker; for each answer, the delay
   from the job's `finished_at` (PostgreSQL) to the client receiving it.

Usage: .venv/bin/python -m bench.sync_waiters [--waiters 200] [--worker-jobs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from PIL import Image
from sqlalchemy import select, text

from cli import stack
from devstack.ports import free_port
from devstack.process import pidfile_path, read_pidfile
from devstack.stack import purge_state, start_services

ROOT = Path(__file__).resolve().parent.parent
HELD_QUEUE = "held-bench"
RECHECK_SECONDS = 5.0
API_APPLICATION_NAME = "bench-api"


def _body() -> dict[str, Any]:
    img = Image.new("RGB", (64, 64), (200, 40, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {
        "image": base64.b64encode(buf.getvalue()).decode(),
        "prompt": "a red square",
        "samples": 1,
        "num_inference_steps": 20,
        "strength": 0.05,  # one denoising step
        "scheduler": "Euler",
        "seed": 7,
        "base64": False,
    }


def _transactions() -> int:
    from common.db import session_scope

    with session_scope() as session:
        return int(
            session.execute(
                text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).scalar_one()
        )


def _flush_api_statistics() -> None:
    """PostgreSQL publishes a backend's counters up to ~10 s late, except when it exits:
    end the API's idle connections (its pool reconnects, pre-ping) so counts are current."""
    from common.db import session_scope

    with session_scope() as session:
        session.execute(
            text(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = :name AND state = 'idle'"
            ),
            {"name": API_APPLICATION_NAME},
        )


def _queued(account_id: uuid.UUID) -> list[uuid.UUID]:
    from common.db import session_scope
    from common.models import Job, JobStatus

    with session_scope() as session:
        query = select(Job.id).where(Job.account_id == account_id, Job.status == JobStatus.QUEUED)
        return list(session.execute(query).scalars())


def _finished_at(job_ids: list[str]) -> dict[str, datetime]:
    from common.db import session_scope
    from common.models import Job

    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.finished_at).where(Job.id.in_([uuid.UUID(j) for j in job_ids]))
        )
        return {str(job_id): finished for job_id, finished in rows if finished is not None}


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _start_waiters(
    client: httpx.AsyncClient, n: int, held: redis.Redis
) -> tuple[list[asyncio.Task[httpx.Response]], float]:
    body = _body()
    before = held.llen(HELD_QUEUE)
    started = time.monotonic()
    tasks = [asyncio.create_task(client.post("/v1/ssd-img2img", json=body)) for _ in range(n)]
    while held.llen(HELD_QUEUE) - before < n:
        done = [t for t in tasks if t.done()]
        if done:
            raise SystemExit(f"a request was answered early: {done[0].result().text}")
        await asyncio.sleep(0.05)
    return tasks, time.monotonic() - started


async def run(waiters: int, worker_jobs: int, window: float, env: dict[str, str]) -> dict:
    from common import accounts, credits, jobs, notify
    from common.db import session_scope
    from common.models import JobStatus
    from common.tasks import wake_gpu_workers

    with session_scope() as session:
        account = accounts.create_account(session, "bench", 0)
        credits.grant(session, account.id, (waiters + worker_jobs) * 20)
        key = accounts.create_api_key(session, account.id).raw
        account_id = account.id
    api_pid = read_pidfile(pidfile_path(Path(env["STATE_DIR"]), "api"))
    assert api_pid is not None
    held = redis.Redis.from_url(env["REDIS_URL"])
    limits = httpx.Limits(max_connections=waiters + 10, max_keepalive_connections=waiters + 10)
    result: dict[str, Any] = {"waiters": waiters, "recheck_seconds": RECHECK_SECONDS}
    async with httpx.AsyncClient(
        base_url=env["API_URL"], headers={"x-api-key": key}, timeout=900, limits=limits
    ) as client:
        idle = _proc_status(api_pid)
        _flush_api_statistics()
        before = _transactions()
        await asyncio.sleep(window)
        _flush_api_statistics()
        result["db_transactions_per_s_idle"] = round((_transactions() - before) / window, 2)
        tasks, accepted = await _start_waiters(client, waiters, held)
        result["accept_all_s"] = round(accepted, 2)
        _flush_api_statistics()
        before = _transactions()
        await asyncio.sleep(window)
        _flush_api_statistics()
        during = _transactions() - before
        waiting = _proc_status(api_pid)
        result["hold_window_s"] = window
        result["db_transactions_per_s_while_waiting"] = round(during / window, 2)
        result["api_rss_mib_idle"] = int(idle["VmRSS"].split()[0]) // 1024
        result["api_rss_mib_waiting"] = int(waiting["VmRSS"].split()[0]) // 1024
        result["api_threads_waiting"] = int(waiting["Threads"])

        ids = _queued(account_id)
        ended = time.monotonic()
        with session_scope() as session:
            for job_id in ids:
                jobs.fail(session, job_id, "ended by the bench")
        for job_id in ids:
            notify.publish_job_finished(job_id, JobStatus.FAILED)
        responses = await asyncio.gather(*tasks)
        result["burst_all_answered_s"] = round(time.monotonic() - ended, 2)
        assert all(r.status_code == 422 for r in responses)
        result["api_rss_mib_after"] = int(_proc_status(api_pid)["VmRSS"].split()[0]) // 1024

        if worker_jobs:
            tasks, _ = await _start_waiters(client, worker_jobs, held)
            received: dict[str, datetime] = {}

            async def stamp(task: asyncio.Task[httpx.Response]) -> None:
                response = await task
                assert response.status_code == 200, response.text
                received[response.headers["x-request-id"]] = datetime.now(UTC)

            released = time.monotonic()
            # Into the worker's pool (the scheduler's trigger moves them in line), then
            # a wake-up: the worker claims them from PostgreSQL.
            with session_scope() as session:
                session.execute(
                    text("UPDATE jobs SET queue = :pool WHERE id = ANY(:ids)"),
                    {"pool": env["GPU_QUEUE"], "ids": _queued(account_id)},
                )
            wake_gpu_workers(env["GPU_QUEUE"], worker_jobs)
            await asyncio.gather(*(stamp(t) for t in tasks))
            result["worker_jobs"] = worker_jobs
            result["worker_all_done_s"] = round(time.monotonic() - released, 2)
            finished = _finished_at(list(received))
            delays = [(received[j] - finished[j]).total_seconds() * 1000 for j in received]
            result["finished_to_answer_ms"] = {
                "p50": round(statistics.median(delays), 1),
                "p95": round(_pct(delays, 0.95), 1),
                "max": round(max(delays), 1),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--worker-jobs", type=int, default=50)
    parser.add_argument("--window", type=float, default=10.0, help="hold window, seconds")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="sync-waiters-"))
    try:
        services = start_services(state, fast=True)
        port = free_port()
        model = state / "models" / "tiny"
        env = stack.service_env(services, f"http://127.0.0.1:{port}", model)
        env.update(
            SYNC_WAIT_TIMEOUT_SECONDS="900",
            SYNC_WAIT_RECHECK_SECONDS=str(RECHECK_SECONDS),
            DEFAULT_MAX_JOBS_IN_FLIGHT=str(10 * args.waiters),
            DEFAULT_RATE_LIMIT_PER_MINUTE=str(100 * args.waiters),
        )
        os.environ.update(env)  # this process reads the same settings
        stack.migrate(env)
        stack.ensure_tiny_model(model)
        api_db = f"{env['DATABASE_URL']}?application_name={API_APPLICATION_NAME}"
        stack.start_api(state, {**env, "GPU_QUEUE": HELD_QUEUE, "DATABASE_URL": api_db}, port)
        ready = stack.start_worker(state, env)
        stack.wait_healthy(state, env["API_URL"], [ready], timeout=300)
        cores = os.cpu_count()
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        result = asyncio.run(
            run(
                args.waiters,
                args.worker_jobs,
                args.window,
                {**env, "STATE_DIR": str(state), "GPU_QUEUE": "gpu"},
            )
        )
        result.update(cores=cores, commit=commit, python=sys.version.split()[0])
        print(json.dumps(result, indent=2))
    finally:
        stack.down(state)
        purge_state(state)


if __name__ == "__main__":
    main()
